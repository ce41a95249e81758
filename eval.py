"""Evaluate runs and build the paper's tables with our numbers beside the paper's.

python eval.py                                 # tables (results/*.md) and loss curves from runs/
python eval.py runs_root=/scratch/runs out_dir=results
python eval.py run=runs/quickstart/dyt/seed0   # re-evaluate a run dir or checkpoint; updates results.json
"""

import sys

import hydra
from omegaconf import DictConfig

from dyt.cli import evaluate
from dyt.preflight import preflight


@hydra.main(config_path="configs", config_name="eval", version_base=None)
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    sys.argv[1:] = preflight("eval", sys.argv[1:])  # one-line errors for mistyped options and keys
    main()
