"""dyt.fold moves DyT/Derf affines into the linear layers after them without changing the outputs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import dyt
import models
from dyt.nn import Derf, DyT

# The plain path: folding is exact algebra, independent of the kernel (tests/test_fused.py covers that).
PLAIN_DYT = {"name": "dyt", "impl": "eager"}


def _randomize_affines(model: nn.Module) -> None:
    """Trained-looking norms (weights around 1, biases around 0, so folding has something to move) and
    unit-scale linears (so the outputs are O(1) and the 1e-5 tolerance means something)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, module.in_features**-0.5)
            if isinstance(module, DyT | Derf):
                module.weight.normal_(1.0, 0.5)
                if module.bias is not None:
                    module.bias.normal_(0.0, 0.5)


def _assert_fold_exact(model: nn.Module, inputs: torch.Tensor, expected: int) -> None:
    model.eval()
    _randomize_affines(model)
    folded = copy.deepcopy(model)
    assert dyt.fold(folded) == expected
    norms = [m for m in folded.modules() if isinstance(m, DyT | Derf)]
    assert sum(m.weight is None for m in norms) == expected
    with torch.no_grad():
        want, got = model(inputs), folded(inputs)
    assert want.abs().max() > 0.5  # a meaningful comparison, not of zeros
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


class _Simple(nn.Module):
    def __init__(self, norm=DyT) -> None:
        super().__init__()
        self.norm, self.q, self.k = norm(16, impl="eager"), nn.Linear(16, 8, bias=False), nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.norm(x)
        return self.q(n) * self.k(n)


@pytest.mark.parametrize("norm", [DyT, Derf])
def test_fold_into_two_linears_is_exact(norm):
    _assert_fold_exact(_Simple(norm), torch.randn(4, 5, 16) * 3, expected=1)


def test_norm_whose_output_reaches_anything_else_is_left_alone():
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm, self.fc = DyT(16), nn.Linear(16, 16)

        def forward(self, x):
            n = self.norm(x)
            return self.fc(n) + n

    model = Residual()
    assert dyt.fold(model) == 0
    assert model.norm.weight is not None


def test_vit_folds_qkv_fc1_and_head():
    model = models.create_model("vit_test", norm=PLAIN_DYT)
    size = model.patch_embed.img_size
    blocks = len(model.blocks)
    _assert_fold_exact(model, torch.randn(2, 3, *size), expected=2 * blocks + 1)


def test_llama_folds_wqkv_ffn_and_output():
    model = models.create_model("llama_tiny", norm=PLAIN_DYT)
    _assert_fold_exact(model, torch.randint(0, 512, (2, 16)), expected=2 * len(model.layers) + 1)


class _Branchy(_Simple):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.norm(x)
        return self.q(n) * self.k(n) if x.sum() > 0 else self.q(n)


def test_model_declared_consumers_are_used_and_checked():
    class Declared(_Branchy):
        def norm_consumers(self):
            return [(self.norm, [self.q, self.k])]

    _assert_fold_exact(Declared(), torch.randn(4, 5, 16).abs(), expected=1)

    class Wrong(_Branchy):
        def norm_consumers(self):
            return [(self.norm, [nn.Linear(3, 3)])]

    with pytest.raises(ValueError, match="in_features == 16"):
        dyt.fold(Wrong())


def test_untraceable_model_explains_the_hook():
    with pytest.raises(RuntimeError, match="norm_consumers"):
        dyt.fold(_Branchy())
