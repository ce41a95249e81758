#!/usr/bin/env bash
# alpha_init below width 1024, a question the paper leaves open (its Table 11 starts at width 1024; its
# non-LLM default alpha_init = 0.5 comes from widths >= 768, Sec. 7): DyT over width x alpha_init x
# learning rate x seed, with the baseline norms as references, then the table and figures
# (dyt/results/sweeps.py). Two studies:
#   STUDY=vit    the quickstart ViT on scikit-learn's real 8x8 digits (experiment=sweeps/alpha_init_small_width),
#                width model.embed_dim, references LayerNorm and RMSNorm (default)
#   STUDY=llama  the CPU LLaMA on standard-library text (experiment=sweeps/llama_alpha_small_width),
#                width model.dim, reference RMSNorm
#
#   scripts/analysis/alpha_init_study.sh                           # the full ViT grid below, local processes
#   LAUNCHER=slurm scripts/analysis/alpha_init_study.sh             # one SLURM job per run
#   LAUNCHER=basic ...                                              # one run after another in this process
#   WIDTHS=64,128 ALPHAS=0.5,2.0,4.0 LRS=3e-3 SEEDS=0,1 REFS=layernorm scripts/analysis/alpha_init_study.sh
#
# Full ViT grid: 4 widths x 10 alpha_init x 3 lrs x 3 seeds = 360 DyT runs + 72 reference runs, about one
# CPU-minute each at width 64 (more at 512). Locally, each (width, lr) chunk runs its jobs in parallel
# (30 DyT + 6 reference processes): on a small machine lower the grid or use LAUNCHER=basic. Extra
# arguments are Hydra overrides for every run. What was run for results/alpha_init_small_width.md is listed there.
# Runs land in ./runs/sweeps of the directory it is started from.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"

STUDY=${STUDY:-vit}
case $STUDY in
  vit)
    EXPERIMENT=sweeps/alpha_init_small_width WIDTH_KEY=model.embed_dim
    WIDTHS=${WIDTHS:-64,128,256,512} LRS=${LRS:-1e-3,3e-3,6e-3} REFS=${REFS:-layernorm,rmsnorm}
    ALPHAS=${ALPHAS:-0.1,0.2,0.3,0.5,0.8,1.0,1.5,2.0,4.0,8.0} ;;  # above 2.0: still rising at 4.0
  llama)
    EXPERIMENT=sweeps/llama_alpha_small_width WIDTH_KEY=model.dim
    WIDTHS=${WIDTHS:-64,128,256} LRS=${LRS:-1e-3} REFS=${REFS:-rmsnorm}
    ALPHAS=${ALPHAS:-0.25,0.5,1.0,2.0,4.0} ;;
  *) echo "STUDY must be vit or llama, got '$STUDY'" >&2; exit 2 ;;
esac
SEEDS=${SEEDS:-0,1,2}
LAUNCHER=${LAUNCHER:-local}
OUT=${OUT:-results/alpha_init_small_width_${STUDY}}   # <OUT>.md and <OUT>_*.png
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}     # many small runs: one thread each

sweep() {  # sweep <widths> <lrs> [overrides...]
  local widths=$1 lrs=$2
  shift 2
  local common=(experiment=$EXPERIMENT "$WIDTH_KEY=$widths" "optim.lr=$lrs" "seed=$SEEDS" "$@")
  [[ $LAUNCHER != basic ]] && common+=("hydra/launcher=$LAUNCHER")
  if [[ $LAUNCHER == basic ]]; then  # Hydra's own launcher: sequential
    python "$ROOT/train.py" -m "${common[@]}" norm=dyt "norm.alpha_init=$ALPHAS"
    python "$ROOT/train.py" -m "${common[@]}" "norm=$REFS"
  else
    python "$ROOT/train.py" -m "${common[@]}" norm=dyt "norm.alpha_init=$ALPHAS" &
    python "$ROOT/train.py" -m "${common[@]}" "norm=$REFS" &
    wait
  fi
}

start=$(date +%s)
if [[ $LAUNCHER != local ]]; then
  sweep "$WIDTHS" "$LRS" "$@"            # everything at once; SLURM queues it, basic runs it in order
else
  for width in ${WIDTHS//,/ }; do
    for lr in ${LRS//,/ }; do
      sweep "$width" "$lr" "$@"
    done
  done
fi
echo "sweep wall time: $(($(date +%s) - start)) s on $(nproc) cores"

python - "$OUT" "$EXPERIMENT" "${REFS%%,*}" <<'PY'
import sys
from pathlib import Path

from dyt.results.runs import find_runs
from dyt.results.sweeps import alpha_table, plot_alpha_curves, plot_width_alpha

out, experiment, reference = sys.argv[1:]
runs = [r for r in find_runs("runs/sweeps") if r.experiment.split("+")[0] == experiment]
lines = [f"# alpha_init below width 1024: {experiment} (scripts/analysis/alpha_init_study.sh)\n"]
for lr in sorted({r.config["optim"]["lr"] for r in runs}):
    some = [r for r in runs if r.config["optim"]["lr"] == lr]
    tables = [alpha_table(some, "val/loss", 3)]
    if any(r.results.get("headline_metric") != "val/loss" for r in some):  # e.g. top-1 first, then the loss
        tables.insert(0, alpha_table(some))
    lines += [f"## lr {lr:g}\n", *tables]
    plot_alpha_curves(some, f"{out}_curves_lr{lr:g}.png")
plot_width_alpha(runs, f"{out}_gap.png", reference=reference)
Path(f"{out}.md").write_text("\n".join(lines))
print(f"wrote {out}.md and {out}_*.png")
PY
