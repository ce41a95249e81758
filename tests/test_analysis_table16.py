"""Paper Table 16's ConvNets (models/torchvision_cnn.py): torchvision's ResNet-50 and VGG19 with their
BatchNorms from the norm factory, or kept (the baseline). Built on the meta device (structure only):
tests/test_model_contract.py runs ResNet-50 forward and backward with every norm."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

import models
from dyt.nn.pointwise import DyT


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


def test_batchnorm_baseline_is_torchvisions_model():
    with torch.device("meta"):
        model = models.create_model("resnet50", norm="dyt", num_classes=10, batchnorm=True)
        reference = torchvision.models.resnet50(num_classes=10)
    assert {k: v.shape for k, v in model.net.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }
    assert model.resolved_options() == {"norms": [], "batchnorm": True}
