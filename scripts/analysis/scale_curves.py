"""The scale probes of the point-wise norms over training, for runs side by side: a figure and a table.

    python scripts/analysis/scale_curves.py runs/dna_collapse/*/seed0 --out results/figures/dna_collapse

For every DyT/Derf layer the trainer logs ``scale/<layer>`` (alpha x the std of the layer's input),
``saturated/<layer>`` (the share of inputs with |alpha x| > 2, where tanh is flat and passes no gradient)
and ``alpha/<layer>`` every ``trainer.probe_every_steps`` steps (default: the logging cadence), and the
same at init in ``resolved.json`` (``scale_at_init``). ``<out>.png`` has one column per layer (at most
six, spread over the depth) and rows for alpha x std, the saturated share and alpha, one line per run;
``<out>.md`` lists, per run, the headline metric, the first step at which any layer had more than half
of its inputs saturated, and the last probes of the first and last layer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

MAX_COLUMNS = 6


def probes(run: Path) -> tuple[list[int], dict[str, dict[str, list[float]]]] | None:
    """(steps, {key: {layer: values}}) of one run dir, step 0 from ``resolved.json`` when present; None
    for a run without probes (a model without DyT/Derf, e.g. the LayerNorm reference)."""
    rows = []
    resolved = run / "resolved.json"
    if resolved.exists() and "scale_at_init" in json.loads(resolved.read_text()):
        rows.append({"step": 0, **json.loads(resolved.read_text())["scale_at_init"]})
    metrics = run / "metrics.jsonl"
    if not metrics.exists():
        raise SystemExit(f"error: {run} has no metrics.jsonl: give run dirs of train.py")
    logged = [json.loads(line) for line in metrics.read_text().splitlines()]
    rows += [r for r in logged if any(k.startswith("scale/") for k in r)]
    if not rows:
        return None
    layers = [k.removeprefix("scale/") for k in rows[-1] if k.startswith("scale/")]
    curves = {
        key: {layer: [r.get(f"{key}/{layer}", float("nan")) for r in rows] for layer in layers}
        for key in ("scale", "saturated", "alpha")
    }
    return [r["step"] for r in rows], curves


def first_saturated(steps: list[int], saturated: dict[str, list[float]], share: float = 0.5) -> int | None:
    """The first step at which any layer had more than ``share`` of its inputs saturated."""
    for i, step in enumerate(steps):
        if any(values[i] > share for values in saturated.values()):
            return step
    return None


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run dirs")
    p.add_argument("--out", default="results/figures/scale_curves", help="<out>.png and <out>.md")
    p.add_argument("--labels", default=None, help="comma-separated labels (default: each run's parent dir name)")
    args = p.parse_args(argv)
    labels = (
        args.labels.split(",")
        if args.labels
        else [r.parent.name if r.name.startswith("seed") else r.name for r in args.runs]
    )
    if len(labels) != len(args.runs):
        p.error(f"--labels names {len(labels)} runs, but {len(args.runs)} were given")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [probes(run) for run in args.runs]
    probed = [(d, label) for d, label in zip(data, labels, strict=True) if d is not None]
    if not probed:
        raise SystemExit("error: none of these runs logged scale probes (no DyT/Derf, or trainer.probe_every_steps=0)")
    layers = list(probed[0][0][1]["scale"])
    if len(layers) > MAX_COLUMNS:
        layers = [layers[round(i * (len(layers) - 1) / (MAX_COLUMNS - 1))] for i in range(MAX_COLUMNS)]
    rows = (
        ("scale", "alpha x input std", True),
        ("saturated", "share with |alpha x| > 2", False),
        ("alpha", "alpha", True),
    )
    fig, axes = plt.subplots(len(rows), len(layers), figsize=(3.2 * len(layers), 2.6 * len(rows)), squeeze=False)
    for (steps, curves), label in probed:
        for col, layer in enumerate(layers):
            for row, (key, _, _) in enumerate(rows):
                axes[row][col].plot(steps, curves[key].get(layer, [float("nan")] * len(steps)), label=label)
    for col, layer in enumerate(layers):
        axes[0][col].set_title(layer, fontsize=9)
        axes[-1][col].set_xlabel("step")
        for row, (_, name, log) in enumerate(rows):
            if log:
                axes[row][col].set_yscale("log")
            if col == 0:
                axes[row][col].set_ylabel(name)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out.with_suffix(".png"), dpi=110)
    plt.close(fig)

    first, last = layers[0], layers[-1]
    table = [
        f"| run | final metrics | first step with a layer > 50% saturated | {first}: alpha x std, saturated (last) "
        f"| {last}: alpha x std, saturated (last) |",
        "|---|---|---|---|---|",
    ]
    for run, found, label in zip(args.runs, data, labels, strict=True):
        results = json.loads((run / "results.json").read_text()) if (run / "results.json").exists() else {}
        value = ", ".join(f"{k} {v:.4g}" for k, v in results.items() if k.startswith("val/")) or "–"
        if found is None:
            table.append(f"| {label} (`{run}`) | {value} | no DyT/Derf | – | – |")
            continue
        steps, curves = found
        step = first_saturated(steps, curves["saturated"])
        cells = [
            f"{curves['scale'][layer][-1]:.3g}, {100 * curves['saturated'][layer][-1]:.0f}%" for layer in (first, last)
        ]
        table.append(
            f"| {label} (`{run}`) | {value} | {'never' if step is None else step} | " + " | ".join(cells) + " |"
        )
    out.with_suffix(".md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    print(f"wrote {out.with_suffix('.png')} and {out.with_suffix('.md')}")
    return out


if __name__ == "__main__":
    main()
