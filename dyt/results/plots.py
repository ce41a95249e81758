"""The standard run figures of ``eval.py``.

Per experiment, one figure with a line per (norm, seed): training loss, the validation curve of the
task's headline metric, and the mean alpha of the point-wise norms (like the paper's Figs. 5 and 6,
plus what DyT learns). Per run with recorded analyses (``scripts/analysis/``, or input-std rows logged
during training), their figures again: alpha vs 1/std (paper Fig. 8) and the norm input-output maps
(Figs. 2 and 4).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from dyt.results.runs import Run

COLORS = {"layernorm": "tab:blue", "rmsnorm": "tab:green", "dyt": "tab:orange", "derf": "tab:red"}


def _panels(group: list[Run]) -> list[str]:
    """The keys to plot for one experiment: training loss, the headline validation metric, mean alpha,
    each only when some run logged it."""
    headline = [r.results.get("headline_metric") for r in group if r.results.get("headline_metric")]
    candidates = ["train/loss", max(set(headline), key=headline.count) if headline else "val/loss", "alpha/mean"]
    return [k for k in dict.fromkeys(candidates) if any(r.curve(k)[0] for r in group)]


def plot_curves(runs: list[Run], out_dir: str | Path) -> list[Path]:
    """Write the standard figures of ``runs`` to ``out_dir`` (see the module docstring); return the paths:
    ``<experiment>_curves.png`` per experiment, then the per-run analysis figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_experiment: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_experiment[run.experiment].append(run)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for experiment, group in sorted(by_experiment.items()):
        keys = _panels(group)
        if not keys:
            continue
        fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.8), squeeze=False)
        for ax, key in zip(axes[0], keys, strict=True):
            labelled = set()
            for run in group:
                steps, values = run.curve(key)
                if not steps:
                    continue
                label = run.norm if run.norm not in labelled else None
                labelled.add(run.norm)
                marker = "o" if key.startswith("val/") else None  # evaluations are sparse
                ax.plot(steps, values, color=COLORS.get(run.norm), label=label, lw=1, alpha=0.85, marker=marker, ms=3)
            ax.set(xlabel="step", ylabel=key, title=key)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(experiment)
        fig.tight_layout()
        path = out_dir / f"{experiment.replace('/', '_')}_curves.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths + plot_analyses(runs, out_dir)


def plot_analyses(runs: list[Run], out_dir: str | Path) -> list[Path]:
    """Re-plot what each run recorded for the paper's analyses: Fig. 8 from ``input_std/<layer>`` rows
    (logged or ``analysis/alpha_std.jsonl``), Figs. 2/4 from ``analysis/norm_io.pt``."""
    from dyt.analysis.capture import load_captures
    from dyt.analysis.figures import alpha_std_series, plot_alpha_std, plot_norm_io

    out_dir = Path(out_dir)
    paths = []
    for run in runs:
        stem = f"{run.experiment}_{run.norm}_seed{run.seed}".replace("/", "_")
        series = alpha_std_series(run.analysis_rows())
        if series:
            paths.append(plot_alpha_std(series, out_dir / f"{stem}_alpha_std.png", title=stem)[0])
        captured = run.path / "analysis" / "norm_io.pt"
        if captured.exists():
            rows = {run.norm: list(load_captures(captured).values())}
            paths.append(plot_norm_io(rows, out_dir / f"{stem}_norm_io.png"))
    return paths
