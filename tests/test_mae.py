"""MAE (models/mae.py): parity with Hugging Face ViTMAEForPreTraining, every norm, sizes.

Specification:
- with ``norm=layernorm``, the same weights and the same noise, mask, loss and reconstruction equal
  ``ViTMAEForPreTraining`` within 1e-5 (fp32), with and without ``norm_pix_loss``; weights convert
  both ways without loss;
- the fixed position tables are MAE's (= Hugging Face's, column half first);
- mae_vit_b / mae_vit_l have Hugging Face's parameter count (ours keeps the fixed tables as buffers);
- every norm builds the digits preset, which trains (forward + backward), with the six documented sites;
- masking removes ``L - int(L * (1 - mask_ratio))`` patches per image, the same ones for the same noise.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose as compose_config
from hydra import initialize_config_dir
from omegaconf import OmegaConf
from transformers import ViTMAEConfig, ViTMAEForPreTraining
from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

import models
from dyt.engine import Trainer, load_checkpoint
from dyt.nn import DyT, norm_names
from dyt.tasks import build_task
from dyt.tasks.mae import mae_loss, reconstruction_figure
from dyt.weights import load_init_weights
from models.mae import MaskedAutoencoder, mae_from_hf, mae_to_hf, sincos_pos_embed
from tests.test_vision_models import plain

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = dict(
    img_size=32,
    patch_size=8,
    embed_dim=32,
    depth=2,
    num_heads=2,
    decoder_embed_dim=16,
    decoder_depth=2,
    decoder_num_heads=2,
)


def hf_config(norm_pix_loss: bool, **sizes) -> ViTMAEConfig:
    s = {**TINY, **sizes}
    return ViTMAEConfig(
        image_size=s["img_size"],
        patch_size=s["patch_size"],
        num_channels=3,
        hidden_size=s["embed_dim"],
        num_hidden_layers=s["depth"],
        num_attention_heads=s["num_heads"],
        intermediate_size=4 * s["embed_dim"],
        decoder_hidden_size=s["decoder_embed_dim"],
        decoder_num_hidden_layers=s["decoder_depth"],
        decoder_num_attention_heads=s["decoder_num_heads"],
        decoder_intermediate_size=4 * s["decoder_embed_dim"],
        layer_norm_eps=1e-6,  # MAE's (timm's) eps; Hugging Face's default is 1e-12
        mask_ratio=0.75,
        norm_pix_loss=norm_pix_loss,
    )


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_equals_hugging_face_vitmae_with_the_same_weights_and_noise(norm_pix_loss):
    torch.manual_seed(0)
    ours = MaskedAutoencoder("layernorm", norm_pix_loss=norm_pix_loss, **TINY).eval()
    theirs = ViTMAEForPreTraining(hf_config(norm_pix_loss)).eval()
    theirs.load_state_dict(mae_to_hf(ours.state_dict()), strict=True)
    imgs, noise = torch.randn(3, 3, 32, 32), torch.rand(3, 16)
    pred, mask = ours(imgs, noise=noise)
    loss = mae_loss(ours, imgs, pred, mask)
    out = theirs(pixel_values=imgs, noise=noise)
    assert torch.equal(mask, out.mask)
    assert torch.allclose(pred, out.logits, atol=1e-5, rtol=0)
    assert abs(loss.item() - out.loss.item()) < 1e-5


def test_weights_convert_both_ways():
    ours = MaskedAutoencoder("layernorm", **TINY)
    back = mae_from_hf(mae_to_hf(ours.state_dict()))
    assert back.keys() == ours.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())
    # and a Hugging Face model's own weights load into ours strictly
    theirs = ViTMAEForPreTraining(hf_config(True))
    ours.load_state_dict(mae_from_hf(theirs.state_dict()), strict=True)


def test_dyt_weights_refuse_to_convert_to_hugging_face():
    with pytest.raises(KeyError, match="alpha.*only norm=layernorm"):
        mae_to_hf(MaskedAutoencoder({"name": "dyt", "impl": "eager"}, **TINY).state_dict())


def test_position_tables_are_maes():
    table = build_2d_sinusoidal_position_embedding(4, 4, 32, cls_token=True)
    mae_layout = torch.cat([table[:, 16:], table[:, :16]], dim=1)  # MAE's checkpoints: column half first
    assert torch.allclose(sincos_pos_embed(32, 4)[0], mae_layout, atol=1e-7)


@pytest.mark.parametrize(
    ("preset", "sizes"),
    [
        ("mae_vit_b", dict(embed_dim=768, depth=12, num_heads=12)),
        ("mae_vit_l", dict(embed_dim=1024, depth=24, num_heads=16)),
    ],
)
def test_preset_sizes_equal_hugging_face(preset, sizes):
    mae_sizes = dict(img_size=224, patch_size=16, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16)
    with torch.device("meta"):
        ours = models.create_model(preset, norm="layernorm")
        theirs = ViTMAEForPreTraining(hf_config(True, **mae_sizes, **sizes))
    n_ours = sum(t.numel() for t in [*ours.parameters(), *ours.buffers()])
    assert n_ours == sum(p.numel() for p in theirs.parameters())
    assert ours.mask_ratio == 0.75 and ours.norm_pix_loss


@pytest.mark.parametrize("norm", norm_names("channels_last"))
def test_every_norm_builds_and_trains(norm):
    model = models.create_model("mae_vit_digits", norm=plain(norm))
    imgs = torch.randn(4, 1, 8, 8)
    pred, mask = model(imgs)
    loss = mae_loss(model, imgs, pred, mask)
    loss.backward()
    assert pred.shape == (4, 16, 4) and mask.shape == (4, 16)
    assert torch.isfinite(loss) and model.cls_token.grad is not None


def test_norm_sites_are_named_for_encoder_and_decoder():
    decoder = {f"decoder_{s}": {"alpha_init": 0.5 + 0.1 * i} for i, s in enumerate(["attn", "ffn", "final"])}
    cfg = {"name": "dyt", "impl": "eager", "sites": {"attn": {"alpha_init": 0.1}, **decoder}}
    model = models.create_model("mae_vit_digits", norm=cfg)
    assert isinstance(model.norm, DyT)
    assert model.blocks[0].norm1.alpha.item() == pytest.approx(0.1)
    assert model.decoder_blocks[1].norm1.alpha.item() == pytest.approx(0.5)
    assert model.decoder_blocks[0].norm2.alpha.item() == pytest.approx(0.6)
    assert model.decoder_norm.alpha.item() == pytest.approx(0.7)
    n_dyt = sum(isinstance(m, DyT) for m in model.modules())
    assert n_dyt == 2 * len(model.blocks) + 1 + 2 * len(model.decoder_blocks) + 1
    with pytest.raises(ValueError, match="decoder_typo"):
        models.create_model("mae_vit_digits", norm={"name": "dyt", "sites": {"decoder_typo": {}}})


def test_masking_keeps_a_quarter_and_follows_the_noise():
    model = models.create_model("mae_vit_digits", norm="layernorm")
    noise = torch.rand(5, 16)
    _, mask = model(torch.randn(5, 1, 8, 8), noise=noise)
    assert (mask.sum(1) == 16 - int(16 * 0.25)).all()
    # the removed patches are those with the largest noise
    assert torch.equal(mask.bool(), noise >= noise.sort(dim=1).values[:, 4:5])
    assert torch.equal(model.unpatchify(model.patchify(x := torch.randn(2, 1, 8, 8))), x)


# ---- fine-tuning from a pretraining run ------------------------------------------------------------


def test_finetune_takes_the_encoder_of_a_mae_run(tmp_path):
    """init_from with the recipes' ignore list: every encoder weight loads (at another image size, the
    position table resized); the decoder is left out; head and fc_norm keep their fresh init."""
    mae = models.create_model("mae_vit_digits", norm="dyt")
    torch.save(mae.state_dict(), tmp_path / "mae.pt")
    vit = models.create_model("vit_digits", norm="dyt", num_classes=10, global_pool="avg", img_size=12)
    report = load_init_weights(vit, {"source": str(tmp_path / "mae.pt"), "ignore": ["head.*", "fc_norm.*"]})
    assert sorted(report.fresh["ignore"]) == [
        "fc_norm.alpha",
        "fc_norm.bias",
        "fc_norm.weight",
        "head.bias",
        "head.weight",
    ]
    assert report.interpolated == {"pos_embed": [[1, 17, 64], [1, 37, 64]]}
    assert torch.equal(vit.blocks[3].norm2.alpha, mae.blocks[3].norm2.alpha)
    assert torch.equal(vit.pos_embed[:, :1], mae.pos_embed[:, :1])  # the class token's position is kept


def test_layer_decay_scales_the_lr_by_depth():
    cfg = compose("experiment=mae_digits_finetune", "norm=layernorm")
    task = build_task(cfg)
    model = task.build_model()
    groups = task.param_groups(model, 0.05)
    scale = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(scale) == len(named)  # every parameter once
    d, top = cfg.task.layer_decay, len(model.blocks) + 1
    assert scale[id(named["head.weight"])] == (1.0, 0.05)
    assert scale[id(named["fc_norm.weight"])] == (1.0, 0.0)
    assert scale[id(named["blocks.3.attn.qkv.weight"])] == (d ** (top - 4), 0.05)
    assert scale[id(named["blocks.0.mlp.fc1.bias"])] == (d ** (top - 1), 0.0)
    assert scale[id(named["patch_embed.proj.weight"])] == (d**top, 0.05)
    assert scale[id(named["pos_embed"])] == (d**top, 0.0)  # no_weight_decay()


# ---- recipes ---------------------------------------------------------------------------------------

MAE_PRETRAIN = {
    "task._target_": "dyt.tasks.mae.MAETask",
    "model.mask_ratio": 0.75,  # MAE PRETRAIN.md
    "model.norm_pix_loss": True,
    "optim.lr": 1.5e-4,  # --blr
    "optim.lr_batch_size": 256,
    "optim.betas": [0.9, 0.95],
    "optim.weight_decay": 0.05,
    "optim.schedule.name": "cosine",
    "optim.schedule.warmup_epochs": 40,
    "optim.schedule.min_lr": 0.0,
    "task.crop_scale": [0.2, 1.0],
    "data.name": "imagenet",
    "data.img_size": 224,
    "trainer.epochs": 800,
    "trainer.global_batch": 4096,
    "trainer.clip_grad": None,
    "trainer.precision": "fp16",
}
FINETUNE = {
    "task._target_": "dyt.tasks.classification.ClassificationTask",
    "optim.lr_batch_size": 256,  # MAE FINETUNE.md / main_finetune.py
    "optim.betas": [0.9, 0.999],
    "optim.weight_decay": 0.05,
    "optim.schedule.warmup_epochs": 5,
    "optim.schedule.min_lr": 1e-6,
    "task.mixup": 0.8,
    "task.cutmix": 1.0,
    "task.label_smoothing": 0.1,
    "data.auto_augment": "rand-m9-mstd0.5-inc1",
    "data.color_jitter": None,
    "data.reprob": 0.25,
    "data.crop_pct": 0.875,
    "model.global_pool": "avg",
    "trainer.global_batch": 1024,
    "trainer.clip_grad": None,
    "trainer.ema_decay": None,
}
RECIPES = {
    "paper/mae_vit_b_pretrain": {**MAE_PRETRAIN, "model.name": "mae_vit_b"},
    "paper/mae_vit_l_pretrain": {**MAE_PRETRAIN, "model.name": "mae_vit_l"},
    "paper/mae_vit_b_finetune": {
        **FINETUNE,
        "model.name": "vit_b",
        "optim.lr": 5e-4,
        "task.layer_decay": 0.65,
        "model.drop_path_rate": 0.1,
        "trainer.epochs": 100,
        "paper_ref": {"table": "table2", "row": "mae_vit_b"},
    },
    "paper/mae_vit_l_finetune": {
        **FINETUNE,
        "model.name": "vit_l",
        "optim.lr": 1e-3,
        "task.layer_decay": 0.75,
        "model.drop_path_rate": 0.2,
        "trainer.epochs": 50,
        "paper_ref": {"table": "table2", "row": "mae_vit_l"},
    },
}


def compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose_config("train", overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return cfg


def check_recipe(experiment: str, expected: dict) -> None:
    """Every listed value, the run dir of the pretraining stage by norm and seed, and a meta build."""
    cfg = compose(f"experiment={experiment}", "norm=dyt", "seed=3")
    for key, value in expected.items():
        got = OmegaConf.select(cfg, key)
        got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
        assert got == value, f"{experiment}: {key} is {got!r}, the recipe says {value!r}"
    if "finetune" in experiment:  # stage 1 of the same norm and seed; a missing one names its command
        pretrain = experiment.replace("finetune", "pretrain")
        assert cfg.init_from.source == f"runs/{pretrain}/dyt/seed3"
        assert cfg.init_from.made_by.startswith(f"python train.py experiment={pretrain} norm=dyt seed=3")
        assert list(cfg.init_from.ignore) == ["head.*", "fc_norm.*"]
    with torch.device("meta"):
        model = build_task(cfg).build_model()
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("experiment", sorted(RECIPES))
def test_recipe_values(experiment):
    check_recipe(experiment, RECIPES[experiment])


# ---- training ----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("one_thread")
def test_tiny_mae_run_lowers_the_reconstruction_loss(tmp_path):
    """mae_digits shrunk to seconds (one narrow block each side, 179 training digits, 20 steps): the
    held-out reconstruction loss falls below that of the untrained model, and eval.py's figure is drawn."""
    cfg = compose(
        "experiment=mae_digits",
        "norm=dyt",
        "norm.impl=eager",
        f"run_dir={tmp_path / 'run'}",
        "+model.depth=1",
        "+model.embed_dim=32",
        "+model.decoder_depth=1",
        "data.test_fraction=0.9",
        "trainer.device=cpu",
        "trainer.epochs=4",
        "trainer.global_batch=32",
        "trainer.eval_every_epochs=4",
        "trainer.progress=off",
    )
    task = build_task(cfg)
    torch.manual_seed(0)
    untrained = task.evaluate(task.build_model().eval(), torch.device("cpu"))["val/loss"]
    results = Trainer(cfg).fit(task)
    assert results["val/loss"] < 0.9 * untrained
    model = task.build_model()
    model.load_state_dict(load_checkpoint(tmp_path / "run")["model"])
    reconstruction_figure(model, task.eval_data(), tmp_path / "rec.png", torch.device("cpu"), n=4)
    assert (tmp_path / "rec.png").stat().st_size > 0
