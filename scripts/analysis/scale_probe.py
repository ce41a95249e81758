"""The input scale of every point-wise norm (DyT, Derf) of a model preset at init, on random inputs.

    python scripts/analysis/scale_probe.py vit_b                          # the paper's ViT-B, DyT alpha 0.5
    python scripts/analysis/scale_probe.py hyenadna_cpu --norm dyt alpha_init=calibrate
    python scripts/analysis/scale_probe.py llama_cpu embed_scale=unit --batch 4

Per layer: the std of its input over all elements, alpha, ``alpha x std`` and the share of inputs with
``|alpha x| > 2`` (where tanh is flat), on one forward pass of the preset's ``example_inputs`` (random
images or tokens) in train mode; then the same summary the trainer prints at start-up. With
``alpha_init=calibrate`` the layers are calibrated on that pass first (``dyt.nn.calibrate``), as the
trainer does on a training batch. ``key=value`` arguments are model options (numbers are parsed).
The numbers behind ``norm.calibrate_to``'s default (0.3: what alpha 0.5 gives at ViT-B's DyT layers).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402

import models  # noqa: E402
from dyt.nn import build_norm_factory  # noqa: E402
from dyt.nn.calibrate import calibrate_alpha  # noqa: E402
from dyt.nn.probes import ScaleProbe, alpha_stats, scale_message  # noqa: E402


def probe(name: str, norm: str, options: dict, batch: int, seed: int) -> tuple[dict[str, float], bool, bool]:
    """One forward pass of preset ``name`` with ``norm`` (``alpha_init``/``calibrate_to`` in ``options``
    go to the norm, the rest to the model): the probe row (alpha included), whether it calibrated, and
    whether the model is ``norm_scale_sensitive``."""
    torch.manual_seed(seed)
    norm_opts = {k: options.pop(k) for k in ("alpha_init", "calibrate_to") if k in options}
    factory = build_norm_factory({"name": norm, **norm_opts})
    model = models.create_model(name, norm=factory, **options)
    inputs = model.example_inputs(batch)
    scale = ScaleProbe(model)
    calibrating = norm_opts.get("alpha_init") == "calibrate"

    def forward() -> None:
        with torch.no_grad(), scale.recording():
            model(*inputs)

    calibrate_alpha(model, forward) if calibrating else forward()
    sensitive = getattr(model, "norm_scale_sensitive", True)
    return {**scale.collect(), **alpha_stats(model)}, calibrating, sensitive


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help=f"a model preset ({', '.join(models.model_names()[:6])}, ...)")
    p.add_argument("options", nargs="*", help="key=value model options, or alpha_init / calibrate_to for the norm")
    p.add_argument("--norm", default="dyt", help="a point-wise norm: dyt (default) or derf")
    p.add_argument("--batch", type=int, default=8, help="inputs in the forward pass (default 8)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.model not in models.model_names():
        p.error(f"unknown model {args.model!r}; choose from {', '.join(models.model_names())}")
    options = {}
    for item in args.options:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"options are key=value, got {item!r}")
        options[key] = yaml.safe_load(value)
    row, calibrated, sensitive = probe(args.model, args.norm, options, args.batch, args.seed)
    layers = [k.removeprefix("scale/") for k in row if k.startswith("scale/")]
    print(f"{'layer':40s} {'input std':>10s} {'alpha':>8s} {'alpha x std':>12s} {'saturated':>10s}")
    for layer in layers:
        print(
            f"{layer:40s} {row[f'input_std/{layer}']:10.4g} {row[f'alpha/{layer}']:8.4g} "
            f"{row[f'scale/{layer}']:12.4g} {100 * row[f'saturated/{layer}']:9.1f}%"
        )
    line, warning = scale_message(row, calibrated, sensitive, batch=f"{args.batch} random example inputs")
    print(line)
    if warning:
        print(f"warning: {warning}")
    return row


if __name__ == "__main__":
    main()
