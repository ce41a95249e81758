"""torchvision's ResNet-50 and VGG19 (with BatchNorm), for the paper's negative result on BatchNorm.

Paper App. D, Table 16: replacing BatchNorm with DyT in classic ConvNets hurts (ResNet-50 top-1 76.2% ->
68.9%, VGG19 72.7% -> 71.0%, torchvision's recipes, the same hyperparameters for both); the paper's
hypothesis is that BatchNorm follows every weight layer there, while LayerNorm in a Transformer follows
several. The architectures are torchvision's (``torchvision.models.resnet50``, ``vgg19_bn``) with every
BatchNorm replaced by the norm factory's norm at its site (``TorchvisionCNN.NORM_SITES``), channels-first.
``norm=batchnorm`` builds BatchNorm there again (``dyt.nn.BatchNorm``, the same layer as torchvision's,
with the same names and init): the baseline column, run with the same recipe as DyT
(``configs/experiment/paper/table16_{resnet50,vgg19}.yaml``). Weights are initialised as torchvision does
(``reset_parameters``). To swap the BatchNorms of an existing ConvNet instead, ``dyt.convert(model, "dyt",
batchnorm=True)`` opts in and warns with the paper's result.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet50 as tv_resnet50
from torchvision.models import vgg19_bn as tv_vgg19_bn
from torchvision.models.resnet import Bottleneck

from dyt.nn import NormFactory, build_norm_factory
from models import deferred_init, register_model

ARCHITECTURES = {"resnet50": tv_resnet50, "vgg19": tv_vgg19_bn}


def _site(name: str) -> str:
    if name == "bn1":
        return "stem"
    return "downsample" if ".downsample." in name else "block"


class TorchvisionCNN(nn.Module):
    """A torchvision ConvNet whose BatchNorms come from the norm factory (see the module docstring).

    Args:
        arch: ``resnet50`` or ``vgg19`` (torchvision's ``vgg19_bn``).
        norm: the norm factory (or a norm name / ``configs/norm`` mapping); ``batchnorm`` is the baseline.
    """

    # the model protocol (models/__init__.py): every site the norm factory is asked for, where it sits
    NORM_SITES = (
        "stem",  # ResNet's first BatchNorm (bn1)
        "downsample",  # the BatchNorm of a ResNet shortcut projection (layerN.i.downsample.1)
        "block",  # every other BatchNorm (in the bottlenecks; every one in VGG)
    )

    norm_scale_sensitive = False  # every norm feeds a linear layer or a convolution (models/__init__.py)

    def __init__(
        self,
        arch: str,
        norm: NormFactory | str | None = None,
        num_classes: int = 1000,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown arch {arch!r}; valid choices are: {', '.join(ARCHITECTURES)}")
        if in_chans != 3:
            raise ValueError(f"torchvision's {arch} takes 3-channel images; got in_chans={in_chans}")
        norm = build_norm_factory(norm)
        self.arch, self.num_classes, self.in_channels = arch, num_classes, in_chans
        with deferred_init(self):
            self.net = ARCHITECTURES[arch](weights=None, num_classes=num_classes)
            for name, module in list(self.net.named_modules()):
                if isinstance(module, nn.BatchNorm2d):
                    parent, _, child = name.rpartition(".")
                    new = norm(module.num_features, site=_site(name), layout="channels_first", eps=module.eps)
                    setattr(self.net.get_submodule(parent) if parent else self.net, child, new)
                elif isinstance(module, nn.ReLU):
                    # torchvision's ReLUs work in place on the norm's output, which the fused DyT
                    # kernel's autograd function forbids (its output is a view): out of place here.
                    module.inplace = False
        self.norm_options = norm.resolved()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """torchvision's init: convs Kaiming-normal (fan_out, ReLU) with zero bias; ResNet's classifier
        PyTorch's default Linear init, VGG's normal(0, 0.01) with zero bias; norms reset themselves."""
        for module in self.net.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear) and self.arch == "vgg19":
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)
            elif module is not self.net and hasattr(module, "reset_parameters") and not isinstance(module, nn.Conv2d):
                module.reset_parameters()

    def wrap_units(self) -> list[nn.Module]:
        """ResNet's bottlenecks; VGG's feature extractor and classifier (it has no repeated block)."""
        blocks = [m for m in self.net.modules() if isinstance(m, Bottleneck)]
        return blocks or [self.net.features, self.net.classifier]

    def example_inputs(self, batch: int) -> tuple[torch.Tensor]:
        """Random 32x32 images, the smallest size the five downsamplings (x32) accept."""
        return (torch.randn(batch, self.in_channels, 32, 32, device=next(self.parameters()).device),)

    def resolved_options(self) -> dict:
        """The norms as built, per site (see the model protocol in ``models``)."""
        return {"norms": self.norm_options}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ---- presets (paper Table 16) -----------------------------------------------------------------------


@register_model
def resnet50(norm=None, **kwargs) -> TorchvisionCNN:
    return TorchvisionCNN("resnet50", norm, **kwargs)


@register_model
def vgg19(norm=None, **kwargs) -> TorchvisionCNN:
    return TorchvisionCNN("vgg19", norm, **kwargs)
