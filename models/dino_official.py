"""``init_from`` for the official DINO checkpoints (github.com/facebookresearch/dino, README "Pretrained
models"), both kinds of file:

- the training checkpoint (``*_full_checkpoint.pth``, written by ``main_dino.py``'s ``save_dict``): a dict
  with ``student`` and ``teacher`` state dicts (the student DDP-wrapped, ``module.backbone.`` /
  ``module.head.``; the teacher without ``module.`` for a ViT), plus ``optimizer``, ``epoch``, ``args``
  (an ``argparse.Namespace``) and ``dino_loss``. Into our ``DINO`` both networks load (names as
  models/dino.py: ``student.backbone.blocks.0.attn.qkv.weight``); into a ``VisionTransformer`` the teacher's
  backbone, as DINO's evaluations take it (``eval_linear.py --checkpoint_key teacher``).
- the backbone-only release (``dino_vitbase16_pretrain.pth``): the teacher's ViT (``vision_transformer.py``
  names, timm's: ``cls_token``, ``blocks.0.attn.qkv.weight``, ``norm.weight``; no head). Into our ``DINO``
  it starts the student's and the teacher's backbones, the projection heads keep their init.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from models.formats import check_layout, refuse, strip_prefix

FORMAT = "dino_official"
LAYOUT = "DINO checkpoint (main_dino.py's student/teacher, or a backbone-only release)"
_BACKBONE = (
    r"cls_token|pos_embed|patch_embed\.proj\.(weight|bias)|norm\.(weight|bias)"
    r"|blocks\.\d+\.(norm[12]|attn\.(qkv|proj)|mlp\.fc[12])\.(weight|bias)"
)
_NETWORK = rf"backbone\.({_BACKBONE})|head\.(mlp\.\d+\.(weight|bias)|last_layer\.weight_[gv])"
_NETWORKS = ("student", "teacher")


def _is_backbone(obj: Mapping[str, Any]) -> bool:
    import re

    return "cls_token" in obj and all(isinstance(k, str) and re.fullmatch(_BACKBONE, k) for k in obj)


def detect(obj: Mapping[str, Any], config: Mapping[str, Any] | None) -> bool:
    full = all(isinstance(obj.get(n), Mapping) for n in _NETWORKS)
    return config is None and (full or _is_backbone(obj))


def convert(obj: Mapping[str, Any], model: nn.Module, config: Mapping[str, Any] | None) -> dict:
    """Our ``DINO`` names (``student.`` / ``teacher.``), or the backbone's own names for a ViT."""
    from models.dino import DINO

    if _is_backbone(obj):
        if not isinstance(model, DINO):
            return dict(obj)  # a ViT: timm's names, VisionTransformer.init_from_state_dict places the norm
        out: dict[str, torch.Tensor | None] = {f"{n}.backbone.{k}": v for n in _NETWORKS for k, v in obj.items()}
        out.update({k: None for k in model.state_dict() if ".head." in k})  # no head was released
        return out
    out = {}
    for name in _NETWORKS:
        state = strip_prefix(obj[name], "module.")
        check_layout(state, _NETWORK, FORMAT, f"{LAYOUT}: its {name!r}")
        out.update({f"{name}.{k}": v for k, v in state.items()})
    if not any(k.startswith("teacher.backbone.") for k in out):
        refuse(FORMAT, "the 'teacher' entry has no backbone weights", "pass the file main_dino.py wrote")
    return out
