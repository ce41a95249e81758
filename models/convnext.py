"""ConvNeXt (Liu et al. 2022) with every norm built by the norm factory.

timm's stage (downsampling + blocks) and classifier head are used as they are: each takes its norm as
a callable, and each callable is the factory bound to one site. Parameter names therefore equal timm's
``ConvNeXt``, a timm state dict loads unchanged and, with ``norm=layernorm``, the logits equal timm's
(tests/test_vision_models.py). Norm sites, their layouts and timm's names: ``ConvNeXt.NORM_SITES``.
The official DyT code converts these same four kinds of LayerNorm, the channels-first ones through
DyT's channels-first path (paper Sec. 4).
"""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import NormMlpClassifierHead, trunc_normal_
from timm.models.convnext import ConvNeXtBlock, ConvNeXtStage
from torch import nn

from dyt.nn import NormFactory, build_norm_factory
from models import deferred_init, register_model

LN_EPS = 1e-6  # timm's ConvNeXt LayerNorm eps; a hint, so DyT ignores it


class ConvNeXt(nn.Module):
    """ConvNeXt classifier: patchify stem, four stages of ConvNeXt blocks, pool -> norm -> linear head.

    Args:
        norm: the norm factory (or a norm name / ``configs/norm`` mapping).
        depths, dims: blocks and channels of each stage (four in ConvNeXt; fewer for small images).
        patch_size: kernel and stride of the patchify stem (4 in ConvNeXt, timm's ``patch_size``).
        drop_path_rate: stochastic depth of the last block; it grows linearly from 0 over all blocks.
        ls_init_value: layer-scale init (1e-6 in ConvNeXt and the paper's recipe, paper App. A);
            ``None`` turns layer scale off.
        head_init_scale: multiplies the classifier's initial weight and bias (ConvNeXt fine-tuning).
    """

    # the model protocol (models/__init__.py): every site the norm factory is asked for, where it sits
    NORM_SITES = (
        "stem",  # after the 4x4 patchify conv (patch_size): channels_first, timm stem.1
        "downsample",  # before each 2x2 stride-2 conv (stages 1-3): channels_first, stages.i.downsample.0
        "block",  # after each block's depth-wise 7x7 conv: channels_last, stages.i.blocks.j.norm
        "final",  # after global average pooling, before the fc: channels_first, head.norm
    )

    norm_scale_sensitive = False  # every norm feeds a linear layer or a convolution (models/__init__.py)

    def __init__(
        self,
        norm: NormFactory | str | None = None,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: tuple[int, ...] = (3, 3, 9, 3),
        dims: tuple[int, ...] = (96, 192, 384, 768),
        drop_path_rate: float = 0.0,
        ls_init_value: float | None = 1e-6,
        head_init_scale: float = 1.0,
        patch_size: int = 4,
    ) -> None:
        super().__init__()
        if len(depths) != len(dims):
            raise ValueError(f"depths {tuple(depths)} and dims {tuple(dims)} must list the same number of stages")
        norm = build_norm_factory(norm)
        self.num_classes, self.in_channels = num_classes, in_chans
        self.ls_init_value, self.head_init_scale = ls_init_value, head_init_scale
        self.min_size = patch_size * 2 ** (len(depths) - 1)  # the stem, then one stride-2 conv per later stage

        with deferred_init(self):
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, dims[0], kernel_size=patch_size, stride=patch_size),
                norm(dims[0], site="stem", layout="channels_first", eps=LN_EPS),
            )
            rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").split(list(depths))
            self.stages = nn.Sequential(
                *[
                    ConvNeXtStage(
                        dims[max(i - 1, 0)],
                        dims[i],
                        stride=2 if i > 0 else 1,
                        depth=depths[i],
                        drop_path_rates=rates[i].tolist(),
                        ls_init_value=ls_init_value,
                        norm_layer=partial(norm, site="downsample", layout="channels_first", eps=LN_EPS),
                        norm_layer_cl=partial(norm, site="block", eps=LN_EPS),
                    )
                    for i in range(len(depths))
                ]
            )
            self.head = NormMlpClassifierHead(
                dims[-1], num_classes, norm_layer=partial(norm, site="final", layout="channels_first", eps=LN_EPS)
            )
        self.norm_options = norm.resolved()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """ConvNeXt's init: truncated normal (std 0.02) convs and linears with zero bias, the classifier
        scaled by ``head_init_scale``, layer scale at ``ls_init_value``; norms reset themselves."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, ConvNeXtBlock) and module.gamma is not None:
                nn.init.constant_(module.gamma, self.ls_init_value)
            elif module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        if isinstance(self.head.fc, nn.Linear):
            self.head.fc.weight.mul_(self.head_init_scale)
            self.head.fc.bias.mul_(self.head_init_scale)

    def wrap_units(self) -> list[nn.Module]:
        """The repeated blocks: FSDP2 shards and activation checkpointing wrap each of them."""
        return [block for stage in self.stages for block in stage.blocks]

    def example_inputs(self, batch: int) -> tuple[torch.Tensor]:
        """A batch of random images of the smallest size the downsamplings accept (32x32 for ConvNeXt)."""
        size = self.min_size
        return (torch.randn(batch, self.in_channels, size, size, device=self.stem[0].weight.device),)

    def resolved_options(self) -> dict:
        """The norms as built, per site (see the model protocol in ``models``)."""
        return {"norms": self.norm_options}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) -> last-stage feature map (N, dims[-1], H/32, W/32 for ConvNeXt)."""
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Feature map -> pooled, normalized features (``pre_logits=True``) or logits."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ---- size presets (ConvNeXt paper Sec. 2.7) -------------------------------------------------------


@register_model
def convnext_t(norm=None, **kwargs) -> ConvNeXt:
    return ConvNeXt(norm, **{"depths": (3, 3, 9, 3), "dims": (96, 192, 384, 768), **kwargs})


@register_model
def convnext_s(norm=None, **kwargs) -> ConvNeXt:
    return ConvNeXt(norm, **{"depths": (3, 3, 27, 3), "dims": (96, 192, 384, 768), **kwargs})


@register_model
def convnext_b(norm=None, **kwargs) -> ConvNeXt:
    return ConvNeXt(norm, **{"depths": (3, 3, 27, 3), "dims": (128, 256, 512, 1024), **kwargs})


@register_model
def convnext_l(norm=None, **kwargs) -> ConvNeXt:
    return ConvNeXt(norm, **{"depths": (3, 3, 27, 3), "dims": (192, 384, 768, 1536), **kwargs})


# Unit tests only: one narrow block per stage.
@register_model
def convnext_test(norm=None, **kwargs) -> ConvNeXt:
    return ConvNeXt(norm, **{"depths": (1, 1, 1, 1), "dims": (16, 32, 64, 128), "num_classes": 10, **kwargs})


# The CPU runs on scikit-learn's 8x8 digits (experiment=cpu/convnext_digits): a 2x2 stem and two stages,
# so the maps are 4x4 then 2x2; the 7x7 depth-wise convs then see the whole map, as late ConvNeXt stages do.
@register_model
def convnext_digits(norm=None, **kwargs) -> ConvNeXt:
    return ConvNeXt(norm, **{"depths": (2, 2), "dims": (64, 128), "patch_size": 2, **kwargs})
