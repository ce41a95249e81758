"""The paper's analyses (dyt.analysis): norm input/output capture (Figs. 2, 4) and input std (Fig. 8),
checked against hand computations on tiny models."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from dyt.analysis import InputStdProbe, capture_norms, default_layers, input_std, norm_layers
from dyt.analysis.figures import alpha_std_series, pearson, plot_alpha_std, plot_norm_io
from dyt.nn.norms import LayerNorm
from dyt.nn.pointwise import DyT


def _tiny() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 6), LayerNorm(6, eps=1e-6), nn.Linear(6, 6), DyT(6, alpha_init=0.7, impl="eager")
    )
    with torch.no_grad():  # affines that are not the identity, so a forgotten "before the affine" shows
        for m in (model[1], model[3]):
            m.weight.uniform_(0.5, 2.0)
            m.bias.uniform_(-1.0, 1.0)
    return model


def test_capture_records_input_and_output_before_the_affine_for_layernorm_and_dyt():
    model = _tiny()
    x = torch.randn(2, 3, 4) * 5
    caps = capture_norms(model, x)
    assert list(caps) == ["1", "3"] and [c.kind for c in caps.values()] == ["layernorm", "dyt"]
    h1 = model[0](x).reshape(-1, 6)
    mean, var = h1.mean(-1, keepdim=True), h1.var(-1, unbiased=False, keepdim=True)
    torch.testing.assert_close(caps["1"].x, h1.detach())
    torch.testing.assert_close(caps["1"].y, ((h1 - mean) / torch.sqrt(var + 1e-6)).detach())
    h3 = model[2](model[1](model[0](x))).reshape(-1, 6)
    torch.testing.assert_close(caps["3"].x, h3.detach())
    torch.testing.assert_close(caps["3"].y, torch.tanh(0.7 * h3).detach())
    assert caps["3"].alpha == pytest.approx(0.7) and caps["1"].alpha is None
    assert model.training, "the model's mode is restored"


def test_capture_handles_torch_layernorm_and_channels_first_batchnorm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Flatten(2), nn.LayerNorm(25)).eval()
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 5, 5)
    caps = capture_norms(model, x, layers=["1"])
    h = model[0](x).detach()
    bn = model[1]
    ref = (h - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    assert caps["1"].kind == "batchnorm" and caps["1"].x.shape == (50, 4), "channels-first: one row per pixel"
    torch.testing.assert_close(caps["1"].y, ref.movedim(1, -1).reshape(-1, 4))
    assert capture_norms(model, x)["3"].kind == "layernorm"


def test_capture_refuses_a_norm_it_cannot_reproduce_and_unknown_layers():
    class OddLayerNorm(nn.Module):  # named like a LayerNorm, computes something else
        def forward(self, x):
            return x * 2

    model = nn.Sequential(nn.Linear(3, 3), OddLayerNorm())
    with pytest.raises(ValueError, match="reproduces its output"):
        capture_norms(model, torch.randn(2, 3))
    with pytest.raises(ValueError, match="not norm layers"):
        capture_norms(_tiny(), torch.randn(2, 4), layers=["0"])


def test_default_layers_are_the_papers_for_vit_b_and_the_same_depths_elsewhere():
    names = [f"n{i}" for i in range(1, 26)]
    assert default_layers(names) == ["n5", "n15", "n20", "n25"]  # Fig. 2, ViT-B: LN layer 5, 15, 20, 25
    assert default_layers([f"n{i}" for i in range(1, 10)]) == ["n2", "n5", "n7", "n9"]


def test_input_std_probe_records_only_due_steps_and_averages_micro_batches():
    model = _tiny()
    probe = InputStdProbe(model, every_steps=2)
    x1, x2 = torch.randn(8, 4), torch.randn(8, 4) * 3
    with probe.recording(1):
        model(x1)
    assert probe.collect() == {} and not model[3]._forward_hooks, "no hooks on steps that are not due"
    with probe.recording(2):  # two micro-batches of one step
        model(x1), model(x2)
    h = [model[2](model[1](model[0](x))) for x in (x1, x2)]
    got = probe.collect()
    assert list(got) == ["input_std/3"], "point-wise norms only (the paper's alpha layers)"
    assert got["input_std/3"] == pytest.approx(sum(t.std().item() for t in h) / 2, rel=1e-5)
    assert probe.collect() == {} and not model[3]._forward_hooks
    assert input_std(model, x1)["input_std/3"] == pytest.approx(h[0].std().item(), rel=1e-5)
    with pytest.raises(ValueError, match="every_steps"):
        InputStdProbe(model, every_steps=-1)


def test_figures_from_captures_and_logged_rows(tmp_path):
    caps = list(capture_norms(_tiny(), torch.randn(4, 3, 4)).values())
    for color_by in ("token", "channel"):  # "none" is the channel plot without the marked channels
        path = plot_norm_io({"a": caps, "b": caps[:1]}, tmp_path / f"{color_by}.png", color_by=color_by)
        assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match="color_by"):
        plot_norm_io({"a": caps}, tmp_path / "x.png", color_by="layer")
    rows = [{"step": s, "alpha/a": 0.5 + s, "alpha/b": 1.0 + s} for s in (0, 10)]
    rows += [{"step": s, "input_std/a": 1 / (0.5 + s), "input_std/b": 2.0} for s in (0, 10)]
    series = alpha_std_series(rows)
    assert series["a"] == ([0, 10], [0.5, 10.5], pytest.approx([0.5, 10.5]))
    path, r = plot_alpha_std(series, tmp_path / "fig8.png")
    assert path.stat().st_size > 1000 and r == pytest.approx(pearson([10.5, 0.5], [10.5, 11.0]))
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    json.dumps(series)  # re-plottable records are plain data
    assert [n for n, _ in norm_layers(_tiny())] == ["1", "3"]
