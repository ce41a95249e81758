"""Figures of the paper's analyses: norm input-output maps (Figs. 2 and 4) and alpha vs 1/std (Fig. 8).

All functions take captured data (``dyt.analysis.capture``) or logged rows (``metrics.jsonl``) and write
one PNG; none needs the model, so a run's records re-plot without it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from dyt.analysis.capture import NormCapture

# Fig. 4 marks the few channels that carry the extreme inputs in red, green and pink.
EXTREME_COLORS = ("tab:red", "tab:green", "tab:pink")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _subsample(n: int, k: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:k] if n > k else torch.arange(n)


def extreme_channels(capture: NormCapture, k: int = 3) -> list[int]:
    """The ``k`` channels with the largest input magnitude (Fig. 4's highlighted channels)."""
    return capture.x.abs().amax(0).topk(min(k, capture.x.shape[1])).indices.tolist()


def _panel(ax, cap: NormCapture, color_by: str, max_points: int, n_tokens: int) -> None:
    x, y = cap.x, cap.y
    if color_by == "token":  # Fig. 4 left: a few tokens, each a straight line whose slope is 1/its std
        rows = _subsample(x.shape[0], n_tokens)
        colors = torch.linspace(0, 1, len(rows)).repeat_interleave(x.shape[1]).numpy()
        ax.scatter(x[rows].flatten(), y[rows].flatten(), c=colors, cmap="tab20", s=2, alpha=0.6, linewidths=0)
        return
    keep = _subsample(x.numel(), max_points)
    ax.scatter(x.flatten()[keep], y.flatten()[keep], s=1, alpha=0.3, linewidths=0, color="tab:blue")
    if color_by == "channel":  # Fig. 4 right: the extreme channels against the rest
        for channel, color in zip(extreme_channels(cap), EXTREME_COLORS, strict=False):
            ax.scatter(x[:, channel], y[:, channel], s=3, color=color, label=f"channel {channel}", linewidths=0)
        ax.legend(fontsize=6, markerscale=3, loc="lower right")


def plot_norm_io(
    rows: dict[str, list[NormCapture]],
    out: str | Path,
    color_by: str = "none",
    max_points: int = 20000,
    n_tokens: int = 20,
) -> Path:
    """Pre-affine output against input (paper Fig. 2): a row of panels per model (``{label: captures}``,
    e.g. an LN run above a DyT run), a panel per captured layer. ``color_by`` ``token`` or ``channel``
    gives Fig. 4's colourings, the latter with the extreme channels marked. Point-wise norms (DyT) show
    their map ``squash(alpha * x)``, with alpha in the panel title."""
    if color_by not in ("none", "token", "channel"):
        raise ValueError(f"color_by must be one of none, token, channel; got {color_by!r}")
    if not any(rows.values()):
        raise ValueError("no captured layers to plot: capture_norms found none (or layers= matched none)")
    plt = _pyplot()
    ncols = max(len(caps) for caps in rows.values())
    fig, axes = plt.subplots(len(rows), ncols, figsize=(3.2 * ncols, 3.2 * len(rows)), squeeze=False)
    for ax_row, (label, caps) in zip(axes, rows.items(), strict=True):
        for ax, cap in zip(ax_row, caps, strict=False):
            _panel(ax, cap, color_by, max_points, n_tokens)
            alpha = f", alpha={cap.alpha:.3g}" if cap.alpha is not None else ""
            ax.set_title(f"{label}: {cap.name}\n({cap.kind}{alpha})", fontsize=8)
            ax.set_xlabel("input x", fontsize=8)
            ax.grid(alpha=0.3)
        for ax in ax_row[len(caps) :]:
            ax.axis("off")
        ax_row[0].set_ylabel("output before affine", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# ---- Fig. 8: alpha and 1/std ---------------------------------------------------------------------


def alpha_std_series(rows: list[dict[str, Any]]) -> dict[str, tuple[list[int], list[float], list[float]]]:
    """``{layer: (steps, alpha, 1/std)}`` from logged rows holding both ``alpha/<layer>`` and
    ``input_std/<layer>`` at one step (rows of one step are merged first)."""
    by_step: dict[int, dict[str, Any]] = {}
    for row in rows:
        if "step" in row:
            by_step.setdefault(int(row["step"]), {}).update(row)
    series: dict[str, tuple[list[int], list[float], list[float]]] = {}
    for step in sorted(by_step):
        row = by_step[step]
        for key, std in row.items():
            if not key.startswith("input_std/"):
                continue
            layer = key.removeprefix("input_std/")
            if f"alpha/{layer}" in row and std > 0:
                steps, alphas, inv = series.setdefault(layer, ([], [], []))
                steps.append(step)
                alphas.append(float(row[f"alpha/{layer}"]))
                inv.append(1.0 / float(std))
    return series


def pearson(a: list[float], b: list[float]) -> float:
    """Pearson correlation coefficient (NaN for fewer than two points or a constant series)."""
    n = len(a)
    if n < 2:
        return math.nan
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    va, vb = sum((x - ma) ** 2 for x in a), sum((y - mb) ** 2 for y in b)
    return cov / math.sqrt(va * vb) if va > 0 and vb > 0 else math.nan


def plot_alpha_std(
    series: dict[str, tuple[list[int], list[float], list[float]]],
    out: str | Path,
    layers: list[str] | None = None,
    title: str = "",
) -> tuple[Path, float]:
    """Paper Fig. 8: left, alpha and 1/std over training for ``layers`` (default: two, the first and the
    last); right, the final alpha of every layer against its final 1/std, with Pearson's r. Returns the
    path and r."""
    if not series:
        raise ValueError(
            "no layer has both alpha/<layer> and input_std/<layer> at one step: record the input std "
            "(dyt.analysis.InputStdProbe, or scripts/analysis/alpha_std.py on a run's checkpoints)"
        )
    names = list(series)
    layers = layers or list(dict.fromkeys([names[0], names[-1]]))
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for i, layer in enumerate(layers):
        steps, alphas, inv = series[layer]
        color = f"C{i}"
        left.plot(steps, alphas, color=color, label=f"alpha {layer}")
        left.plot(steps, inv, color=color, linestyle="--", label=f"1/std {layer}")
    left.set(xlabel="step", ylabel="value", title="alpha and 1/std of the input over training")
    left.legend(fontsize=7)
    left.grid(alpha=0.3)
    final_alpha = [series[n][1][-1] for n in names]
    final_inv = [series[n][2][-1] for n in names]
    r = pearson(final_inv, final_alpha)
    right.scatter(final_inv, final_alpha, s=14)
    right.set(xlabel="1/std of the input (final)", ylabel="alpha (final)", title=f"every layer: r = {r:.3f}")
    right.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out, r
