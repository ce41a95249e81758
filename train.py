"""Train any task of the paper with any norm.

    python train.py                                   # CPU quickstart: small ViT + DyT on digits
    python train.py model=vit_b norm=dyt data=imagenet data.root=/path/to/imagenet
    python train.py experiment=paper/vit_b_in1k norm=layernorm
    python train.py -m norm=layernorm,dyt             # sweep; add hydra/launcher=slurm for a cluster
    python train.py --cfg job                         # print the resolved config

The run dir (``run_dir``, default ``runs/<experiment>/<norm>/seed<k>``) is deterministic: the same
command again resumes from its last checkpoint.
"""

import sys

import hydra
from omegaconf import DictConfig

from dyt.cli import train
from dyt.preflight import preflight


@hydra.main(config_path="configs", config_name="train", version_base=None)
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    sys.argv[1:] = preflight("train", sys.argv[1:])  # one-line errors for mistyped options and keys
    main()
