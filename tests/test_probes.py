"""Per-layer probes of point-wise norms (dyt/nn/probes.py).

Specification:
- ``pointwise_norms`` finds every DyT / Derf layer by class, with its qualified name, and nothing else
  (not LayerNorm, not another parameter that happens to be called ``alpha``);
- ``alpha_stats`` reports mean |alpha| and |alpha| per layer, a fixed (buffer) alpha included, and
  nothing for a model without point-wise norms;
- it gives the same numbers on an FSDP2-sharded model (alpha a DTensor) as on the plain one.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

import models
from dyt.nn import Derf, DyT, alpha_stats, pointwise_norms


class Mixed(nn.Module):
    """A DyT, a nested Derf, a LayerNorm and a parameter named alpha that belongs to no norm."""

    def __init__(self) -> None:
        super().__init__()
        self.pre = DyT(4, impl="eager")
        self.body = nn.Sequential(nn.Linear(4, 4), Derf(4, impl="eager"))
        self.ln = nn.LayerNorm(4)
        self.alpha = nn.Parameter(torch.full((1,), 7.0))  # e.g. a learnable residual gate


def test_pointwise_norms_are_found_by_class_with_their_names():
    model = Mixed()
    assert [(n, type(m)) for n, m in pointwise_norms(model)] == [("pre", DyT), ("body.1", Derf)]


def test_alpha_stats_are_mean_and_per_layer_absolute_alpha():
    model = Mixed()
    with torch.no_grad():
        model.pre.alpha.fill_(-0.25)
        model.body[1].alpha.fill_(0.75)
    assert alpha_stats(model) == {"alpha/mean": 0.5, "alpha/pre": 0.25, "alpha/body.1": 0.75}
    assert alpha_stats(model, per_layer=False) == {"alpha/mean": 0.5}
    assert alpha_stats(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))) == {}


def test_fixed_alpha_is_reported():
    fixed = DyT(4, alpha_init=1.0, learn_alpha=False)
    assert "alpha" in dict(fixed.named_buffers())
    assert alpha_stats(nn.Sequential(fixed)) == {"alpha/mean": 1.0, "alpha/0": 1.0}


def test_vit_reports_every_norm_site():
    model = models.create_model("vit_test", norm={"name": "dyt", "impl": "eager", "sites": {"attn": {"alpha_init": 2}}})
    stats = alpha_stats(model)
    assert stats["alpha/blocks.0.norm1"] == 2.0 and stats["alpha/fc_norm"] == 0.5
    assert stats["alpha/mean"] == pytest.approx((2 * 2.0 + 2 * 0.5 + 0.5) / 5)


def test_fsdp2_sharded_alpha_gives_the_same_stats():
    from torch.distributed.fsdp import fully_shard

    model = models.create_model("vit_test", norm={"name": "derf", "impl": "eager"})
    with torch.no_grad():
        for i, (_, m) in enumerate(pointwise_norms(model)):
            m.alpha.fill_(0.1 * (i + 1))
    plain = alpha_stats(model)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        for block in model.wrap_units():
            fully_shard(block)
        fully_shard(model)
        assert type(model.blocks[0].norm1.alpha).__name__ == "DTensor"
        assert alpha_stats(model) == plain
    finally:
        dist.destroy_process_group()
