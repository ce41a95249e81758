"""Hyperparameter sweeps over run dirs: the paper's alpha_init and learning-rate studies (Sec. 7, App. B).

Each function takes runs (``dyt.results.runs.find_runs``) of one or several Hydra multiruns and reads
the swept values from each run's resolved config, so any sweep that varies ``norm.alpha_init``,
``norm.sites.<site>.alpha_init``, ``optim.lr`` or the model width can be plotted:

* :func:`plot_alpha_curves`   final metric against alpha_init, a line per model, LN dashed (paper Fig. 9);
* :func:`plot_stability_grid` learning rate x alpha_init per model size, diverged runs crossed (Fig. 10);
* :func:`plot_alpha_grid`     attention alpha_init x other alpha_init heat map per model (Fig. 11,
  Tables 10-11);
* :func:`plot_width_alpha`    DyT minus LN over width x alpha_init, a panel per lr (below width 1024);
* :func:`alpha_table`         the Fig. 9 data as a markdown table with each model's LN reference;
* :func:`sweep_figures`       all of the above that the given runs support (the hook ``eval.py`` calls).

The sweeps themselves (configs/experiment/paper/*_table12.yaml, *_table13.yaml, sweeps/*.yaml):
    python train.py -m experiment=paper/vit_b_in1k_table13 data.root=...           # Table 13, Fig. 9
    python train.py -m experiment=paper/vit_b_in1k_table12 data.root=...           # Table 12
    python train.py -m experiment=paper/vit_b_in1k,paper/vit_l_in1k norm=dyt \\
        optim.lr=1e-3,2e-3,4e-3,6e-3,8e-3 norm.alpha_init=0.1,0.3,0.5,0.8,1.0,1.5,2.0 hydra/launcher=slurm
                                                                                     # Fig. 10 (+ norm=layernorm)
    python train.py -m experiment=sweeps/llama_alpha_grid                           # Fig. 11, on CPU
    scripts/analysis/alpha_init_study.sh                                             # alpha_init below width 1024
"""

from __future__ import annotations

import inspect
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dyt.nn.registry import get_norm_class
from dyt.results.runs import Run, mean_std

OK, DIVERGED, UNFINISHED = "ok", "diverged", "unfinished"


def config_value(run: Run, key: str, default: Any = None) -> Any:
    """The value of dotted ``key`` (``optim.lr``) in the run's resolved config, else ``default``."""
    node: Any = run.config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def alpha_init(run: Run, site: str | None = None) -> float | None:
    """The alpha_init a point-wise-norm run used (at ``site`` if given: its per-site value wins); a
    ``null`` config value is what the model built (``resolved.json``: the width-dependent defaults of
    LLaMA and narrow ViTs), else the norm class's default. ``None`` for norms without alpha (LN, RMSNorm)."""
    name = config_value(run, "norm.name")
    try:
        default = inspect.signature(get_norm_class(name).__init__).parameters.get("alpha_init")
    except ValueError:
        return None
    if default is None:
        return None
    value = config_value(run, f"norm.sites.{site}.alpha_init") if site else None
    if value is None:
        value = config_value(run, "norm.alpha_init")
    if value is None:
        value = _built_alpha_init(run, site)
    return float(default.default if value is None else value)


def _built_alpha_init(run: Run, site: str | None) -> float | None:
    """The alpha_init the model built at ``site`` (or its first norm), from the run's ``resolved.json``."""
    path = run.path / "resolved.json"
    if not path.exists():
        return None
    norms = [n for n in json.loads(path.read_text()).get("norms", []) if "alpha_init" in n]
    chosen = [n for n in norms if site is None or n.get("site") == site]
    return chosen[0]["alpha_init"] if chosen else None


def model_label(run: Run) -> str:
    """The model of a run, with its width when the sweep set one (``vit_digits@128``)."""
    width = config_value(run, "model.embed_dim") or config_value(run, "model.dim")
    return f"{run.model}@{width}" if width else run.model


def _width(label: str) -> tuple[str, int]:
    name, _, width = label.partition("@")
    return name, int(width) if width.isdigit() else 0


