"""Paper-vs-ours tables: rows are models (experiments), columns are norms, ours beside the paper's.

Runs are grouped by experiment; seeds are aggregated as mean +- std. A run whose experiment names a
row of ``results/paper.yaml`` (``paper_ref``) lands in that paper table with the published numbers
beside ours; every other experiment lands in an ``experiments_<metric>`` table with our numbers only.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from dyt.results.runs import Run, mean_std

BASELINES = ("layernorm", "rmsnorm")  # the column differences are taken against, first present wins


def load_paper(path: str | Path = "results/paper.yaml") -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


def _metric_of(runs: list[Run], paper_table: dict[str, Any] | None) -> str | None:
    """The paper table's metric, else the headline metric the runs' task declared (``results.json``)."""
    if paper_table and paper_table.get("metric"):
        return paper_table["metric"]
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


def _fmt_ours(values: list[float]) -> str:
    if not values:
        return "–"
    mean, std = mean_std(values)
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ± {std:.2f} (n={len(values)})"


def _norm_order(norms: set[str]) -> list[str]:
    base = [n for n in BASELINES if n in norms]
    return base + sorted(norms - set(base))


def _table(
    title: str,
    metric: str,
    rows: list[tuple[str, dict[str, list[float]], dict[str, Any]]],
    higher_is_better: bool | None,
    with_paper: bool = True,
) -> str:
    """Markdown for ``rows`` of (label, {norm: our values}, {norm: paper value}); ``with_paper=False``
    leaves out the paper's columns (experiments the paper did not run)."""
    norms = _norm_order({n for _, ours, paper in rows for n in (*ours, *paper)})
    base = next((n for n in BASELINES if n in norms), None)
    header = ["model"]
    for n in norms:
        header += [f"{n} (ours)", f"{n} (paper)"] if with_paper else [n]
    others = [n for n in norms if n != base] if base else []
    header += [f"{n} − {base} (ours / paper)" if with_paper else f"{n} − {base}" for n in others]
    direction = (
        "" if higher_is_better is None else (" (higher is better)" if higher_is_better else " (lower is better)")
    )
    lines = [
        f"### {title}",
        "",
        f"Metric: `{metric}`{direction}. Ours: mean ± std over seeds.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for label, ours, paper in rows:
        cells = [label]
        means = {n: mean_std(v)[0] for n, v in ours.items() if v}
        for n in norms:
            cells += [_fmt_ours(ours.get(n, []))] + ([_fmt(paper.get(n))] if with_paper else [])
        for n in others:
            d_ours = _fmt(means[n] - means[base] if n in means and base in means else None)
            d_paper = _fmt(paper[n] - paper[base] if n in paper and base in paper else None)
            cells.append(f"{d_ours} / {d_paper}" if with_paper else d_ours)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def build_tables(runs: list[Run], paper: dict[str, Any]) -> dict[str, str]:
    """Markdown tables keyed by file stem: one per paper table our runs reproduce, and for the other
    experiments one ``experiments_<metric>`` table per headline metric (accuracy and FID never share
    a column)."""
    by_table: dict[str, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    others: dict[str, list[Run]] = defaultdict(list)
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

    tables = {}
    for table, groups in sorted(by_table.items()):
        spec = paper.get(table)
        all_runs = [r for rs in groups.values() for r in rs]
        metric = _metric_of(all_runs, spec)
        if metric is None:
            continue
        rows = []
        for (key, _variant), group in sorted(groups.items()):
            ours: dict[str, list[float]] = defaultdict(list)
            for r in group:
                if metric in r.results:
                    ours[r.norm].append(float(r.results[metric]))
            paper_row = spec["rows"].get(key, {}) if spec else {}
            label = paper_row.get("label", key) if spec else f"{key} ({group[0].model})"
            rows.append((_label(label, group), dict(ours), paper_row.get("values", {})))
        title = spec["title"] + f" — {spec['source']}" if spec else "Our experiments (no paper counterpart)"
        tables[table] = _table(
            title, metric, rows, spec.get("higher_is_better") if spec else None, with_paper=spec is not None
        )
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
