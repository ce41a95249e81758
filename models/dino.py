"""DINO (Caron et al. 2021): self-distillation with no labels, with every norm from the norm factory
(paper Table 2).

A student and a teacher share one architecture: a ViT backbone from models/vit.py whose output is the
class token after the final norm, and DINO's projection head. Only the student is trained; the teacher
follows it by an exponential moving average (dyt/tasks/dino.py). Both live in one :class:`DINO` module
so that checkpoints carry the teacher. Parameter names follow DINO's ``vision_transformer.py`` and
``main_dino.py`` (``student.backbone.blocks.0.attn.qkv.weight``, ``teacher.head.last_layer.weight_g``).
The backbone converts to Hugging Face ``ViTModel`` names (the format DINO checkpoints are published in)
with :func:`backbone_to_hf`; with ``norm=layernorm`` the class-token features agree (tests/test_dino.py).

Norm sites: the ViT backbone's (``DINO.NORM_SITES``, student and teacher alike).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from dyt.nn import NormFactory, build_norm_factory
from models import deferred_init, register_model
from models.vit import HF_VIT_NAMES, VIT_SIZES, VisionTransformer, from_hf, to_hf

# ---- projection head --------------------------------------------------------------------------------


class WeightNormLinear(nn.Module):
    """A bias-free linear layer with weight normalisation, ``weight = g * v / ||v||`` per output row
    (``torch.nn.utils.weight_norm`` as DINO uses it, written out so that it builds on the meta device and
    keeps DINO's parameter names ``weight_g`` and ``weight_v``)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight_g = nn.Parameter(torch.empty(out_features, 1))
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))

    def reset_parameters(self) -> None:
        # DINO wraps a fresh nn.Linear after its own init: PyTorch's default init for v, then g = 1.
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))
        nn.init.ones_(self.weight_g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True))


class DINOHead(nn.Module):
    """MLP (``nlayers`` linears with GELU) to a bottleneck, L2 normalisation, weight-normalised linear to
    ``out_dim`` prototypes (DINO ``DINOHead``).

    Args:
        norm_last_layer: fix the last layer's norm ``g`` at 1 (DINO's default; its README recommends it
            for stability with ViT-B).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"DINOHead needs nlayers >= 1 (DINO: 3), got {nlayers}")
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            layers += [nn.Linear(a, b)] + ([nn.GELU()] if i < nlayers - 1 else [])
        self.mlp = nn.Sequential(*layers)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        self.last_layer.weight_g.requires_grad_(not norm_last_layer)

    def reset_parameters(self) -> None:
        """DINO's head init: truncated normal (std 0.02) linears with zero bias, then the last layer."""
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class MultiCropNet(nn.Module):
    """Backbone + head over a list of crops: consecutive crops of one resolution go through the
    backbone as one batch (DINO ``MultiCropWrapper``); the head sees all of them at once."""

    def __init__(self, backbone: VisionTransformer, head: DINOHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, crops: list[torch.Tensor]) -> torch.Tensor:
        features, start = [], 0
        while start < len(crops):
            end = start + 1
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            features.append(self.backbone(torch.cat(crops[start:end])))
            start = end
        return self.head(torch.cat(features))


# ---- position embeddings of crops of another size ---------------------------------------------------


