"""The fused DyT/Derf kernels compute what the plain PyTorch expressions compute, values and gradients.

CPU kernels are compiled by Inductor on first use (a few seconds per dtype/layout variant), so the
cases below share shapes and dtypes where they can. Row counts avoid 0/1 and equal sizes, which
Dynamo specializes on.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings

import pytest
import torch

import dyt.nn.kernels as kernels
from dyt.nn import Derf, DyT, build_norm_factory
from dyt.nn.kernels import cpu, fast_tanh

SHAPES = {"channels_last": (3, 50, 24), "channels_first": (2, 24, 3, 5)}


def _pair(cls, dim, layout="channels_last", dtype=torch.float32, **kwargs):
    """A fused and a plain module with the same random (non-trivial) parameters."""
    fused = cls(dim, layout=layout, impl="fused", dtype=dtype, **kwargs)
    with torch.no_grad():
        fused.alpha.fill_(0.8)
        for name, p in fused.named_parameters():
            if name in ("weight", "bias", "shift"):
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name == "weight" else 0.0))
    plain = cls(dim, layout=layout, impl="eager", dtype=dtype, **kwargs)
    plain.load_state_dict(fused.state_dict())
    return fused, plain


def _run(module, x, grad):
    x = x.detach().clone().requires_grad_()
    y = module(x)
    y.backward(grad)
    return y, x.grad, {n: p.grad for n, p in module.named_parameters()}


def _assert_same(fused, plain, x, atol, rtol=0.0):
    grad = torch.randn(x.shape, dtype=x.dtype)
    y_f, gx_f, gp_f = _run(fused, x, grad)
    y_p, gx_p, gp_p = _run(plain, x, grad)
    assert y_f.dtype == y_p.dtype and y_f.shape == y_p.shape
    torch.testing.assert_close(y_f, y_p, atol=atol, rtol=rtol, equal_nan=True)
    torch.testing.assert_close(gx_f, gx_p, atol=atol, rtol=rtol, equal_nan=True)
    for name, g in gp_p.items():
        # alpha and shift gradients sum over every element: allow for the summation order.
        scale = math.sqrt(x.numel()) if name in ("alpha", "shift") else math.sqrt(x.numel() / g.numel())
        torch.testing.assert_close(gp_f[name], g, atol=atol * scale, rtol=rtol, equal_nan=True, msg=name)


def test_fast_tanh_accurate_over_the_whole_real_line():
    finite_max = torch.finfo(torch.float32).max
    magnitudes = torch.cat([torch.linspace(0, 12, 2_000_001), torch.logspace(-45, math.log10(finite_max), 20_000)])
    z = torch.cat([magnitudes, -magnitudes]).float()
    err = (fast_tanh(z).double() - torch.tanh(z.double())).abs().max().item()
    assert err <= 1e-6
    special = torch.tensor([math.inf, -math.inf, finite_max, -finite_max, 9.0, 30.0, -30.0, 0.0])
    assert fast_tanh(special).tolist() == [1.0, -1.0, 1.0, -1.0, 1.0, 1.0, -1.0, 0.0]
    assert fast_tanh(torch.tensor([math.nan])).isnan().all()
    assert (fast_tanh(z).abs() <= 1).all()


@pytest.mark.parametrize("layout", list(SHAPES))
def test_fused_dyt_matches_plain_fp32(layout):
    fused, plain = _pair(DyT, 24, layout)
    _assert_same(fused, plain, torch.randn(SHAPES[layout]) * 3, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("affine,bias", [(True, False), (False, False)])
def test_fused_dyt_without_bias_or_affine(affine, bias):
    fused, plain = _pair(DyT, 24, affine=affine, bias=bias)
    _assert_same(fused, plain, torch.randn(SHAPES["channels_last"]) * 3, atol=2e-6, rtol=1e-5)


@pytest.mark.slow  # compiles the bf16 kernels (~5-10 s cold)
def test_fused_dyt_bf16_close_to_plain():
    fused, plain = _pair(DyT, 24, dtype=torch.bfloat16)
    # The fused path computes in fp32 and rounds once; plain rounds after every op.
    _assert_same(fused, plain, torch.randn(SHAPES["channels_last"], dtype=torch.bfloat16) * 3, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("make", [lambda x: x.transpose(0, 1), lambda x: x[:, ::2]], ids=["transposed", "strided"])
def test_fused_dyt_non_contiguous_input(make):
    fused, plain = _pair(DyT, 24)
    x = make(torch.randn(50, 6, 24) * 3)
    assert not x.is_contiguous()
    _assert_same(fused, plain, x, atol=2e-6, rtol=1e-5)


def test_fused_dyt_zero_size_input():
    fused, plain = _pair(DyT, 24)
    _assert_same(fused, plain, torch.randn(0, 7, 24), atol=0)


def test_fused_dyt_inf_and_nan_behave_like_plain():
    fused, plain = _pair(DyT, 24)
    x = torch.randn(SHAPES["channels_last"]) * 3
    x[0, 0, :3] = torch.tensor([math.inf, -math.inf, math.nan])
    _assert_same(fused, plain, x, atol=2e-6, rtol=1e-5)


def test_fused_derf_matches_plain_fp32():
    # Layout handling is shared with DyT (tested in both layouts above); one layout is enough here.
    fused, plain = _pair(Derf, 24)
    _assert_same(fused, plain, torch.randn(SHAPES["channels_last"]) * 3, atol=2e-6, rtol=1e-5)


@pytest.mark.slow  # compiles float64 kernels (~5-15 s cold)
@pytest.mark.parametrize("cls", [DyT, Derf])
def test_fused_gradcheck_float64(cls):
    module = cls(6, impl="fused", dtype=torch.float64)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(66, 6, dtype=torch.float64, requires_grad=True)
    params = tuple(module.parameters())

    def f(x, *p):
        return torch.func.functional_call(module, dict(zip([n for n, _ in module.named_parameters()], p)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params))


def test_fused_saves_only_the_input():
    module = DyT(24, impl="fused")
    x = torch.randn(SHAPES["channels_last"], requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        module(x)
    big = [t for t in saved if t.numel() == x.numel()]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr()


def test_impl_option_is_validated_and_configurable():
    with pytest.raises(ValueError, match="valid choices are: auto, fused, eager"):
        DyT(8, impl="triton")
    with pytest.raises(ValueError, match="needs squash='tanh'"):
        DyT(8, squash="hardtanh", impl="fused")
    assert DyT(8, squash="hardtanh").impl == "auto"  # other squashes run plain
    assert build_norm_factory({"name": "dyt", "impl": "eager"})(8).impl == "eager"
    assert build_norm_factory({"name": "derf", "impl": "fused"})(8).impl == "fused"


def test_unbuildable_kernel_warns_once_then_runs_plain(monkeypatch):
    class NoCompiler(torch._dynamo.exc.BackendCompilerFailed):  # what Inductor raises without g++
        def __init__(self):
            Exception.__init__(self, "InvalidCxxCompiler: No working C++ compiler found")

    def broken(*args, **kwargs):
        raise NoCompiler()

    monkeypatch.setattr(cpu, "forward", broken)
    monkeypatch.setattr(kernels, "_broken", {})
    fused, plain = _pair(DyT, 24)
    x = torch.randn(SHAPES["channels_last"])
    with pytest.warns(RuntimeWarning, match="could not be built"):
        torch.testing.assert_close(fused(x), plain(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(fused(x), plain(x))
    assert not kernels.fused_supported(x, "channels_last")


_TRITON_CHECK = """
import torch
from dyt.nn.kernels import cpu, cuda
torch.manual_seed(0)
for fn in ("tanh", "erf"):
    for dtype in (torch.float32, torch.bfloat16):
        x, g = (torch.randn(150, 200) * 3).to(dtype), torch.randn(150, 200).to(dtype)
        a, s, w, b = torch.tensor([0.7]), torch.tensor([0.1]), torch.randn(200), torch.randn(200)
        s = s if fn == "erf" else None
        ref_f = cpu._tanh_forward(x, a, w, b, "channels_last", torch.float32) if fn == "tanh" else \\
            cpu._erf_forward(x, a, s, w, b, "channels_last", torch.float32)
        g3, x3 = g.view(1, 150, 200), x.view(1, 150, 200)  # the CPU backward's (blocks, rows, C) view
        ref_b = cpu._tanh_backward(g3, x3, a, w, "channels_last", 1) if fn == "tanh" else \\
            cpu._erf_backward(g3, x3, a, s, w, "channels_last", 1)
        y = cuda.forward(fn, x, a, s, w, b, "channels_last", torch.float32)
        torch.testing.assert_close(y, ref_f, atol=1e-6, rtol=1e-6)
        out = cuda.backward(fn, g, x, a, s, w, "channels_last")
        tol = 1e-5 if dtype == torch.float32 else 4e-2
        for got, want in zip(out, ref_b):
            if want is not None:
                torch.testing.assert_close(got.float(), want.view(got.shape).float(), atol=tol * 100, rtol=tol)
print("ok")
"""


@pytest.mark.slow  # a fresh interpreter: ~10 s
def test_triton_kernels_in_interpreter_match_cpu_kernels():
    """The CUDA kernels, run by Triton's CPU interpreter, against the compiled CPU kernels."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", _TRITON_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 2e-6), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("cls", [DyT, Derf])
def test_fused_matches_plain_on_cuda(cls, dtype, atol):
    fused, plain = (m.cuda() for m in _pair(cls, 256, dtype=dtype))
    x = torch.randn(4, 300, 256, device="cuda", dtype=dtype) * 3
    grad = torch.randn_like(x)
    y_f, gx_f, gp_f = _run(fused, x, grad)
    y_p, gx_p, gp_p = _run(plain, x, grad)
    torch.testing.assert_close(y_f, y_p, atol=atol, rtol=atol)
    torch.testing.assert_close(gx_f, gx_p, atol=atol, rtol=atol)
    for name, g in gp_p.items():
        torch.testing.assert_close(gp_f[name], g, atol=atol * x.numel() ** 0.5, rtol=atol, msg=name)
