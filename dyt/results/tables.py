"""Paper-vs-ours tables: rows are models (experiments), columns are norms, ours beside the paper's.

Runs are grouped by experiment; seeds are aggregated as mean +- std. A run whose experiment names a
row of ``results/paper.yaml`` (``paper_ref``) lands in that paper table with the published numbers
beside ours; every other experiment lands in an ``experiments_<metric>`` table with our numbers only.

What "ours" is, since the paper does not say which model or epoch it reports: the raw model's metric at
the final evaluation (``results.json``). Where they differ, the cell adds the EMA model's final value
(``<metric>_ema``) and the best value over all evaluations (``metrics.jsonl``). A run the trainer
stopped on a non-finite loss (``diverged_at_step`` in ``results.json``) shows its best value before
divergence, "58.50 → failed (step N)", the way the paper shows such runs (Table 7).

Table options in ``paper.yaml`` beyond ``metric`` and ``rows``: ``digits`` (default 2), ``columns``
(``{column label: [norm tags]}`` when the paper's columns are not norm tags: Table 8's "tanh" column is
``dyt`` in its "with alpha" row and ``dyt_fixed_alpha`` in its "without alpha" row),
``second_metric`` (``{metric, values, higher_is_better, digits}``: a second table from the rows'
``values`` key, e.g. Table 4's final training loss); row options ``failed`` (norms the paper reports
as diverged) and ``baseline`` (the norm its differences are taken against, e.g. Caduceus's RMSNorm).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from dyt.results.runs import Run, mean_std

BASELINES = ("layernorm", "rmsnorm", "batchnorm")  # the column differences are taken against, first present wins


def load_paper(path: str | Path = "results/paper.yaml") -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


def _metric_of(runs: list[Run], paper_table: dict[str, Any] | None) -> str | None:
    """The paper table's metric, else the headline metric the runs' task declared (``results.json``)."""
    if paper_table and paper_table.get("metric"):
        return paper_table["metric"]
    return headline_metric(runs)


def headline_metric(runs: list[Run]) -> str | None:
    """The headline metric most of ``runs`` declared in ``results.json`` (None if none did)."""
    declared = [r.results["headline_metric"] for r in runs if r.results.get("headline_metric")]
    return max(set(declared), key=declared.count) if declared else None


def _label(label: str, group: list[Run]) -> str:
    """A row label with the training length and, for a variant recipe, what differs."""
    steps = sorted({int(r.results["steps"]) for r in group if "steps" in r.results})
    length = f"{steps[0]:,} steps" if len(steps) == 1 else "steps " + "/".join(f"{s:,}" for s in steps)
    variant = f"; {group[0].variant}" if group[0].variant else ""
    return f"{label} [{length}{variant}]" if steps or variant else label


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _fmt_diff(value: float | None, digits: int) -> str:
    """A difference; "n/a" when a side is missing and "–" when it is zero at this precision, as the
    paper writes an unchanged result (Tables 4 and 6)."""
    if value is None:
        return "n/a"
    return "–" if round(value, digits) == 0 else f"{value:+.{digits}f}"


def _fmt_mean(values: list[float], digits: int) -> str:
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" if len(values) == 1 else f"{mean:.{digits}f} ± {std:.{digits}f} (n={len(values)})"


class _Ours:
    """Our runs of one (row, norm) cell and what the table says about them."""

    def __init__(self, runs: list[Run], metric: str, higher: bool | None, digits: int) -> None:
        self.runs, self.metric, self.digits = runs, metric, digits
        if higher is None:  # no paper table: the direction the task declared for its headline metric
            modes = {r.results.get("headline_mode") for r in runs if r.results.get("headline_metric") == metric}
            higher = {"max": True, "min": False}.get(modes.pop()) if len(modes) == 1 else None
        self.higher = higher  # None: direction unknown, so no "best" is shown
        self.diverged = [r for r in runs if r.results.get("diverged_at_step") is not None]
        self.final = [self._final(r) for r in runs if r not in self.diverged]
        self.final = [v for v in self.final if v is not None]

    def _final(self, run: Run, key: str | None = None) -> float | None:
        key = key or self.metric
        if key in run.results:
            return float(run.results[key])
        steps, values = run.curve(key)  # logged but not in results.json, e.g. the final train/loss
        return float(values[-1]) if values else None

    def _best(self, run: Run) -> float | None:
        """The best value over the logged evaluations and the final one."""
        if self.higher is None:
            return None
        best = run.best(self.metric, self.higher)
        final = None if run in self.diverged else self._final(run)
        values = [v for v in (best[0] if best else None, final) if v is not None]
        return (max if self.higher else min)(values) if values else None

    @property
    def mean(self) -> float | None:
        return mean_std(self.final)[0] if self.final else None

    def cell(self) -> str:
        parts = []
        if self.final:
            parts.append(_fmt_mean(self.final, self.digits))
            extras = []
            for what, values in (
                ("EMA", [self._final(r, self.metric + "_ema") for r in self.runs if r not in self.diverged]),
                ("best", [self._best(r) for r in self.runs if r not in self.diverged]),
            ):
                values = [v for v in values if v is not None]
                if values and len(values) == len(self.final):
                    shown = _fmt_mean(values, self.digits)
                    if shown != parts[0]:
                        extras.append(f"{what} {shown}")
            if extras:
                parts[0] += f" ({'; '.join(extras)})"
        for run in self.diverged:
            best = self._best(run)
            parts.append(f"{_fmt(best, self.digits)} → failed (step {run.results['diverged_at_step']})")
        return "; ".join(parts) or "–"


def _tag_in_row(tags: list[str], present: set[str]) -> str:
    """The norm tag a column stands for in one row: the first of ``tags`` the row has."""
    return next((t for t in tags if t in present), tags[0])


def _norm_order(norms: set[str]) -> list[str]:
    base = [n for n in BASELINES if n in norms]
    return base + sorted(norms - set(base))


def _table(
    title: str,
    metric: str,
    rows: list[tuple[str, dict[str, list[Run]], dict[str, Any]]],
    spec: dict[str, Any] | None,
    values_key: str = "values",
) -> str:
    """Markdown for ``rows`` of (label, {norm: our runs}, paper row); ``spec`` (the paper table, or None
    for experiments the paper did not run) says the paper's values, precision and columns."""
    with_paper = spec is not None
    spec = spec or {}
    digits, higher = int(spec.get("digits", 2)), spec.get("higher_is_better")
    norms = _norm_order({n for _, ours, paper in rows for n in (*ours, *paper.get(values_key, {}))})
    columns = {label: list(tags) for label, tags in (spec.get("columns") or {}).items()}
    named = {t for tags in columns.values() for t in tags}
    columns.update({n: [n] for n in norms if n not in named})  # a norm of ours the paper's columns lack
    bases = {paper.get("baseline") or next((n for n in BASELINES if n in norms), None) for _, _, paper in rows}
    base_name = next(iter(bases)) if len(bases) == 1 else "baseline"
    header = ["model"]
    for name in columns:
        header += [f"{name} (ours)", f"{name} (paper)"] if with_paper else [name]
    others = [n for n in columns if n not in bases] if base_name else []  # a column per non-baseline norm
    header += [f"{n} − {base_name} (ours / paper)" if with_paper else f"{n} − {base_name}" for n in others]
    direction = "" if higher is None else (" (higher is better)" if higher else " (lower is better)")
    lines = [
        f"### {title}",
        "",
        f"Metric: `{metric}`{direction}. Ours: the raw model at the final evaluation, mean ± std over seeds; "
        "in brackets the EMA model's final value and the best value over all evaluations, where they differ. "
        "A diverged run shows its best value before divergence → failed, as the paper does.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for label, runs, paper in rows:
        ours = {n: _Ours(rs, metric, higher, digits) for n, rs in runs.items()}
        values, failed = paper.get(values_key, {}), set(paper.get("failed", []))
        base = paper.get("baseline") or next((n for n in BASELINES if n in norms), None)
        if base_name == "baseline" and base:
            label += f" (vs {base})"
        cells = [label]

        present = {*ours, *values}

        for column in columns:
            n = _tag_in_row(columns[column], present)
            paper_cell = _fmt(values.get(n), digits) + (" → failed" if n in failed else "")
            cells += [ours[n].cell() if n in ours else "–"] + ([paper_cell] if with_paper else [])
        for column in others:
            n = _tag_in_row(columns[column], present)
            a, b = ours.get(n), ours.get(base)
            d_ours = a.mean - b.mean if a and b and a.mean is not None and b.mean is not None else None
            has_paper = n in values and base in values and not failed & {n, base}
            d_paper = values[n] - values[base] if has_paper else None
            d = _fmt_diff(d_ours, digits)
            cells.append(f"{d} / {_fmt_diff(d_paper, digits)}" if with_paper else d)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _group(runs: list[Run], paper: dict[str, Any]) -> dict[str, dict[Any, list[Run]]]:
    """Finished runs by table, then by (row, variant); rows borrowed with ``same_runs_as`` included."""
    by_table: dict[str, dict[Any, list[Run]]] = defaultdict(lambda: defaultdict(list))
    others: dict[Any, list[Run]] = defaultdict(list)
    for run in runs:
        if not run.finished:
            continue
        ref = run.paper_ref or {}
        if ref.get("table") in paper:
            by_table[ref["table"]][(ref.get("row"), run.variant)].append(run)
        else:
            others[(run.experiment, run.variant)].append(run)
    for experiment, group in others.items():
        metric = _metric_of(group, None)
        if metric is not None:
            by_table["experiments_" + metric.replace("/", "_")][experiment] = group
    # A paper row made of another table's runs (Table 8's "with alpha" = Table 7's ViT-B runs).
    for table, spec in paper.items():
        for row, row_spec in (spec.get("rows") or {}).items() if isinstance(spec, dict) else ():
            source = (row_spec or {}).get("same_runs_as")
            if source:
                src_table, src_row = source.split(".")
                for (key, variant), group in list(by_table.get(src_table, {}).items()):
                    if key == src_row:
                        by_table[table][(row, variant)].extend(group)
    return by_table


def build_tables(runs: list[Run], paper: dict[str, Any]) -> dict[str, str]:
    """Markdown tables keyed by file stem: one per paper table our runs reproduce, and for the other
    experiments one ``experiments_<metric>`` table per headline metric (accuracy and FID never share
    a column)."""
    tables = {}
    for table, groups in sorted(_group(runs, paper).items()):
        spec = paper.get(table)
        all_runs = [r for rs in groups.values() for r in rs]
        metric = _metric_of(all_runs, spec)
        if metric is None:
            continue
        rows = []
        row_order = list((spec or {}).get("rows", {}))
        for (key, _variant), group in sorted(
            groups.items(), key=lambda kv: (row_order.index(kv[0][0]) if kv[0][0] in row_order else 0, kv[0])
        ):
            ours: dict[str, list[Run]] = defaultdict(list)
            for r in group:
                ours[r.norm].append(r)
            paper_row = spec["rows"].get(key, {}) if spec else {}
            label = paper_row.get("label", key) if spec else f"{key} ({group[0].model})"
            rows.append((_label(label, group), dict(ours), paper_row))
        title = spec["title"] + f" — {spec['source']}" if spec else "Our experiments (no paper counterpart)"
        text = _table(title, metric, rows, spec)
        if spec and spec.get("caveat"):  # a doubt about the paper's own numbers, beside them
            text += f"\nCaveat: {spec['caveat']}.\n"
        second = (spec or {}).get("second_metric")
        if second:
            text += "\n" + _table(
                f"{title}: {second['metric']}",
                second["metric"],
                rows,
                {**spec, "higher_is_better": second.get("higher_is_better"), "digits": second.get("digits", 2)},
                values_key=second["values"],
            )
        tables[table] = text
    return tables


def write_tables(tables: dict[str, str], out_dir: str | Path) -> list[Path]:
    """Write each table to ``out_dir/<name>.md`` (atomically) and return the paths."""
    from dyt.io import atomic_write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in tables.items():
        path = out_dir / f"{name}.md"
        atomic_write_text(path, text)
        paths.append(path)
    return paths
