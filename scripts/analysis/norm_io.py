"""Norm input-output maps (paper Sec. 3, Figs. 2 and 4) of trained runs or timm models.

    python scripts/analysis/norm_io.py runs/quickstart/layernorm/seed0 runs/quickstart/dyt/seed0
    python scripts/analysis/norm_io.py --timm vit_small_patch16_224 --timm-to dyt   # random init, no hub
    python scripts/analysis/norm_io.py RUN --layers blocks.1.norm1,fc_norm --name my_figure

One mini-batch (the first --batch validation items of a run's task; random images for timm) goes
through each model; every chosen norm layer's input and its output before the affine are plotted
against each other, one row per model, so LN and DyT runs compare side by side. Three figures land in
--out: ``<name>.png`` (Fig. 2), ``<name>_token.png`` and ``<name>_channel.png`` (Fig. 4: coloured by
token, and with the extreme channels marked). Layers default to the paper's Fig. 2 choice for a model
with ViT-B's 25 norms, else the same relative depths. A run's captures are also saved to
``<run>/analysis/norm_io.pt``, which ``python eval.py`` re-plots. Runs of tasks whose batch is
``(inputs, labels)`` or one tensor are supported (classification, LM); DiT's three inputs are not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from dyt.analysis.capture import capture_norms, default_layers, norm_layers, save_captures  # noqa: E402
from dyt.analysis.figures import plot_norm_io  # noqa: E402
from dyt.analysis.sources import classifier_inputs, task_batch, timm_model  # noqa: E402
from dyt.tasks import load_run  # noqa: E402


def _capture(model, batch, layers: list[str] | None, max_tokens: int):
    names = [n for n, _ in norm_layers(model)]
    return capture_norms(model, batch, layers=layers or default_layers(names), max_tokens=max_tokens)


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", help="run dirs or checkpoints (the newest checkpoint of a run dir)")
    p.add_argument("--timm", action="append", default=[], help="a timm model name (random init); repeatable")
    p.add_argument("--timm-to", default=None, help="also convert each timm model with dyt.convert to this norm")
    p.add_argument("--layers", default=None, help="comma-separated norm layer names (default: paper's choice)")
    p.add_argument("--batch", type=int, default=64, help="mini-batch size (default 64)")
    p.add_argument("--max-tokens", type=int, default=8192, help="rows kept per layer (default 8192)")
    p.add_argument("--ema", action="store_true", help="analyse a run's EMA weights")
    p.add_argument("--out", default="results/figures/analysis", help="figure directory")
    p.add_argument("--name", default="norm_io", help="figure file name stem (default norm_io)")
    args = p.parse_args(argv)
    if not args.runs and not args.timm:
        p.error("give at least one run dir or --timm model")
    layers = args.layers.split(",") if args.layers else None
    rows = {}
    for run in args.runs:
        model, task, ckpt = load_run(run, weights="ema" if args.ema else "raw")
        caps = _capture(model, classifier_inputs(task_batch(task, args.batch)), layers, args.max_tokens)
        run_dir = Path(ckpt["path"]).parent.parent
        print(f"wrote {save_captures(caps, run_dir / 'analysis' / 'norm_io.pt')}")
        rows[f"{ckpt['config']['norm'].get('tag', '?')} ({run_dir.parent.parent.name})"] = list(caps.values())
    for name in args.timm:
        images = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        for to in [None, args.timm_to] if args.timm_to else [None]:
            caps = _capture(timm_model(name, to=to), images, layers, args.max_tokens)
            rows[f"{name} ({to or 'as built'})"] = list(caps.values())
    out = Path(args.out)
    paths = [
        plot_norm_io(rows, out / f"{args.name}{suffix}.png", color_by=color_by)
        for color_by, suffix in (("none", ""), ("token", "_token"), ("channel", "_channel"))
    ]
    for path in paths:
        print(f"wrote {path}")
    return paths


if __name__ == "__main__":
    main()
