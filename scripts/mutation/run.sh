#!/usr/bin/env bash
# Mutation testing of the core modules with mutmut 3 (`pip install mutmut`): each module is mutated alone and
# judged only by the fast test files that cover it, so a surviving mutant points at a gap in those tests.
# Not part of CI (minutes per module). Usage, from the repository root with the venv active:
#   scripts/mutation/run.sh                       # every module below
#   scripts/mutation/run.sh schedule sampler      # only these (names as in MODULES)
# Work happens in a scratch copy ($MUTATION_DIR, default /tmp/dyt-mutation/<name>); the tracked tree is not
# touched. Per module it prints mutmut's summary and writes <scratch>/<name>/results.txt (`mutmut results --all`).
set -euo pipefail

# name | module | fast test files that cover it (slow tests deselected with -m "not slow")
MODULES=(
  "schedule|dyt/engine/schedule.py|tests/test_engine_units.py"
  "sampler|dyt/engine/sampler.py|tests/test_engine_units.py"
  "checkpoint|dyt/engine/checkpoint.py|tests/test_trust_checkpoint.py tests/test_engine_train.py tests/test_checkpoint_units.py"
  "manifest|dyt/engine/manifest.py|tests/test_trust_checkpoint.py tests/test_checkpoint_units.py"
  "checkpoint_dir|dyt/engine/checkpoint_dir.py|tests/test_trust_checkpoint.py tests/test_checkpoint_units.py"
  "rng|dyt/engine/rng.py|tests/test_checkpoint_units.py"
  "norms|dyt/nn/norms.py|tests/test_norms.py"
  "pointwise|dyt/nn/pointwise.py|tests/test_norms.py tests/test_fused.py"
  "factory|dyt/nn/factory.py|tests/test_norms.py tests/test_model_contract.py"
  "fid|dyt/metrics/fid.py|tests/test_fid.py"
  "features|dyt/metrics/features.py|tests/test_fid.py tests/test_inception_reference.py"
  "lm_eval|dyt/metrics/lm_eval.py|tests/test_lm_eval.py"
  "tables|dyt/results/tables.py|tests/test_results.py"
  "runs|dyt/results/runs.py|tests/test_results.py"
)

root=$(git rev-parse --show-toplevel)
scratch=${MUTATION_DIR:-/tmp/dyt-mutation}
command -v mutmut >/dev/null || { echo "mutmut is not installed: pip install 'mutmut>=3.8'" >&2; exit 2; }
wanted=("$@")

for entry in "${MODULES[@]}"; do
  IFS='|' read -r name module tests <<<"$entry"
  if ((${#wanted[@]})) && [[ " ${wanted[*]} " != *" $name "* ]]; then continue; fi
  work=$scratch/$name
  rm -rf "$work" && mkdir -p "$work"
  # tracked files only (no runs, data or caches), as committed plus local edits
  git -C "$root" ls-files -z | (cd "$root" && xargs -0 cp --parents -t "$work")
  {
    echo "[mutmut]"
    echo "source_paths = dyt"
    echo "only_mutate = $module"
    echo "also_copy ="
    # everything else the tests read (models, configs, scripts, entry points)
    git -C "$root" ls-files | cut -d/ -f1 | sort -u | grep -vx dyt | sed 's/^/    /'
    echo "pytest_add_cli_args ="
    printf '    %s\n' -p no:cacheprovider -m "not slow" -q
    echo "pytest_add_cli_args_test_selection ="
    for t in $tests; do echo "    $t"; done
    echo "process_isolation = forkserver"
  } >"$work/setup.cfg"
  echo "== $name: mutating $module, judged by $tests"
  (cd "$work" && env PYTHONPATH= OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled \
    mutmut run --max-children "${MUTATION_JOBS:-2}" && mutmut results --all true >results.txt) || echo "!! $name: mutmut failed (see above)"
done