def status(run: Run) -> str:
    """``diverged`` when the run logged a non-finite training loss (written as null) or its results say
    so, ``ok`` when it finished, else ``unfinished`` (still running, killed or crashed otherwise)."""
    if run.results.get("diverged"):
        return DIVERGED
    for row in run.metrics():
        if "train/loss" in row and (row["train/loss"] is None or not math.isfinite(row["train/loss"])):
            return DIVERGED
    return OK if run.finished else UNFINISHED


def metric_of(run: Run, metric: str | None = None) -> tuple[str, float | None]:
    """(metric name, final value) of a run: ``metric`` or the run's headline metric; ``None`` if absent."""
    name = metric or run.results.get("headline_metric") or "val/loss"
    value = run.results.get(name)
    return name, (float(value) if value is not None else None)


@dataclass
class Cell:
    """Seeds of one sweep point aggregated."""

    mean: float | None
    std: float
    n: int
    diverged: int

    def text(self, digits: int = 1) -> str:
        if self.mean is None:
            return "diverged" if self.diverged else "-"
        spread = f" +- {self.std:.{digits}f}" if self.n > 1 else ""
        failed = f" ({self.diverged} diverged)" if self.diverged else ""
        return f"{self.mean:.{digits}f}{spread}{failed}"


def aggregate(runs: list[Run], key_fn, metric: str | None = None) -> tuple[str, dict[Any, Cell]]:
    """Group runs by ``key_fn(run)`` (``None`` drops a run) and average the metric over seeds; diverged
    runs are counted, not averaged; unfinished ones are left out."""
    values: dict[Any, list[float]] = defaultdict(list)
    diverged: dict[Any, int] = defaultdict(int)
    name = metric
    for run in runs:
        key = key_fn(run)
        if key is None:
            continue
        state = status(run)
        if state == DIVERGED:
            diverged[key] += 1
            values.setdefault(key, [])
        elif state == OK:
            name, value = metric_of(run, metric)
            if value is not None:
                values[key].append(value)
    cells = {}
    for key in values.keys() | diverged.keys():
        vals = values.get(key, [])
        mean, std = mean_std(vals) if vals else (None, 0.0)
        cells[key] = Cell(mean, std, len(vals), diverged.get(key, 0))
    return name or "val/loss", cells


def _alpha_key(run: Run):
    """(model, alpha_init), or (model, norm tag) for a reference norm without alpha (LN, RMSNorm)."""
    alpha = alpha_init(run)
    return (model_label(run), run.norm if alpha is None else alpha)


def _split(cells: dict) -> tuple[list[str], list[float], list[str]]:
    """Models (by width), alpha values and reference norm tags of (model, alpha or tag) cells."""
    models = sorted({m for m, _ in cells}, key=_width)
    alphas = sorted({a for _, a in cells if not isinstance(a, str)})
    refs = sorted({a for _, a in cells if isinstance(a, str)}, key=lambda t: (t != "layernorm", t))
    return models, alphas, refs


