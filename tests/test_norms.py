"""The norm library: values and gradients against float64 references, layouts, meta init, the factory."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dyt.nn import Derf, DyT, LayerNorm, RMSNorm, build_norm_factory, norm_names, norm_tag
from dyt.nn.pointwise import SQUASH

C = 6


def _reference(name: str, x, alpha, weight, bias, shift=None, squash="tanh"):
    """The defining formulas, written out independently of the modules (channels-last)."""
    if name == "dyt":
        fn = {
            "tanh": torch.tanh,
            "hardtanh": lambda t: t.clamp(-1, 1),
            "sigmoid": lambda t: 1 / (1 + torch.exp(-t)),
            "identity": lambda t: t,
        }[squash]
        return weight * fn(alpha * x) + bias
    return weight * torch.erf(alpha * x + shift) + bias


def _randomize(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + (0.7 if p.numel() == 1 else 0.0))


@pytest.mark.parametrize("squash", list(SQUASH))
def test_dyt_values_and_gradients_match_float64_reference(squash):
    torch.manual_seed(0)
    m = DyT(C, squash=squash).double()
    _randomize(m)
    x = (torch.randn(3, 5, C, dtype=torch.float64) * 3).requires_grad_()
    y = m(x)
    xr = x.detach().clone().requires_grad_()
    a, w, b = (t.detach().clone().requires_grad_() for t in (m.alpha, m.weight, m.bias))
    yr = _reference("dyt", xr, a, w, b, squash=squash)
    torch.testing.assert_close(y, yr, rtol=0, atol=1e-12)
    g = torch.randn_like(y)
    y.backward(g)
    yr.backward(g)
    for got, want in ((x.grad, xr.grad), (m.alpha.grad, a.grad), (m.weight.grad, w.grad), (m.bias.grad, b.grad)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_derf_values_and_gradients_match_float64_reference():
    torch.manual_seed(1)
    m = Derf(C).double()
    _randomize(m)
    x = (torch.randn(4, C, dtype=torch.float64) * 2).requires_grad_()
    y = m(x)
    xr = x.detach().clone().requires_grad_()
    a, s, w, b = (t.detach().clone().requires_grad_() for t in (m.alpha, m.shift, m.weight, m.bias))
    yr = _reference("derf", xr, a, w, b, shift=s)
    torch.testing.assert_close(y, yr, rtol=0, atol=1e-12)
    g = torch.randn_like(y)
    y.backward(g)
    yr.backward(g)
    for got, want in (
        (x.grad, xr.grad),
        (m.alpha.grad, a.grad),
        (m.shift.grad, s.grad),
        (m.weight.grad, w.grad),
        (m.bias.grad, b.grad),
    ):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cls", [DyT, Derf])
def test_pointwise_gradcheck(cls):
    """Input and parameter gradients against finite differences, at tolerances that reject a 1e-4 error
    (gradcheck's defaults, rtol 1e-3, accepted a 0.1% error in alpha's gradient)."""
    torch.manual_seed(2)
    m = cls(C).double()
    _randomize(m)
    x = torch.randn(2, 3, C, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]

    def f(x, *params):
        return torch.func.functional_call(m, dict(zip(names, params)), (x,))

    assert torch.autograd.gradcheck(f, (x, *m.parameters()), atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize(
    "name,squash", [("dyt", s) for s in SQUASH] + [("derf", "tanh")], ids=[*(f"dyt-{s}" for s in SQUASH), "derf"]
)
@pytest.mark.parametrize("layout", ["channels_last", "channels_first"])
def test_plain_fp32_path_matches_float64_formula(name, squash, layout):
    """impl='eager' (plain PyTorch: what CUDA runs by default and every device runs for the Table 7
    ablations) in fp32, values and gradients, against the float64 formula at fp32 tolerance."""
    torch.manual_seed(5)
    kwargs = {"squash": squash} if name == "dyt" else {}
    m = build_norm_factory({"name": name, "impl": "eager"})(C, layout=layout, **kwargs)
    _randomize(m)
    x = (torch.randn(2, C, 4, 3) if layout == "channels_first" else torch.randn(4, 5, C)) * 3
    x.requires_grad_()
    y = m(x)
    g = torch.randn_like(y)
    y.backward(g)
    p = {n: t.detach().double().requires_grad_() for n, t in m.named_parameters()}
    xd = x.detach().double().requires_grad_()
    move = (lambda t: t.movedim(1, -1)) if layout == "channels_first" else (lambda t: t)
    yr = _reference(name, move(xd), p["alpha"], p["weight"], p["bias"], shift=p.get("shift"), squash=squash)
    yr = yr.movedim(-1, 1) if layout == "channels_first" else yr
    yr.backward(g.double())
    torch.testing.assert_close(y.double(), yr, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad.double(), xd.grad, atol=1e-5, rtol=1e-5)
    for n, t in m.named_parameters():
        torch.testing.assert_close(t.grad.double(), p[n].grad, atol=1e-5, rtol=1e-5, msg=n)


def test_layernorm_and_rmsnorm_match_reference_formulas():
    torch.manual_seed(3)
    x = torch.randn(4, 7, C, dtype=torch.float64) * 5 + 2
    ln, rms = LayerNorm(C, eps=1e-6).double(), RMSNorm(C, eps=1e-5).double()
    _randomize(ln)
    _randomize(rms)
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    torch.testing.assert_close(ln(x), (x - mean) / torch.sqrt(var + 1e-6) * ln.weight + ln.bias)
    ms = x.pow(2).mean(-1, keepdim=True)
    torch.testing.assert_close(rms(x), x / torch.sqrt(ms + 1e-5) * rms.weight)
    assert rms.bias is None, "RMSNorm has no bias by default (LLaMA)"


@pytest.mark.parametrize("name", ["layernorm", "rmsnorm", "dyt", "derf"])
def test_channels_first_equals_permuted_channels_last(name):
    torch.manual_seed(4)
    factory = build_norm_factory(name)
    last, first = factory(C), factory(C, layout="channels_first")
    _randomize(last)
    first.load_state_dict(last.state_dict())
    x = torch.randn(2, C, 5, 3)
    torch.testing.assert_close(first(x), last(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["layernorm", "rmsnorm", "dyt", "derf"])
def test_meta_device_build_then_reset_equals_eager_init(name):
    factory = build_norm_factory({"name": name, "sites": {}})
    eager = factory(C, site="attn", alpha_init=0.8)
    with torch.device("meta"):
        meta = factory(C, site="attn", alpha_init=0.8)
    assert all(p.is_meta for p in meta.parameters())
    real = meta.to_empty(device="cpu")
    real.reset_parameters()
    for (k, a), (_, b) in zip(eager.state_dict().items(), real.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=f"{name}.{k} differs after meta init + reset_parameters()")


def test_dyt_defaults_and_parameter_names_follow_the_official_code():
    m = DyT(C)
    assert set(dict(m.named_parameters())) == {"alpha", "weight", "bias"}
    assert m.alpha.shape == (1,) and m.alpha.item() == 0.5
    assert torch.equal(m.weight, torch.ones(C)) and torch.equal(m.bias, torch.zeros(C))
    x = torch.randn(3, C)
    torch.testing.assert_close(m(x), torch.tanh(0.5 * x))


def test_dyt_options_affine_bias_and_fixed_alpha():
    no_affine = DyT(C, affine=False)
    assert list(no_affine.parameters()) == [no_affine.alpha]
    no_bias = DyT(C, bias=False)
    assert no_bias.bias is None and no_bias.weight is not None
    fixed = DyT(C, alpha_init=1.0, learn_alpha=False)
    assert "alpha" not in dict(fixed.named_parameters()) and fixed.alpha.item() == 1.0
    assert "alpha" in fixed.state_dict(), "a fixed alpha is still saved, so checkpoints say what was used"


def test_dyt_in_bf16_keeps_dtype():
    m = DyT(C).to(torch.bfloat16)
    assert m(torch.randn(2, C, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_hardtanh_and_sigmoid_ablations_use_the_named_function():
    x = torch.linspace(-4, 4, 9)
    assert torch.equal(DyT(9, squash="hardtanh", alpha_init=1.0)(x), F.hardtanh(x))
    torch.testing.assert_close(DyT(9, squash="sigmoid", alpha_init=1.0)(x), torch.sigmoid(x))
    torch.testing.assert_close(DyT(9, squash="identity", alpha_init=2.0)(x), 2 * x)


# ---- factory and registry ---------------------------------------------------------------------


def test_registry_lists_every_norm():
    assert {"layernorm", "rmsnorm", "dyt", "derf"} <= set(norm_names())


def test_unknown_norm_and_unknown_option_fail_listing_valid_choices():
    with pytest.raises(ValueError, match="valid norms are: .*dyt.*layernorm"):
        build_norm_factory("groupnorm")
    with pytest.raises(ValueError, match="valid options are: .*alpha_init"):
        build_norm_factory({"name": "dyt", "alpha": 0.3})
    with pytest.raises(ValueError, match="norm.sites.attn.*valid options"):
        build_norm_factory({"name": "layernorm", "sites": {"attn": {"alpha_init": 0.8}}})
    with pytest.raises(ValueError, match="unknown squash 'relu'"):
        build_norm_factory({"name": "dyt", "squash": "relu"})(C)
    with pytest.raises(ValueError, match="valid layouts"):
        build_norm_factory("dyt")(C, layout="nchw")


def test_precedence_class_default_hint_config_site():
    cfg = {"name": "dyt", "alpha_init": None, "sites": {"attn": {"alpha_init": 0.8}}}
    norm = build_norm_factory(cfg)
    assert norm(C, site="ffn").alpha.item() == 0.5, "class default"
    assert norm(C, site="ffn", alpha_init=0.2).alpha.item() == pytest.approx(0.2), "model hint beats default"
    assert norm(C, site="attn", alpha_init=0.2).alpha.item() == pytest.approx(0.8), "site config beats hint"
    globally = build_norm_factory({"name": "dyt", "alpha_init": 1.0})
    assert globally(C, site="ffn", alpha_init=0.2).alpha.item() == 1.0, "config option beats hint"


def test_hints_a_norm_does_not_take_are_dropped():
    ln = build_norm_factory("layernorm")(C, alpha_init=0.8, eps=1e-5)
    assert ln.eps == 1e-5
    dyt = build_norm_factory("dyt")(C, eps=1e-5, bias=False)
    assert dyt.bias is None


def test_check_sites_used_catches_a_misspelt_site():
    norm = build_norm_factory({"name": "dyt", "sites": {"atn": {"alpha_init": 0.8}}})
    norm(C, site="attn")
    with pytest.raises(ValueError, match=r"\['atn'\].*its sites are: attn"):
        norm.check_sites_used()


def test_resolved_lists_every_built_norm_with_the_options_actually_used():
    norm = build_norm_factory({"name": "dyt", "sites": {"attn": {"alpha_init": 0.8}}})
    norm(C, site="attn", alpha_init=0.2)
    norm(C, site="attn", alpha_init=0.2)
    norm(C, site="ffn", bias=False)
    norm(C, site="stem", layout="channels_first")
    common = {"norm": "dyt", "class": "DyT", "squash": "tanh", "learn_alpha": True, "affine": True, "impl": "auto"}
    common |= {"alpha_param": "linear", "alpha_gain": 1.0}
    assert norm.resolved() == [
        {**common, "site": "attn", "layout": "channels_last", "alpha_init": 0.8, "bias": True, "count": 2},
        {**common, "site": "ffn", "layout": "channels_last", "alpha_init": 0.5, "bias": False, "count": 1},
        {**common, "site": "stem", "layout": "channels_first", "alpha_init": 0.5, "bias": True, "count": 1},
    ]


def test_norm_tag_is_the_configs_tag_else_its_name():
    assert norm_tag({"name": "dyt", "tag": "dyt_hardtanh", "squash": "hardtanh"}) == "dyt_hardtanh"
    assert norm_tag({"name": "rmsnorm"}) == norm_tag("rmsnorm") == "rmsnorm"
    with pytest.raises(ValueError, match="needs a 'name'"):
        norm_tag({"alpha_init": 0.5})


def test_pointwise_flag():
    assert build_norm_factory("dyt").pointwise and build_norm_factory("derf").pointwise
    assert not build_norm_factory("layernorm").pointwise and not build_norm_factory("rmsnorm").pointwise


def test_factory_accepts_omegaconf():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"name": "derf", "alpha_init": 0.3, "shift_init": None, "sites": {}})
    m = build_norm_factory(cfg)(C)
    assert isinstance(m, Derf) and math.isclose(m.alpha.item(), 0.3, rel_tol=1e-6)
