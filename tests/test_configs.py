"""Every recipe composes, names valid choices, and builds its model (on the meta device for big ones)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dyt.tasks import build_task

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EXPERIMENTS = sorted(
    str(p.relative_to(CONFIGS / "experiment").with_suffix(""))
    for p in (CONFIGS / "experiment").rglob("*.yaml")
    if "base" not in p.relative_to(CONFIGS / "experiment").parts
)
NORMS = sorted(p.stem for p in (CONFIGS / "norm").glob("*.yaml"))


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose("train", overrides=list(overrides))


def test_there_are_paper_recipes():
    assert {"paper/vit_b_in1k", "paper/vit_l_in1k", "paper/convnext_b_in1k", "paper/convnext_l_in1k"} <= set(
        EXPERIMENTS
    )


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("norm", ["layernorm", "dyt"])
def test_experiment_composes_and_builds_on_meta(experiment, norm):
    cfg = _compose(f"experiment={experiment}", f"norm={norm}")
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert cfg.norm.name == norm
    assert norm in cfg.run_dir and str(cfg.experiment_name) in cfg.run_dir
    task = build_task(cfg)
    with torch.device("meta"):
        model = task.build_model()
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("norm", NORMS)
def test_every_norm_config_builds_the_quickstart_model(norm):
    cfg = _compose(f"norm={norm}")
    if norm == "batchnorm":  # ConvNets only (paper Table 16): the quickstart ViT refuses it, saying why
        with pytest.raises(ValueError, match="'batchnorm' is built only at channels-first sites"):
            build_task(cfg).build_model()
        return
    model = build_task(cfg).build_model()
    x = torch.randn(2, cfg.data.in_chans, cfg.data.img_size, cfg.data.img_size)
    assert model(x).shape == (2, cfg.data.num_classes)


def test_table1_recipes_match_the_paper():
    """paper App. A, ImageNet row: the numbers that make the Table 1 recipe."""
    expected_drop_path = {"vit_b": 0.1, "vit_l": 0.4, "convnext_b": 0.5, "convnext_l": 0.5}
    for model, drop_path in expected_drop_path.items():
        cfg = _compose(f"experiment=paper/{model}_in1k", "norm=dyt")
        assert cfg.model.name == model and cfg.model.drop_path_rate == drop_path
        assert (cfg.optim.lr, cfg.optim.lr_batch_size, cfg.optim.weight_decay) == (4e-3, 4096, 0.05)
        assert tuple(cfg.optim.betas) == ((0.9, 0.95) if model == "vit_l" else (0.9, 0.999))
        assert cfg.optim.schedule.warmup_epochs == 20 and cfg.optim.schedule.min_lr == 1e-6
        assert (cfg.trainer.epochs, cfg.trainer.ema_decay, cfg.trainer.clip_grad) == (300, 0.9999, None)
        assert (cfg.trainer.global_batch, cfg.trainer.micro_batch) == (4096, 64), "64 per GPU on 64 GPUs"
        assert (cfg.task.mixup, cfg.task.cutmix, cfg.task.label_smoothing) == (0.8, 1.0, 0.1)
        assert (cfg.data.auto_augment, cfg.data.reprob, cfg.data.color_jitter) == ("rand-m9-mstd0.5-inc1", 0.25, 0.4)
        if model.startswith("vit"):
            assert cfg.model.global_pool == "avg"
        assert cfg.paper_ref.table == "table1" and cfg.paper_ref.row == model


def test_unknown_choices_fail_listing_the_valid_ones():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="dyt"):
        _compose("norm=groupnorm")
    with pytest.raises(MissingConfigException, match="vit_b"):
        _compose("model=vit_huge")


def test_unknown_norm_option_fails_at_build_time():
    cfg = _compose("norm=dyt", "+norm.alpha=0.3")
    with pytest.raises(ValueError, match="valid options are"):
        build_task(cfg).build_model()


def test_ablation_norms_get_their_own_run_dir():
    assert "/dyt_hardtanh/" in _compose("norm=dyt_hardtanh").run_dir
    assert _compose("norm=dyt_hardtanh").norm.squash == "hardtanh"


PAPER_RECIPES = [e for e in EXPERIMENTS if e.startswith("paper/")]


@pytest.mark.parametrize("experiment", PAPER_RECIPES)
def test_paper_recipes_keep_the_papers_alpha_and_embedding(experiment):
    """Calibration, log-form alpha and the unit-scale embedding are ours, opt-in: no paper recipe uses them."""
    cfg = _compose(f"experiment={experiment}", "norm=dyt")
    OmegaConf.resolve(cfg)
    norm = cfg.norm
    for opts in [norm, *(norm.get("sites") or {}).values()]:
        assert opts.get("alpha_init") != "calibrate" and opts.get("alpha_param") in (None, "linear")
    assert cfg.model.get("embed_scale") in (None, "auto", "none", "sqrt_d")


def test_every_row_of_tables_10_to_13_has_a_recipe_or_a_stated_reason():
    """paper Tables 10-13 (App. B, Sec. 7): each row is named by some recipe's paper_ref, or borrows
    another table's recipes (same_recipes_as, which must have them), or results/paper.yaml says why not."""
    import yaml

    paper = yaml.safe_load((CONFIGS.parent / "results" / "paper.yaml").read_text())
    refs = set()
    for path in (CONFIGS / "experiment").rglob("*.yaml"):
        ref = (yaml.safe_load(path.read_text()) or {}).get("paper_ref")
        if ref:
            refs.add((ref["table"], ref["row"]))
    for table in ("table10", "table11", "table12", "table13"):
        for row, spec in paper[table]["rows"].items():
            borrowed = tuple(spec.get("same_recipes_as", "").split(".")) if "same_recipes_as" in spec else None
            reason = spec.get("no_recipe") or paper[table].get("no_recipe")
            assert (table, row) in refs or borrowed in refs or reason, f"{table}.{row}"
            assert not ((table, row) in refs and spec.get("no_recipe")), f"{table}.{row} has a recipe"
    # the rows the paper tunes have their recipes (Table 12: DINO B/16 LN 1e-3, w2v2 Base DyT 6e-4;
    # Table 13: MAE ViT-B 1.0, w2v2 Large 1.0), and Table 10 has one per size at 30B tokens
    assert {("table12", "dino_vit_b16"), ("table12", "w2v2_base"), ("table13", "mae_vit_b")} <= refs
    assert {("table13", "w2v2_large"), ("table12", "dit_b4"), ("table13", "dit_xl2")} <= refs
    for size in ("7b", "13b", "34b", "70b"):
        cfg = _compose(f"experiment=paper/llama2_{size}_table10")
        assert cfg.paper_ref.table == "table10" and cfg.norm.name == "dyt"
        tokens = cfg.trainer.max_steps * cfg.trainer.global_batch * cfg.data.seq_len
        assert tokens >= 30e9 > tokens - cfg.trainer.global_batch * cfg.data.seq_len  # paper Sec. 7.2: 30B
        assert cfg.optim.schedule.warmup_steps == min(2000, cfg.trainer.max_steps // 20)


def test_table12_13_sweeps_hold_the_papers_tuned_values():
    """The grids contain the original and the tuned value of paper Tables 12 and 13."""
    import yaml

    def grid(name, key):
        params = yaml.safe_load((CONFIGS / "experiment" / "paper" / f"{name}.yaml").read_text())["hydra"]
        return [float(v) for v in str(params["sweeper"]["params"][key]).split(",")]

    assert {5e-4, 6e-4} <= set(grid("wav2vec2_base_table12", "optim.lr"))
    assert {7.5e-4, 1e-3} <= set(grid("dino_vit_b16_table12_pretrain", "optim.lr"))
    assert set(grid("dino_vit_b16_table12_pretrain", "optim.lr")) == set(
        grid("dino_vit_b16_table12_finetune", "pretrain_lr")
    )
    for model in ("dit_b4", "dit_l4", "dit_xl2"):
        assert grid(f"{model}_table12", "optim.lr") == [1e-4, 2e-4, 4e-4]  # paper App. A's DiT search
    for name in ("wav2vec2_large_table13", "mae_vit_b_table13_pretrain", "mae_vit_b_table13_finetune"):
        assert {0.5, 1.0} <= set(grid(name, "norm.alpha_init"))
    ft = _compose("experiment=paper/mae_vit_b_table13_finetune", "norm.alpha_init=1.0")
    assert ft.init_from.source == "runs/paper/mae_vit_b_table13_pretrain+norm.alpha_init=1.0/dyt/seed0"
    assert _compose("experiment=paper/mae_vit_b_table13_pretrain", "norm.alpha_init=1.0").run_dir == ft.init_from.source
    ft = _compose("experiment=paper/dino_vit_b16_table12_finetune", "norm=layernorm", "pretrain_lr=1e-3")
    pre = _compose("experiment=paper/dino_vit_b16_table12_pretrain", "norm=layernorm", "optim.lr=1e-3")
    assert (
        ft.init_from.source == pre.run_dir == "runs/paper/dino_vit_b16_table12_pretrain+optim.lr=0.001/layernorm/seed0"
    )


def test_readme_reproduction_table_lists_every_paper_table_with_a_command():
    """README "Reproducing the paper": a row for each of Tables 1-16, and every experiment it names exists."""
    import re

    text = (CONFIGS.parent / "README.md").read_text()
    section = text[text.index("## Reproducing the paper") :]
    rows = [
        line for line in section[: section.index("\n\n", section.index("| paper |"))].splitlines() if line[:2] == "| "
    ]
    named = set()
    for row in rows[1:]:
        first = row.split("|")[1]
        named |= {int(n) for n in re.findall(r"\d+", first.split(":")[0])}
    assert named == set(range(1, 17))
    for experiment in re.findall(r"experiment=(paper/[\w]+)", "\n".join(rows)):
        assert (CONFIGS / "experiment" / f"{experiment}.yaml").exists(), experiment
