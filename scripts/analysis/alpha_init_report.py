"""Tables and figures of results/alpha_init_small_width.md from the run dirs of the small-width
alpha_init study (scripts/analysis/alpha_init_study.sh) and of the CPU reproduction (scripts/reproduce_cpu.py).

    python scripts/analysis/alpha_init_report.py          # prints the markdown tables, writes the figures

Reads runs/sweeps/ (both studies), runs/cpu/ (the reproduction at the default alpha_init, 0.5) and
runs/cpu_alpha2.0/<recipe>/<norm>/seed<k>: the reproduction's DyT and Derf runs of the ViT-family
recipes with alpha_init 2.0 at every norm, e.g.
    python train.py experiment=cpu/vit_digits norm=dyt norm.alpha_init=2.0 seed=0 \
        run_dir=runs/cpu_alpha2.0/vit_digits/dyt/seed0
(a fine-tune with init_from.source=runs/cpu_alpha2.0/<its pretraining>/<norm>/seed<k>). The LLaMA study's
RMSNorm reference at width 128 is the reproduction's LLaMA row: the same recipe and seeds.
"""

from __future__ import annotations

import json
from pathlib import Path

from dyt.results.runs import find_runs, mean_std
from dyt.results.sweeps import alpha_table, plot_alpha_curves, plot_width_alpha

FIGURES = Path("results/figures")
FAMILY_ROWS = [  # (label, CPU recipe, metric) of the ViT family in the reproduction
    ("ViT, supervised", "vit_digits", "val/top1"),
    ("MAE pretraining (reconstruction loss)", "mae_digits", "val/loss"),
    ("MAE fine-tune", "mae_digits_finetune", "val/top1"),
    ("DINO pretraining (20-NN top-1)", "dino_digits", "val/knn_top1"),
    ("DINO fine-tune", "dino_digits_finetune", "val/top1"),
]
COLUMNS = [("cpu", "layernorm", "LN"), ("cpu", "dyt", "DyT 0.5"), ("cpu_alpha2.0", "dyt", "DyT 2.0"),
           ("cpu", "derf", "Derf 0.5"), ("cpu_alpha2.0", "derf", "Derf 2.0")]  # fmt: skip


def family_table() -> str:
    """The ViT-family rows of the CPU reproduction at alpha_init 0.5 and 2.0, mean +- std over seeds."""
    lines = ["| run | metric | " + " | ".join(c[2] for c in COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for label, recipe, metric in FAMILY_ROWS:
        cells = []
        for root, norm, _ in COLUMNS:
            files = Path("runs", root, recipe, norm).glob("seed*/results.json")
            values = [json.loads(f.read_text())[metric] for f in files]
            digits = 3 if "loss" in metric else 1
            mean, std = mean_std(values) if values else (None, 0.0)
            cells.append("-" if mean is None else f"{mean:.{digits}f} +- {std:.{digits}f} (n={len(values)})")
        lines.append(f"| {label} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    runs = find_runs("runs/sweeps")
    vit = [r for r in runs if r.experiment.split("+")[0] == "sweeps/alpha_init_small_width"]
    llama = [r for r in runs if r.experiment.split("+")[0] == "sweeps/llama_alpha_small_width"]
    reference = [r for r in find_runs("runs/cpu/llama_stdlib") if r.norm == "rmsnorm"]
    for run in reference:  # its config leaves the width to the preset (128); the tables key on model.dim
        run.config.setdefault("model", {})["dim"] = 128
    llama += reference
    plot_alpha_curves(vit, FIGURES / "alpha_init_small_width_vit_curves.png")
    plot_width_alpha(vit, FIGURES / "alpha_init_small_width_vit_gap.png")
    plot_alpha_curves(llama, FIGURES / "alpha_init_small_width_llama_curves.png", "val/loss")
    plot_width_alpha(llama, FIGURES / "alpha_init_small_width_llama_gap.png", "val/loss", reference="rmsnorm")
    print("## ViT, top-1\n\n" + alpha_table(vit))
    print("## ViT, loss\n\n" + alpha_table(vit, "val/loss", 3))
    print("## LLaMA, loss\n\n" + alpha_table(llama, "val/loss", 3))
    print("## ViT family in the CPU reproduction\n\n" + family_table())


if __name__ == "__main__":
    main()
