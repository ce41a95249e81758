#!/usr/bin/env bash
# Why HyenaDNA next-base pretraining collapses under DyT (docs/analysis.md, 'DyT below the paper's scale'):
# the CPU demo's pretraining (experiment=dna_demo_hyena_pretrain, 150 steps) with LayerNorm and with DyT at
# the paper's alpha_init, calibrated, calibrated with alpha learned in log form (alpha_param=log: alpha
# changes relatively by about alpha_gain x lr per step), and the same at a 10x lower lr, with the scale
# probes every 5 steps; then the figure of the probes over training (scripts/analysis/scale_curves.py).
#
#   scripts/analysis/dna_collapse_study.sh                 # seed 0; SEEDS=0,1 for more
#   OUT=results/figures/dna_collapse scripts/analysis/dna_collapse_study.sh
#
# Runs land in ./runs/dna_collapse/<variant>/seed<k> of the directory it is started from; about 1.5
# CPU-minutes each, one after another.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
SEEDS=${SEEDS:-0}
OUT=${OUT:-results/figures/dna_collapse}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

declare -A VARIANTS=(
  [layernorm]="norm=layernorm"
  [dyt_paper]="norm=dyt"
  [dyt_calibrated]="norm=dyt norm.alpha_init=calibrate"
  [dyt_calibrated_log10]="norm=dyt norm.alpha_init=calibrate norm.alpha_param=log norm.alpha_gain=10"
  [dyt_calibrated_log10_lr3e-4]="norm=dyt norm.alpha_init=calibrate norm.alpha_param=log norm.alpha_gain=10 optim.lr=3e-4 optim.schedule.min_lr=1e-5"
)
ORDER=(layernorm dyt_paper dyt_calibrated dyt_calibrated_log10 dyt_calibrated_log10_lr3e-4)

runs=()
for seed in ${SEEDS//,/ }; do
  for variant in "${ORDER[@]}"; do
    dir=runs/dna_collapse/$variant/seed$seed
    runs+=("$dir")
    [[ -f $dir/results.json ]] && continue
    # shellcheck disable=SC2086  # the variant's overrides are separate words
    python "$ROOT/train.py" experiment=dna_demo_hyena_pretrain ${VARIANTS[$variant]} "seed=$seed" \
      trainer.probe_every_steps=5 trainer.progress=log "run_dir=$dir" "$@"
  done
done
python "$ROOT/scripts/analysis/scale_curves.py" "${runs[@]}" --out "$OUT"
