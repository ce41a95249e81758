#!/usr/bin/env bash
# alpha_init below width 1024, a question the paper leaves open (its Table 11 starts at width 1024; its
# non-LLM default alpha_init = 0.5 comes from widths >= 768, Sec. 7): the quickstart ViT on
# scikit-learn's real 8x8 digits (experiment=sweeps/alpha_init_small_width) over
# width x alpha_init x learning rate x seed with DyT, and LayerNorm and RMSNorm as references.
# Then writes the table and figures (dyt/results/sweeps.py).
#
#   scripts/analysis/alpha_init_study.sh                           # the full grid below, local processes
#   LAUNCHER=slurm scripts/analysis/alpha_init_study.sh             # one SLURM job per run
#   WIDTHS=32,64,128 ALPHAS=0.1,0.5,1.0,2.0,4.0 LRS=3e-3 SEEDS=0,1 EPOCHS=6 REFS=layernorm \
#     scripts/analysis/alpha_init_study.sh optim.schedule.warmup_epochs=1   # the reduced run committed
#
# Full grid: 4 widths x 10 alpha_init x 3 lrs x 3 seeds = 360 DyT runs + 72 reference runs, about one
# CPU-minute each at width 64 (more at 512). Locally, each (width, lr) chunk runs its jobs in parallel
# (30 DyT + 6 reference processes): on a small machine lower the grid. Extra arguments are Hydra overrides for every run.
set -euo pipefail
cd "$(dirname "$0")/../.."

WIDTHS=${WIDTHS:-64,128,256,512}
ALPHAS=${ALPHAS:-0.1,0.2,0.3,0.5,0.8,1.0,1.5,2.0,4.0,8.0}   # above 2.0: still rising at 4.0 (results/alpha_init_small_width.md)
LRS=${LRS:-1e-3,3e-3,6e-3}
SEEDS=${SEEDS:-0,1,2}
EPOCHS=${EPOCHS:-30}
REFS=${REFS:-layernorm,rmsnorm}
LAUNCHER=${LAUNCHER:-local}
OUT=${OUT:-results/alpha_init_small_width_full}   # <OUT>.md and <OUT>_*.png
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}     # many small runs: one thread each

sweep() {  # sweep <widths> <lrs> [overrides...]
  local widths=$1 lrs=$2
  shift 2
  local common=(experiment=sweeps/alpha_init_small_width "trainer.epochs=$EPOCHS" "model.embed_dim=$widths"
    "optim.lr=$lrs" "seed=$SEEDS" "hydra/launcher=$LAUNCHER" "$@")
  python train.py -m "${common[@]}" norm=dyt "norm.alpha_init=$ALPHAS" &
  python train.py -m "${common[@]}" "norm=$REFS" &
  wait
}

start=$(date +%s)
if [[ $LAUNCHER == slurm ]]; then
  sweep "$WIDTHS" "$LRS" "$@"            # everything at once; SLURM queues it
else
  for width in ${WIDTHS//,/ }; do
    for lr in ${LRS//,/ }; do
      sweep "$width" "$lr" "$@"
    done
  done
fi
echo "sweep wall time: $(($(date +%s) - start)) s on $(nproc) cores"

python - "$OUT" <<'PY'
import sys
from pathlib import Path

from dyt.results.runs import find_runs
from dyt.results.sweeps import alpha_table, plot_alpha_curves, plot_width_alpha

out = sys.argv[1]
runs = [r for r in find_runs("runs/sweeps") if r.experiment == "sweeps/alpha_init_small_width"]
lines = ["# alpha_init below width 1024 (scripts/analysis/alpha_init_study.sh)\n"]
for lr in sorted({r.config["optim"]["lr"] for r in runs}):
    some = [r for r in runs if r.config["optim"]["lr"] == lr]
    lines += [f"## lr {lr:g}\n", alpha_table(some), alpha_table(some, "val/loss", 3)]
    plot_alpha_curves(some, f"{out}_curves_lr{lr:g}.png")
plot_width_alpha(runs, f"{out}_gap.png")
Path(f"{out}.md").write_text("\n".join(lines))
print(f"wrote {out}.md and {out}_*.png")
PY
