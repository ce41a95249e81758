"""The fused DyT/Derf kernels compute the defining formulas, values and gradients, against float64.

Every comparison is with the formula evaluated in float64 on the same (already rounded) inputs, so a
kernel cannot pass by agreeing with another fp32 implementation. fp32 tolerances are those of the
Liger-Kernel DyT tests (1e-5), applied to the alpha/shift reductions too; bf16 outputs are allowed one
bf16 rounding, and their parameter gradients (summed in fp32 from the bf16 inputs) stay at 1e-5.

The C++ CPU kernel compiles once per machine into the torch extensions cache (~10 s cold on 2 cores,
well under a second when cached); every test here shares that one build.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import dyt.nn.kernels as kernels
from dyt.nn import Derf, DyT, build_norm_factory
from dyt.nn.kernels import cpp, cpu, fast_tanh

SHAPES = {"channels_last": (3, 50, 24), "channels_first": (2, 24, 3, 5)}
FP32 = {"atol": 1e-5, "rtol": 1e-5}


def _module(cls, dim=24, *, impl="fused", layout="channels_last", dtype=torch.float32, **kwargs):
    """A norm with random, non-trivial parameters (alpha 0.8, weight ~1 +- 0.5, bias and shift ~ +-0.5)."""
    module = cls(dim, layout=layout, impl=impl, dtype=dtype, **kwargs)
    with torch.no_grad():
        module.alpha.fill_(0.8)
        for name, p in module.named_parameters():
            if name in ("weight", "bias", "shift"):
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name == "weight" else 0.0))
    return module


def _formula(module, x: torch.Tensor, params: dict | None = None) -> torch.Tensor:
    """The module's defining formula (paper Eq. 2; Derf Eq. 10), written out independently, with its
    parameters or the given stand-ins for them."""
    p = params or dict(module.named_parameters())
    alpha = p.get("alpha", module.alpha)
    f = torch.erf(alpha * x + p["shift"]) if isinstance(module, Derf) else torch.tanh(alpha * x)
    shape = (-1, 1, 1) if module.layout == "channels_first" else (-1,)
    if "weight" in p:
        f = f * p["weight"].view(shape)
    if "bias" in p:
        f = f + p["bias"].view(shape)
    return f


def _run(module, x, grad, params=None):
    """Output, input gradient and parameter gradients of ``module`` (parameters: ``params`` or its own)."""
    x = x.detach().clone().requires_grad_()
    y = module(x)
    y.backward(grad)
    return y, x.grad, {n: p.grad for n, p in (params or module).named_parameters()}


def _float64_reference(module, x, grad):
    """The formula in float64 on the same (already rounded) inputs and parameters: y, grad_x, grads."""
    params = {n: p.detach().double().requires_grad_() for n, p in module.named_parameters()}
    xd = x.detach().double().requires_grad_()
    y = _formula(module, xd, {**{n: b.double() for n, b in module.named_buffers()}, **params})
    y.backward(grad.double())
    return y, xd.grad, {n: p.grad for n, p in params.items()}


def _tol(t: torch.Tensor) -> dict:
    """fp32: the Liger-Kernel DyT test tolerance; bf16/fp16: one rounding to the stored dtype."""
    rtol = {torch.float32: 1e-5, torch.bfloat16: 2**-8, torch.float16: 2**-11}[t.dtype]
    return {"atol": 1e-5, "rtol": rtol}


def _assert_matches_float64(module, x, *, param_atol=1e-5):
    """``module`` (values, input and parameter gradients) against its formula in float64, each within
    ``_tol`` of its dtype (``param_atol`` for parameter gradients summed over very many elements)."""
    grad = torch.randn(x.shape, device=x.device).to(x.dtype)
    y, gx, gp = _run(module, x, grad)
    y_ref, gx_ref, gp_ref = _float64_reference(module, x, grad)
    assert y.shape == y_ref.shape and gx.dtype == x.dtype
    torch.testing.assert_close(y.double(), y_ref, **_tol(y), equal_nan=True)
    torch.testing.assert_close(gx.double(), gx_ref, **_tol(gx), equal_nan=True)
    assert gp.keys() == gp_ref.keys()
    for name, g in gp_ref.items():
        tol = {**_tol(gp[name]), "atol": param_atol}
        torch.testing.assert_close(gp[name].double(), g, **tol, equal_nan=True, msg=name)


# ---- accuracy of the C++ kernel's tanh and erf over the whole real line ----------------------------
FINITE_MAX = torch.finfo(torch.float32).max
LINE = torch.cat([torch.linspace(0, 12, 1_000_001), torch.logspace(-45, math.log10(FINITE_MAX), 20_000)])
LINE = torch.cat([LINE, -LINE]).float()
SPECIAL = torch.tensor([math.inf, -math.inf, FINITE_MAX, -FINITE_MAX, 9.0, 30.0, -30.0, 0.0])


def _kernel_f(fn: str, z: torch.Tensor) -> torch.Tensor:
    """f(z) through the C++ kernel (alpha 1, weight 1, bias 0, shift 0): one channel, one plane."""
    one, zero = torch.ones(1), torch.zeros(1)
    return cpp.forward(fn, z.view(1, 1, -1), one, zero, one, zero, "channels_first", torch.float32).view(-1)


def test_fast_tanh_accurate_over_the_whole_real_line():
    err = (fast_tanh(LINE).double() - torch.tanh(LINE.double())).abs().max().item()
    assert err <= 1e-6
    assert fast_tanh(SPECIAL).tolist() == [1.0, -1.0, 1.0, -1.0, 1.0, 1.0, -1.0, 0.0]
    assert fast_tanh(torch.tensor([math.nan])).isnan().all()
    assert (fast_tanh(LINE).abs() <= 1).all()


@pytest.mark.parametrize("fn,max_error", [("tanh", 5e-7), ("erf", 1e-7)])
def test_cpp_kernel_function_accuracy_saturation_and_nan(fn, max_error):
    """Largest error from float64 measured here: tanh 2.9e-7 (the (9, 8) rational after fp32 rounding),
    erf 3.8e-8 (SLEEF's 1-ulp erf; torch.erf: 3.2e-8)."""
    exact = getattr(torch, fn)
    assert (_kernel_f(fn, LINE).double() - exact(LINE.double())).abs().max().item() <= max_error
    assert _kernel_f(fn, SPECIAL).tolist() == [1.0, -1.0, 1.0, -1.0, 1.0, 1.0, -1.0, 0.0]
    assert _kernel_f(fn, torch.tensor([math.nan, 1.0])).isnan().tolist() == [True, False]
    assert (_kernel_f(fn, LINE).abs() <= 1).all()


# ---- the fused modules against the float64 formula ---------------------------------------------
@pytest.mark.parametrize("layout", list(SHAPES))
@pytest.mark.parametrize("cls", [DyT, Derf])
def test_fused_fp32_matches_float64_formula(cls, layout):
    torch.manual_seed(0)
    _assert_matches_float64(_module(cls, layout=layout), torch.randn(SHAPES[layout]) * 3)


@pytest.mark.parametrize("layout", list(SHAPES))
@pytest.mark.parametrize("cls", [DyT, Derf])
def test_fused_bf16_rounds_once_and_sums_in_fp32(cls, layout):
    torch.manual_seed(1)
    module = _module(cls, layout=layout, dtype=torch.bfloat16)
    x = (torch.randn(SHAPES[layout]) * 3).bfloat16()
    _assert_matches_float64(module, x)


def test_fused_bf16_input_with_fp32_parameters_gives_fp32():
    """Mixed precision: as the plain expression, a bf16 input and fp32 parameters give an fp32 output."""
    torch.manual_seed(2)
    _assert_matches_float64(_module(DyT), (torch.randn(SHAPES["channels_last"]) * 3).bfloat16())


@pytest.mark.parametrize("affine,bias", [(True, False), (False, False)])
def test_fused_dyt_without_bias_or_affine(affine, bias):
    torch.manual_seed(3)
    _assert_matches_float64(_module(DyT, affine=affine, bias=bias), torch.randn(SHAPES["channels_last"]) * 3)


@pytest.mark.parametrize("make", [lambda x: x.transpose(0, 1), lambda x: x[:, ::2]], ids=["transposed", "strided"])
def test_fused_non_contiguous_input(make):
    torch.manual_seed(4)
    x = make(torch.randn(50, 6, 24) * 3)
    assert not x.is_contiguous()
    _assert_matches_float64(_module(DyT), x)


def test_fused_large_tensor_reduction_over_many_threads_and_rows():
    """More rows than one fp32 block of the backward, several parallel chunks: alpha and shift (~1e3)
    still to 1e-5 relative; weight and bias sums (~500, where one fp32 ulp is 3e-5) to 5e-4."""
    torch.manual_seed(5)
    _assert_matches_float64(_module(Derf, 64), torch.randn(70_000, 64) * 3, param_atol=5e-4)


@pytest.mark.parametrize("layout", list(SHAPES))
def test_fused_zero_size_input_runs_the_kernel(layout, monkeypatch):
    calls = []
    monkeypatch.setattr(cpp, "forward", lambda *a, _f=cpp.forward: calls.append("forward") or _f(*a))
    module = _module(DyT, layout=layout)
    shape = (0, 7, 24) if layout == "channels_last" else (0, 24, 3, 5)
    x = torch.randn(shape, requires_grad=True)
    y = module(x)
    y.sum().backward()
    assert calls == ["forward"] and y.shape == shape and x.grad.shape == shape
    for name, p in module.named_parameters():
        assert torch.equal(p.grad, torch.zeros_like(p)), name  # summed over nothing: exactly zero


def test_fused_inf_and_nan_behave_like_the_formula():
    torch.manual_seed(6)
    x = torch.randn(SHAPES["channels_last"]) * 3
    x[0, 0, :3] = torch.tensor([math.inf, -math.inf, math.nan])
    _assert_matches_float64(_module(DyT), x)


@pytest.mark.parametrize("layout", ["channels_last", "channels_first"])
def test_fused_output_may_be_modified_in_place(layout):
    """torchvision's ResNet adds the shortcut into its last norm's output in place (``out += identity``):
    the fused output is a plain tensor for autograd, and the gradients stay the formula's."""
    module = _module(DyT, layout=layout)
    x = torch.randn(SHAPES[layout], dtype=torch.float64).float()
    ref, inplace = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected = _formula(module, ref) + 1.0
    expected.square().sum().backward()
    expected_alpha = module.alpha.grad.clone()
    module.zero_grad()
    out = module(inplace)
    out += 1.0
    out.square().sum().backward()
    torch.testing.assert_close(out, expected, **FP32)
    torch.testing.assert_close(inplace.grad, ref.grad, **FP32)
    torch.testing.assert_close(module.alpha.grad, expected_alpha, **FP32)


def test_fused_saves_only_the_input():
    module = DyT(24, impl="fused")
    x = torch.randn(SHAPES["channels_last"], requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        module(x)
    big = [t for t in saved if t.numel() == x.numel()]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr()


def test_auto_uses_the_cpp_kernel_on_cpu_and_eager_never_does(monkeypatch):
    calls = []
    monkeypatch.setattr(cpp, "forward", lambda *a, _f=cpp.forward: calls.append(a[0]) or _f(*a))
    x = torch.randn(SHAPES["channels_last"])
    DyT(24)(x), Derf(24)(x), DyT(24)(x.bfloat16())
    assert calls == ["tanh", "erf", "tanh"]
    DyT(24, impl="eager")(x), Derf(24, impl="eager")(x), DyT(24)(x.double()), DyT(24, squash="sigmoid")(x)
    assert calls == ["tanh", "erf", "tanh"], "eager, float64 and the Table 7 ablations run plain PyTorch"


def test_impl_option_is_validated_and_configurable():
    with pytest.raises(ValueError, match="valid choices are: auto, fused, eager"):
        DyT(8, impl="triton")
    with pytest.raises(ValueError, match="needs squash='tanh'"):
        DyT(8, squash="hardtanh", impl="fused")
    with pytest.raises(RuntimeError, match="CPU kernel takes float32 and bfloat16"):
        DyT(8, impl="fused", dtype=torch.float64)(torch.randn(2, 8, dtype=torch.float64))
    assert DyT(8, squash="hardtanh").impl == "auto"  # other squashes run plain
    assert build_norm_factory({"name": "dyt", "impl": "eager"})(8).impl == "eager"
    assert build_norm_factory({"name": "derf", "impl": "fused"})(8).impl == "fused"


# ---- building: one warning, then a fallback -------------------------------------------------------
def _unbuildable(monkeypatch, *, compiler: bool):
    def fail():
        raise RuntimeError("Error building extension 'dyt_pointwise_cpu': c++: command not found")

    monkeypatch.setattr(cpp, "ops", fail)
    monkeypatch.setattr(kernels, "_broken", {})
    monkeypatch.setattr(kernels, "_has_compiler", lambda: compiler)


def test_no_compiler_warns_once_then_runs_plain(monkeypatch):
    _unbuildable(monkeypatch, compiler=False)
    module, x = _module(DyT), torch.randn(SHAPES["channels_last"])
    with pytest.warns(RuntimeWarning, match="could not be built .*using plain PyTorch") as record:
        torch.testing.assert_close(module(x), _formula(module, x))
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(module(x), _formula(module, x))
        derf = _module(Derf)
        torch.testing.assert_close(derf(x), _formula(derf, x), **FP32)
    assert not kernels.fused_supported(x, "channels_last")


def test_failed_cpp_build_with_a_compiler_falls_back_to_inductor(monkeypatch):
    _unbuildable(monkeypatch, compiler=True)
    calls = []
    monkeypatch.setattr(cpu, "forward", lambda *a, **k: calls.append(a[0]) or torch.zeros(a[1].shape))
    module, x = _module(DyT), torch.randn(SHAPES["channels_last"])
    with pytest.warns(RuntimeWarning, match="using TorchInductor's generated kernel"):
        module(x)
    assert calls == ["tanh"] and kernels._backend("cpu")[0] == "inductor"


# ---- inside torch.compile ------------------------------------------------------------------------
class _TwoNorms(nn.Module):
    def __init__(self):
        super().__init__()
        self.dyt, self.derf = _module(DyT, impl="auto"), _module(Derf, impl="auto")

    def forward(self, x):
        return self.derf(self.dyt(x))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_dyt_and_derf_inside_torch_compile_match_float64(backend, caplog):
    """fullgraph=True (no graph break); forward and backward at fp32 tolerance against the float64
    formula, so a compiled branch that dropped alpha, weight, bias or shift fails."""
    torch.manual_seed(7)
    model, x = _TwoNorms(), torch.randn(4, 9, 24) * 3
    grad = torch.randn_like(x)
    kernels._announced.clear()  # the announcement is once per process
    with caplog.at_level(logging.INFO, logger="dyt.nn.kernels"):
        y, gx, gp = _run(torch.compile(model, fullgraph=True, backend=backend), x, grad, params=model)
    params = {n: p.detach().double().requires_grad_() for n, p in model.named_parameters()}
    xd = x.double().requires_grad_()
    y_ref = _formula(model.derf, _formula(model.dyt, xd, _prefixed(params, "dyt.")), _prefixed(params, "derf."))
    y_ref.backward(grad.double())
    torch.testing.assert_close(y.double(), y_ref, **FP32)
    torch.testing.assert_close(gx.double(), xd.grad, **FP32)
    for name, p in params.items():
        torch.testing.assert_close(gp[name].double(), p.grad, atol=1e-4, rtol=1e-5, msg=name)
    said = [r.getMessage() for r in caplog.records if "inside torch.compile" in r.getMessage()]
    assert len(said) == 1 and "fast_tanh" in said[0]


def _prefixed(params: dict, prefix: str) -> dict:
    return {n.removeprefix(prefix): p for n, p in params.items() if n.startswith(prefix)}


# ---- Triton kernels (CUDA; on CPU through Triton's interpreter) --------------------------------------
_TRITON_CHECK = """
import math, sys, torch
from dyt.nn.kernels import cuda
torch.manual_seed(0)
device = sys.argv[1]
for fn in ("tanh", "erf"):
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x, g = (torch.randn(150, 200, device=device) * 3).to(dtype), torch.randn(150, 200, device=device).to(dtype)
        a, s = torch.tensor([0.7], device=device), torch.tensor([0.1], device=device)
        w, b = torch.randn(200, device=device), torch.randn(200, device=device)
        s = s if fn == "erf" else None
        y = cuda.forward(fn, x, a, s, w, b, "channels_last", torch.float32)
        gx, *grads = cuda.backward(fn, g, x, a, s, w, "channels_last")
        # float64 formula on the same (rounded) inputs
        s0 = torch.zeros(1, device=device) if s is None else s
        xd, ad, sd, wd, bd = (t.double().requires_grad_() for t in (x, a, s0, w, b))
        f = torch.erf(ad * xd + sd) if fn == "erf" else torch.tanh(ad * xd)
        y_ref = wd * f + bd
        y_ref.backward(g.double())
        torch.testing.assert_close(y.double(), y_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(gx.double(), xd.grad, atol=1e-5, rtol=1e-5 if dtype == torch.float32 else 2**-7)
        for got, leaf, name in zip(grads, (ad, sd, wd, bd), ("alpha", "shift", "weight", "bias")):
            if got is not None:
                # sums over 30K elements that cancel to ~10-200: 1e-3 allows fp32 summation, not a 0.1% error
                torch.testing.assert_close(got.double().view(leaf.shape), leaf.grad, atol=1e-3, rtol=1e-5, msg=name)
print("ok")
"""


def _triton_check(device: str, env: dict) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _TRITON_CHECK, device], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]


@pytest.mark.slow  # a fresh interpreter running Triton's CPU interpreter: ~10 s
def test_triton_kernels_in_interpreter_match_float64_formula():
    pytest.importorskip("triton")
    _triton_check("cpu", {**os.environ, "TRITON_INTERPRET": "1"})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_triton_kernels_on_cuda_match_float64_formula():
    _triton_check("cuda", dict(os.environ))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", list(SHAPES))
@pytest.mark.parametrize("cls", [DyT, Derf])
def test_modules_on_cuda_match_float64_formula(cls, layout, dtype):
    """impl='fused' for channels_last (Triton); channels_first has no Triton kernel and runs plain (auto)."""
    torch.manual_seed(8)
    impl = "fused" if layout == "channels_last" else "auto"
    module = _module(cls, 256, impl=impl, layout=layout, dtype=dtype).cuda()
    shape = (4, 300, 256) if layout == "channels_last" else (4, 256, 8, 9)
    x = (torch.randn(shape, device="cuda") * 3).to(dtype)
    _assert_matches_float64(module, x, param_atol=1e-4)
