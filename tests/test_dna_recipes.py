"""Table 6 recipes: every value the paper (via Derf Table 20) and the upstream configs state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dyt.tasks import build_task

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("train", overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return cfg


def _meta_model(cfg):
    with torch.device("meta"):
        return build_task(cfg).build_model()


def test_hyenadna_pretrain_recipe():
    cfg = _compose("experiment=paper/hyenadna_pretrain")
    assert cfg.norm.name == "layernorm" and cfg.model.name == "hyenadna_small_1k"
    assert (cfg.task.objective, cfg.data.seq_len, cfg.data.rc_aug) == ("next_token", 1024, True)
    assert (cfg.optim.lr, cfg.trainer.global_batch, cfg.trainer.max_steps) == (6e-4, 1024, 10_000)
    assert (tuple(cfg.optim.betas), cfg.optim.weight_decay, cfg.trainer.clip_grad) == ((0.9, 0.95), 0.1, 1.0)
    assert (cfg.optim.schedule.warmup_steps, cfg.optim.schedule.min_lr, cfg.seed) == (1000, 1e-4, 2222)
    model = _meta_model(cfg)
    assert (model.d_model, model.n_layer, model.l_max) == (256, 4, 1026) and model.causal


def test_caduceus_pretrain_recipe():
    cfg = _compose("experiment=paper/caduceus_pretrain")
    assert cfg.norm.name == "rmsnorm" and cfg.model.name == "caduceus_ps_131k"
    assert (cfg.task.objective, cfg.task.mlm_probability) == ("mlm", 0.15)
    assert (cfg.data.seq_len, cfg.data.rc_aug) == (131_072, False)
    assert (cfg.optim.lr, cfg.trainer.global_batch, cfg.trainer.max_steps) == (8e-3, 8, 50_000)
    assert (tuple(cfg.optim.betas), cfg.optim.weight_decay, cfg.trainer.clip_grad) == ((0.9, 0.95), 0.1, 1.0)
    assert (cfg.optim.schedule.warmup_steps, cfg.optim.schedule.min_lr) == (5000, 1e-4)
    model = _meta_model(cfg)
    assert (model.d_model, model.rcps, model.causal) == (256, True, False)
    assert model.layers[0].mixer.rev is not None  # bidirectional


def test_caduceus_depth_is_the_pretraining_scripts():
    """8 layers: kuleshov-group/caduceus slurm_scripts/run_pretrain_caduceus.sh N_LAYER=8 (since commit
    5ba5bfd), the script the DyT and Derf READMEs run unchanged; the caduceus_ps_131k preset keeps the
    released checkpoint's 16 (kuleshov-group/caduceus-ps_seqlen-131k_d_model-256_n_layer-16). Stage 2
    builds the same depth, so the stage-1 weights load."""
    pretrain = _meta_model(_compose("experiment=paper/caduceus_pretrain"))
    assert len(pretrain.layers) == pretrain.n_layer == 8
    assert sum(p.numel() for p in pretrain.parameters()) == 3_864_832
    gb = _meta_model(_compose("experiment=paper/caduceus_gb", "data.dataset=human_ensembl_regulatory"))
    assert gb.n_layer == 8
    header = (CONFIGS / "experiment" / "paper" / "caduceus_pretrain.yaml").read_text()
    assert "N_LAYER=8" in header and "n_layer-16" in header  # the evidence stays with the value
    with torch.device("meta"):
        import models

        released = models.create_model("caduceus_ps_131k", norm="rmsnorm")
    assert released.n_layer == 16 and sum(p.numel() for p in released.parameters()) == 7_725_312


@pytest.mark.parametrize(
    "row, lr, pretrain", [("hyenadna", 6e-4, "hyenadna_pretrain"), ("caduceus", 2e-3, "caduceus_pretrain")]
)
def test_genomic_benchmark_recipes(row, lr, pretrain, norm="dyt"):
    cfg = _compose(f"experiment=paper/{row}_gb", f"norm={norm}", "data.dataset=human_ensembl_regulatory")
    assert cfg.paper_ref == {"table": "table6", "row": row, "part": "human_ensembl_regulatory"}
    assert cfg.experiment_name == f"paper/{row}_gb/human_ensembl_regulatory"
    assert cfg.init_from.source == f"runs/paper/{pretrain}/{norm}/seed2222"  # the same norm's pretraining run
    assert cfg.init_from.made_by == f"python train.py experiment=paper/{pretrain} norm={norm}"
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.schedule.min_lr_ratio) == (lr, 0.1, 0.1)
    assert (cfg.trainer.epochs, cfg.trainer.global_batch, cfg.trainer.clip_grad, cfg.task.rc_aug) == (
        10,
        128,
        1.0,
        False,
    )
    model = _meta_model(cfg)
    assert model.num_classes == 3  # human_ensembl_regulatory
    pretrained = _meta_model(_compose(f"experiment=paper/{pretrain}", f"norm={norm}"))
    kept = model.init_from_state_dict(pretrained.state_dict(), "dyt")
    assert {k for k, v in kept.items() if v is not None} == {k for k in model.state_dict() if not k.startswith("head.")}
    assert set(kept) == set(model.state_dict())  # the new head is named, as None: it keeps its init


def test_table6_paper_numbers():
    import yaml

    table = yaml.safe_load((CONFIGS.parent / "results" / "paper.yaml").read_text())["table6"]
    assert table["metric"] == "val/acc" and table["higher_is_better"]
    assert table["rows"]["hyenadna"]["values"] == {"layernorm": 85.2, "dyt": 85.2, "derf": 85.7, "rmsnorm": 85.2}
    assert table["rows"]["caduceus"]["values"] == {"rmsnorm": 86.9, "dyt": 86.9, "derf": 87.3, "layernorm": 87.0}