def alpha_table(runs: list[Run], metric: str | None = None, digits: int = 1) -> str:
    """Markdown: a row per model (by width), a column per alpha_init, then each reference norm (LN
    first) and the best DyT minus the first reference; mean +- std over seeds."""
    name, cells = aggregate(runs, _alpha_key, metric)
    models, alphas, refs = _split(cells)
    higher = not name.endswith("loss")
    empty = Cell(None, 0, 0, 0)
    gap_label = f"best DyT - {refs[0]}" if refs else "best DyT - reference"
    lines = [
        f"| model | {' | '.join([*(f'alpha_init={a:g}' for a in alphas), *refs, gap_label])} |",
        "|" + "---|" * (len(alphas) + len(refs) + 2),
    ]
    for model in models:
        row = [cells.get((model, a), empty) for a in alphas]
        ref_cells = [cells.get((model, t), empty) for t in refs]
        means = [c.mean for c in row if c.mean is not None]
        best = (max(means) if higher else min(means)) if means else None
        ref = ref_cells[0] if ref_cells else empty
        gap = f"{best - ref.mean:+.{digits}f}" if best is not None and ref.mean is not None else "-"
        texts = [c.text(digits) for c in (*row, *ref_cells)]
        lines.append(f"| {model} | {' | '.join([*texts, gap])} |")
    return "\n".join(lines) + f"\n\nMetric: final {name}, mean +- std over seeds.\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_alpha_curves(runs: list[Run], out: str | Path, metric: str | None = None) -> Path:
    """Paper Fig. 9: final metric against alpha_init, a line per model (seed mean, std as error bars),
    each model's reference norms (LN dashed, then dotted) in the same colour, diverged points crossed at
    the axis bottom. Runs of several learning rates are pooled: pass one lr's runs."""
    plt = _pyplot()
    name, cells = aggregate(runs, _alpha_key, metric)
    fig, ax = plt.subplots(figsize=(6, 4))
    models, _, refs = _split(cells)
    for i, model in enumerate(models):
        color = f"C{i}"
        points = sorted((a, c) for (m, a), c in cells.items() if m == model and not isinstance(a, str))
        done = [(a, c) for a, c in points if c.mean is not None]
        if done:
            ax.errorbar(
                [a for a, _ in done], [c.mean for _, c in done], yerr=[c.std for _, c in done],
                marker="o", color=color, label=f"{model} DyT", capsize=2,
            )  # fmt: skip
        failed = [a for a, c in points if c.diverged]
        if failed:
            ax.scatter(failed, [0] * len(failed), marker="x", color=color, transform=ax.get_xaxis_transform())
        for tag, style in zip(refs, ("--", ":", "-.")):
            ref = cells.get((model, tag))
            if ref is not None and ref.mean is not None:
                ax.axhline(ref.mean, color=color, linestyle=style, linewidth=1, label=f"{model} {tag}")
    ax.set(xscale="log", xlabel="alpha_init", ylabel=f"final {name}", title="Metric against alpha_init (cf. Fig. 9)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, out)


def plot_stability_grid(runs: list[Run], out: str | Path, metric: str | None = None) -> Path:
    """Paper Fig. 10: a panel per model size, learning rate (rows) x alpha_init (columns), cells
    coloured by the final metric and marked X where a run diverged."""

    def key(run: Run):
        alpha = alpha_init(run)
        return None if alpha is None else (model_label(run), config_value(run, "optim.lr"), alpha)

    name, cells = aggregate(runs, key, metric)
    models = sorted({m for m, _, _ in cells}, key=_width)
    return _heatmaps(
        [(m, {(lr, a): c for (mm, lr, a), c in cells.items() if mm == m}) for m in models],
        out, name, ylabel="learning rate", xlabel="alpha_init", title="Stability: lr x alpha_init (cf. Fig. 10)",
    )  # fmt: skip


def plot_alpha_grid(runs: list[Run], out: str | Path, metric: str | None = "val/loss", other_site: str = "ffn") -> Path:
    """Paper Fig. 11: a panel per model, attention alpha_init (rows) x other alpha_init (columns; read
    at ``other_site``, the pre-FFN norm, which the sweep ties to the final norm) coloured by the loss."""

    def key(run: Run):
        attn = alpha_init(run, "attn")
        return None if attn is None else (model_label(run), attn, alpha_init(run, other_site))

    name, cells = aggregate(runs, key, metric)
    models = sorted({m for m, _, _ in cells}, key=_width)
    return _heatmaps(
        [(m, {(a, o): c for (mm, a, o), c in cells.items() if mm == m}) for m in models],
        out, name, ylabel="attention alpha_init", xlabel="other alpha_init",
        title="alpha_init: attention x other (cf. Fig. 11)",
    )  # fmt: skip


def plot_width_alpha(runs: list[Run], out: str | Path, metric: str | None = None, reference: str = "layernorm") -> Path:
    """Width (rows) x alpha_init (columns), a panel per learning rate, each cell DyT minus the
    ``reference`` norm of the same width and lr (seed means): above 0 is better for accuracy, below for loss."""

    def key(run: Run):
        alpha = alpha_init(run)
        if alpha is None and run.norm != reference:
            return None
        return (config_value(run, "optim.lr"), _width(model_label(run))[1], "ln" if alpha is None else alpha)

    name, cells = aggregate(runs, key, metric)
    panels = []
    for lr in sorted({lr for lr, _, _ in cells}):
        grid = {}
        for (lr_, width, alpha), cell in cells.items():
            ref = cells.get((lr, width, "ln"))
            if lr_ != lr or alpha == "ln" or ref is None or ref.mean is None:
                continue
            gap = None if cell.mean is None else cell.mean - ref.mean
            grid[(width, alpha)] = Cell(gap, cell.std, cell.n, cell.diverged)
        panels.append((f"lr {lr:g}", grid))
    return _heatmaps(
        panels, out, f"{name} (DyT - {reference})", ylabel="width", xlabel="alpha_init",
        title="DyT minus LN by width and alpha_init",
    )  # fmt: skip


def _heatmaps(panels, out, name: str, ylabel: str, xlabel: str, title: str) -> Path:
    """One heat map per (model, {(row value, column value): Cell}); X marks diverged cells."""
    plt = _pyplot()
    panels = [(model, grid) for model, grid in panels if grid]
    if not panels:
        raise ValueError(f"no runs to plot for {title!r}: none of the runs is a DyT-family run of such a sweep")
    fig, axes = plt.subplots(1, len(panels), figsize=(max(5.5, 4.2 * len(panels)), 4.2), squeeze=False)
    for ax, (model, grid) in zip(axes[0], panels, strict=True):
        rows = sorted({r for r, _ in grid})
        cols = sorted({c for _, c in grid})
        data = [[grid.get((r, c)) for c in cols] for r in rows]
        values = [
            [cell.mean if cell is not None and cell.mean is not None else math.nan for cell in row] for row in data
        ]
        image = ax.imshow(values, origin="lower", cmap="viridis_r" if "loss" in name else "viridis")
        for i, row in enumerate(data):
            for j, cell in enumerate(row):
                if cell is None:
                    continue
                text = "X" if cell.mean is None else f"{cell.mean:.3g}" + ("*" if cell.diverged else "")
                ax.text(j, i, text, ha="center", va="center", color="red" if cell.mean is None else "white", fontsize=7)
        ax.set_xticks(range(len(cols)), [f"{c:g}" for c in cols])
        ax.set_yticks(range(len(rows)), [f"{r:g}" for r in rows])
        ax.set(xlabel=xlabel, ylabel=ylabel, title=model)
        fig.colorbar(image, ax=ax, shrink=0.8, label=f"final {name}")
    fig.suptitle(f"{title}\nX = diverged, * = some seeds diverged", fontsize=9)
    return _save(fig, out)


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    _pyplot().close(fig)
    return out


def _swept(runs: list[Run], fn) -> bool:
    return len({fn(r) for r in runs} - {None}) > 1


def sweep_figures(runs: list[Run], out_dir: str | Path, metric: str | None = None) -> list[Path]:
    """Every sweep figure the runs support, per experiment, into ``out_dir`` (``<experiment>_<kind>.png``,
    ``/`` in names replaced by ``_``): Fig. 9 when alpha_init varies, Fig. 10 when lr varies too, Fig. 11
    when the attention and the FFN alpha_init vary. The hook for ``eval.py``."""
    by_experiment: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_experiment[run.experiment.split("+")[0]].append(run)
    paths = []
    for experiment, group in sorted(by_experiment.items()):
        stem = Path(out_dir) / experiment.replace("/", "_")
        if any(alpha_init(r, "attn") != alpha_init(r, "ffn") for r in group):  # sites swept apart
            paths.append(plot_alpha_grid(group, f"{stem}_alpha_grid.png", metric or "val/loss"))  # Fig. 11: loss
        elif _swept(group, alpha_init):
            paths.append(plot_alpha_curves(group, f"{stem}_alpha_curves.png", metric))
            if _swept(group, lambda r: config_value(r, "optim.lr")):
                paths.append(plot_stability_grid(group, f"{stem}_stability.png", metric))
    return paths
