#!/usr/bin/env bash
# Every check that needs a GPU, in one call (< 8 minutes), into one markdown report:
#   bash scripts/ci/gpu_check.sh [REPORT]         # default results/gpu_report.md
# Sections and their time limits: scripts/ci/gpu_check.py (its --dry-run checks the plumbing on CPU).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
exec "${PYTHON:-python}" scripts/ci/gpu_check.py "$@"
