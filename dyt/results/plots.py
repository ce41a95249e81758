"""Training curves of each norm overlaid, one figure per experiment (like the paper's Figs. 5 and 6)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from dyt.results.runs import Run

COLORS = {"layernorm": "tab:blue", "rmsnorm": "tab:green", "dyt": "tab:orange", "derf": "tab:red"}


def plot_curves(runs: list[Run], out_dir: str | Path, key: str = "train/loss") -> list[Path]:
    """One PNG per experiment with ``key`` against step, a line per (norm, seed). Returns the paths."""
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
        curves = [(run, *run.curve(key)) for run in group]
        curves = [c for c in curves if c[1]]
        if not curves:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        labelled = set()
        for run, steps, values in curves:
            label = run.norm if run.norm not in labelled else None
            labelled.add(run.norm)
            ax.plot(steps, values, color=COLORS.get(run.norm), label=label, linewidth=1, alpha=0.85)
        ax.set(xlabel="step", ylabel=key, title=f"{experiment}: {key}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"{experiment.replace('/', '_')}_{key.replace('/', '_')}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