def dino_interpolate_pos_embed(pos_embed: torch.Tensor, grid: list[int], built: list[int], prefix: int) -> torch.Tensor:
    """DINO's ``interpolate_pos_encoding`` (facebookresearch/dino vision_transformer.py): the patch
    embeddings, a ``built`` grid, resized bicubically by ``scale_factor = (g + 0.1) / built`` per axis for
    a target grid ``g`` (the 0.1 guards the output size against rounding, DINO issue 8), which samples
    other points than a resize to exactly ``g`` (timm's). The ``prefix`` tokens' embeddings are kept."""
    dim = pos_embed.shape[-1]
    patches = pos_embed[:, prefix:].reshape(1, *built, dim).permute(0, 3, 1, 2)
    scale = tuple((g + 0.1) / b for g, b in zip(grid, built, strict=True))
    patches = F.interpolate(patches, scale_factor=scale, mode="bicubic")
    if list(patches.shape[-2:]) != list(grid):
        raise ValueError(f"DINO's interpolation made a {list(patches.shape[-2:])} grid, not {list(grid)}")
    return torch.cat([pos_embed[:, :prefix], patches.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


class DINOVisionTransformer(VisionTransformer):
    """The ViT of models/vit.py with DINO's position-embedding interpolation for crops of another size
    (DINO's local crops); crops of the built size use the embeddings as they are."""

    def resample_pos_embed(self, grid: list[int]) -> torch.Tensor:
        return dino_interpolate_pos_embed(
            self.pos_embed, grid, list(self.patch_embed.grid_size), self.num_prefix_tokens
        )


POS_EMBED_RESAMPLES = {"dino": DINOVisionTransformer, "timm": VisionTransformer}


# ---- student and teacher ------------------------------------------------------------------------------


class DINO(nn.Module):
    """Student and teacher networks of DINO pretraining.

    ``forward(crops)`` returns the student's outputs for every crop and the teacher's (without
    gradients) for the first ``num_global`` crops, each (crops * N, out_dim), crop-major. The teacher
    starts as a copy of the student, never receives gradients and has no drop path (DINO main_dino.py).

    Args:
        norm: the norm factory (or a norm name / ``configs/norm`` mapping), used by student and teacher.
        out_dim, hidden_dim, bottleneck_dim, nlayers, norm_last_layer: the head (DINO: 65536, 2048, 256, 3).
        drop_path_rate: stochastic depth of the student (DINO: 0.1).
        num_global: how many leading crops are global views, the only ones the teacher sees (DINO: 2).
        pos_embed_resample: how crops of another size than ``img_size`` (the local crops) get position
            embeddings: ``dino`` (DINO's ``interpolate_pos_encoding``, the default) or ``timm`` (a bicubic
            resize to exactly their grid, what this model did before; the committed CPU digits numbers).
        **backbone: ``VisionTransformer`` arguments (sizes, ``img_size`` of the global crops, ...).
    """

    NORM_SITES = VisionTransformer.NORM_SITES  # the model protocol (models/__init__.py): the backbone's

    def __init__(
        self,
        norm: NormFactory | str | None = None,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm_last_layer: bool = True,
        drop_path_rate: float = 0.1,
        num_global: int = 2,
        pos_embed_resample: str = "dino",
        **backbone,
    ) -> None:
        super().__init__()
        if pos_embed_resample not in POS_EMBED_RESAMPLES:
            valid = ", ".join(POS_EMBED_RESAMPLES)
            raise ValueError(f"unknown pos_embed_resample {pos_embed_resample!r}; valid choices are: {valid}")
        vit_class = POS_EMBED_RESAMPLES[pos_embed_resample]
        norm = build_norm_factory(norm)
        self.num_global = num_global
        head = dict(
            out_dim=out_dim,
            hidden_dim=hidden_dim,
            bottleneck_dim=bottleneck_dim,
            nlayers=nlayers,
            norm_last_layer=norm_last_layer,
        )
        nets = []
        with deferred_init(self):
            for rate in (drop_path_rate, 0.0):
                vit = vit_class(
                    norm, num_classes=0, global_pool="token", dynamic_img_size=True, drop_path_rate=rate, **backbone
                )
                nets.append(MultiCropNet(vit, DINOHead(vit.embed_dim, **head)))
            self.student, self.teacher = nets
            self.teacher.requires_grad_(False)
        self.norm_options = norm.resolved()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """DINO's init of the student (the ViT's and the head's), copied into the teacher."""
        self.student.backbone.reset_parameters()
        self.student.head.reset_parameters()
        self.copy_student_to_teacher()

    @torch.no_grad()
    def copy_student_to_teacher(self) -> None:
        """The teacher's weights become the student's (at init, and after the student's alphas are
        calibrated: ``norm.alpha_init=calibrate``)."""
        teacher = [*self.teacher.parameters(), *self.teacher.buffers()]
        student = [*self.student.parameters(), *self.student.buffers()]
        for t, s in zip(teacher, student, strict=True):
            t.copy_(s)

    def wrap_units(self) -> list[nn.Module]:
        """Every block of student and teacher (FSDP2 units, activation checkpointing)."""
        return [*self.student.backbone.blocks, *self.teacher.backbone.blocks]

    def example_inputs(self, batch: int) -> tuple[list[torch.Tensor]]:
        """Two global crops at the backbone's image size and two local crops at half of it."""
        backbone = self.student.backbone
        size, device = backbone.patch_embed.img_size, backbone.pos_embed.device
        crops = [(batch, backbone.in_channels, *size)] * 2 + [
            (batch, backbone.in_channels, size[0] // 2, size[1] // 2)
        ] * 2
        return ([torch.randn(shape, device=device) for shape in crops],)

    def resolved_options(self) -> dict:
        """The norms of student and teacher as built, per site (see the model protocol in ``models``)."""
        return {"norms": self.norm_options}

    def no_weight_decay(self) -> set[str]:
        # DINO (utils.get_params_groups) exempts only biases and 1-D parameters; the task's default does.
        return set()

    def forward(self, crops: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            teacher_out = self.teacher(crops[: self.num_global])
        return self.student(crops), teacher_out


# ---- Hugging Face ViTModel layout of the backbone ---------------------------------------------------

_HF_BLOCKS = {"blocks.": "layers."}


def backbone_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A backbone state dict (``model.teacher.backbone.state_dict()``) -> Hugging Face ``ViTModel`` names
    (``add_pooling_layer=False``; ``norm=layernorm`` only)."""
    return to_hf(state, HF_VIT_NAMES, _HF_BLOCKS)


def backbone_from_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Hugging Face ``ViTModel`` state dict -> our backbone's."""
    return from_hf(state, HF_VIT_NAMES, _HF_BLOCKS)


# ---- size presets (DINO README: ViT-B/16 and ViT-B/8, 65536 prototypes) ----------------------------


@register_model
def dino_vit_b16(norm=None, **kwargs) -> DINO:
    return DINO(norm, **{**VIT_SIZES["b"], "patch_size": 16, **kwargs})


@register_model
def dino_vit_b8(norm=None, **kwargs) -> DINO:
    return DINO(norm, **{**VIT_SIZES["b"], "patch_size": 8, **kwargs})


# CPU demo on scikit-learn's 8x8 grey digits: vit_digits' backbone, a small head.
@register_model
def dino_vit_digits(norm=None, **kwargs) -> DINO:
    head = {"out_dim": 1024, "hidden_dim": 256, "bottleneck_dim": 64, "drop_path_rate": 0.0}
    return DINO(norm, **{**VIT_SIZES["digits"], **head, **kwargs})
