"""Paper Table 16's ConvNets (models/torchvision_cnn.py): torchvision's ResNet-50 and VGG19 with their
BatchNorms from the norm factory, ``norm=batchnorm`` being the baseline; and the recipes
(configs/experiment/paper/table16_*.yaml: torchvision's reference recipe). tests/test_model_contract.py
runs ResNet-50 forward and backward with every norm."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import models
from dyt.nn import norm_names
from dyt.nn.pointwise import DyT

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _bn_names(reference: nn.Module) -> list[str]:
    return sorted(n for n, m in reference.named_modules() if isinstance(m, nn.BatchNorm2d))


def test_dyt_replaces_every_batchnorm_in_place_and_keeps_torchvisions_parameters():
    with torch.device("meta"):
        for arch, reference, n_bn in (
            ("resnet50", torchvision.models.resnet50(num_classes=10), 53),
            ("vgg19", torchvision.models.vgg19_bn(num_classes=10), 16),
        ):
            model = models.create_model(arch, norm="dyt", num_classes=10)
            dyts = {n.removeprefix("net."): m for n, m in model.named_modules() if isinstance(m, DyT)}
            assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), arch
            assert sorted(dyts) == _bn_names(reference) and len(dyts) == n_bn, f"{arch}: one DyT per BatchNorm"
            assert all(m.layout == "channels_first" for m in dyts.values())
            params = sum(p.numel() for p in reference.parameters())
            assert sum(p.numel() for p in model.parameters()) == params + n_bn, "BN's weight/bias, plus one alpha"
            assert not any(m.inplace for m in model.modules() if isinstance(m, nn.ReLU)), "fused DyT output is a view"
    sites = {r["site"]: r["count"] for r in models.create_model("resnet50", norm="dyt").resolved_options()["norms"]}
    assert sites == {"stem": 1, "block": 48, "downsample": 4}


def test_batchnorm_baseline_is_torchvisions_model(one_thread):
    """norm=batchnorm (the baseline column) rebuilds torchvision's ResNet-50: the same state dict, and with
    its weights the same outputs in training (batch statistics) and evaluation (running statistics)."""
    torch.manual_seed(0)
    model = models.create_model("resnet50", norm="batchnorm", num_classes=10)
    reference = torchvision.models.resnet50(num_classes=10)
    assert {k: v.shape for k, v in model.net.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }
    sites = {r["site"]: (r["class"], r["eps"], r["momentum"], r["count"]) for r in model.resolved_options()["norms"]}
    assert sites == {
        "stem": ("BatchNorm", 1e-5, 0.1, 1),
        "block": ("BatchNorm", 1e-5, 0.1, 48),
        "downsample": ("BatchNorm", 1e-5, 0.1, 4),
    }
    model.net.load_state_dict(reference.state_dict())
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(model(x), reference(x))  # batch statistics, running stats updated alike
    model.eval(), reference.eval()
    torch.testing.assert_close(model(x), reference(x))


def test_batchnorm_is_refused_at_channels_last_sites_naming_the_layout():
    with pytest.raises(ValueError, match="'batchnorm' is built only at channels-first sites.*channels_last norm"):
        models.create_model("vit_test", norm="batchnorm")
    assert "batchnorm" in norm_names() and "batchnorm" not in norm_names("channels_last")


# ---- the recipes (paper App. D: torchvision's recipe, the same for BatchNorm and DyT) ---------------------


def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir

    import dyt.cli  # noqa: F401  (registers the run-dir resolvers)

    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("row", ["resnet50", "vgg19"])
def test_table16_recipes_are_torchvisions_reference_recipe(row):
    """references/classification/train.py defaults on 8 GPUs x 32 images (its README), for both norms."""
    for norm in ("batchnorm", "dyt"):
        cfg = _compose(f"experiment=paper/table16_{row}", f"norm={norm}")
        assert cfg.model.name == row and cfg.norm.name == norm and cfg.run_dir.endswith(f"table16_{row}/{norm}/seed0")
        assert dict(cfg.paper_ref) == {"table": "table16", "row": row}
        o = cfg.optim
        assert (o.name, o.lr, o.lr_batch_size, o.momentum, o.nesterov, o.weight_decay) == (
            "sgd",
            0.1,
            256,
            0.9,
            False,
            1e-4,
        )
        assert (o.betas, o.eps, dict(o.schedules)) == (None, None, {})
        s = o.schedule
        assert (s.name, s.step_size_epochs, s.step_size_steps, s.decay) == ("step", 30, None, 0.1)
        assert (s.warmup_epochs, s.warmup_steps, s.min_lr, s.min_lr_ratio) == (0, None, 0.0, None)
        t = cfg.task
        assert (t.mixup, t.cutmix, t.label_smoothing, t.layer_decay, t.decay_all_params) == (0.0, 0.0, 0.0, None, True)
        d = cfg.data
        assert (d.name, d.img_size, d.auto_augment, d.color_jitter, d.reprob) == ("imagenet", 224, None, None, 0.0)
        assert (d.interpolation, d.crop_pct) == ("bilinear", 0.875)
        tr = cfg.trainer
        assert (tr.epochs, tr.max_steps, tr.global_batch, tr.micro_batch) == (90, None, 256, 32)
        assert (tr.clip_grad, tr.ema_decay, tr.precision, tr.tf32, tr.num_workers) == (None, None, "fp32", True, 16)


def test_table16_transforms_are_torchvisions_presets():
    """Train: RandomResizedCrop(224, bilinear) + flip, normalized; eval: Resize(256) + CenterCrop(224)."""
    from dyt.data.images import imagenet_transform

    data = _compose("experiment=paper/table16_resnet50", "norm=dyt").data
    train, val = ([type(t).__name__ for t in imagenet_transform(data, train=flag).transforms] for flag in (True, False))
    assert train == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "MaybeToTensor", "Normalize"]
    assert val == ["Resize", "CenterCrop", "MaybeToTensor", "Normalize"]
    resize = imagenet_transform(data, train=False).transforms[0]
    assert resize.size == 256 and resize.interpolation.value == "bilinear"


def test_table16_weight_decay_covers_every_parameter_as_torchvision():
    """No --norm-weight-decay / --bias-weight-decay: --wd on BatchNorm's and DyT's weights, biases, alpha."""
    from dyt.engine.schedule import build_optimizer
    from dyt.tasks import build_task

    cfg = _compose("experiment=paper/table16_resnet50", "norm=dyt", "data.num_classes=10")
    task = build_task(cfg)
    model = models.create_model("resnet50", norm="dyt", num_classes=10)
    opt = build_optimizer(cfg.optim, task, model, peak_lr=0.1)
    assert isinstance(opt, torch.optim.SGD) and len(opt.param_groups) == 1
    group = opt.param_groups[0]
    assert len(group["params"]) == len(list(model.parameters())) and group["weight_decay"] == 1e-4
    assert (group["momentum"], group["nesterov"], group["dampening"]) == (0.9, False, 0)
