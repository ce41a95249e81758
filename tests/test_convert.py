"""``dyt.convert`` (dyt/nn/convert.py): retrofitting DyT into timm, Hugging Face and plain PyTorch models.

Specification:
- every LayerNorm- and RMSNorm-family module is replaced (timm ViT: LayerNorm; timm ConvNeXt:
  channels-first LayerNorm2d and channels-last LayerNorm; HF Llama: LlamaRMSNorm; nn.RMSNorm), keeping
  width, layout, affine/bias presence, device and dtype, with the old weights copied;
- converting to ``layernorm``/``rmsnorm`` gives back the very same function (same logits);
- the converted model runs forward and backward;
- BatchNorm is left alone unless ``batchnorm=True`` (then replaced with the paper's warning); norms
  inside a name-matched wrapper (diffusers' AdaLayerNormZero) are converted, the wrapper kept;
- a model with nothing to convert is an error, a look-alike norm that computes
  something else is an error, and bad options raise the factory's error.
"""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

import dyt
from dyt.nn import Derf, DyT, LayerNorm, RMSNorm

EAGER = {"impl": "eager"}  # plain PyTorch DyT: the fused kernels are tested in tests/test_norms.py


def randomize_norms(model: nn.Module) -> None:
    """Give every norm non-trivial weights and biases, so that copying them is observable."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))


def timm_vit() -> nn.Module:
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, img_size=32, num_classes=5)


def timm_convnext() -> nn.Module:
    # stem, downsampling and head norms are channels-first LayerNorm2d; block norms channels-last LayerNorm
    return timm.create_model(
        "convnext_tiny", pretrained=False, depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), num_classes=5
    )


def tiny_llama() -> nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return LlamaForCausalLM(config)


def modules_of(model: nn.Module, cls: type) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, cls)}


def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out = model(x)
    return out.logits if hasattr(out, "logits") else out


def assert_trains(model: nn.Module, x: torch.Tensor) -> None:
    model.train()
    out = model(x)
    (out.logits if hasattr(out, "logits") else out).square().mean().backward()
    dyts = modules_of(model, DyT).values()
    assert dyts and all(m.alpha.grad is not None and m.alpha.grad.isfinite().all() for m in dyts)


# ---- timm ---------------------------------------------------------------------------------------------


def test_timm_vit_to_dyt_replaces_every_layernorm_and_copies_its_weights():
    model = timm_vit()
    randomize_norms(model)
    old = {name: (m.weight.clone(), m.bias.clone()) for name, m in modules_of(model, nn.LayerNorm).items()}
    report = dyt.convert(model, "dyt", **EAGER)
    assert report.total == 2 * 2 + 1 and report.by_type == {"LayerNorm": 5}
    assert report.by_site == {"blocks.norm1": 2, "blocks.norm2": 2, "norm": 1}
    new = modules_of(model, DyT)
    assert new.keys() == old.keys() and not modules_of(model, nn.LayerNorm)
    for name, m in new.items():
        assert m.layout == "channels_last" and m.alpha.item() == 0.5
        assert torch.equal(m.weight, old[name][0]) and torch.equal(m.bias, old[name][1])
    assert_trains(model, torch.randn(2, 3, 32, 32))


def test_timm_convnext_to_dyt_keeps_each_layout():
    model = timm_convnext()
    report = dyt.convert(model, "dyt", **EAGER)
    assert report.by_type == {"LayerNorm2d": 5, "LayerNorm": 4}  # stem, 3 downsamples, head; 4 blocks
    layouts = {name: m.layout for name, m in modules_of(model, DyT).items()}
    assert layouts["stem.1"] == layouts["stages.1.downsample.0"] == layouts["head.norm"] == "channels_first"
    assert all(layouts[f"stages.{i}.blocks.0.norm"] == "channels_last" for i in range(4))
    assert_trains(model, torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize("build", [timm_vit, timm_convnext], ids=["vit", "convnext"])
def test_round_trip_to_layernorm_gives_the_same_logits(build):
    torch.manual_seed(0)
    model = build()
    randomize_norms(model)
    x = torch.randn(2, 3, 32, 32)
    before = run(model, x)
    n_norms = len(modules_of(model, nn.LayerNorm))
    dyt.convert(model, "layernorm")
    assert not modules_of(model, nn.LayerNorm) and len(modules_of(model, LayerNorm)) == n_norms
    assert torch.allclose(run(model, x), before, rtol=0, atol=1e-6)


# ---- Hugging Face -----------------------------------------------------------------------------------------


def test_hf_llama_rmsnorm_to_dyt_without_bias_and_with_per_site_alpha():
    model = tiny_llama()
    randomize_norms(model)
    gammas = {name: m.weight.clone() for name, m in model.named_modules() if type(m).__name__ == "LlamaRMSNorm"}
    report = dyt.convert(model, "dyt", sites={"model.layers.input_layernorm": {"alpha_init": 0.8}}, **EAGER)
    assert report.by_type == {"LlamaRMSNorm": 5}
    new = modules_of(model, DyT)
    assert new.keys() == gammas.keys()
    for name, m in new.items():
        assert m.bias is None and torch.equal(m.weight, gammas[name])  # RMSNorm has no bias, nor its DyT
        assert m.alpha.item() == pytest.approx(0.8 if name.endswith("input_layernorm") else 0.5)
    assert_trains(model, torch.randint(0, 64, (2, 8)))


def test_hf_llama_round_trip_to_rmsnorm_gives_the_same_logits():
    model = tiny_llama()
    randomize_norms(model)
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    before = run(model, ids)
    dyt.convert(model, "rmsnorm")
    assert len(modules_of(model, RMSNorm)) == 5
    assert torch.allclose(run(model, ids), before, rtol=0, atol=1e-5)


# ---- plain PyTorch ----------------------------------------------------------------------------------------


def test_affine_and_bias_presence_follow_the_old_module():
    model = nn.Sequential(
        nn.LayerNorm(8, elementwise_affine=False), nn.Linear(8, 8), nn.LayerNorm(8, bias=False), nn.RMSNorm(8)
    )
    dyt.convert(model, "dyt")
    assert model[0].weight is None and model[0].bias is None and isinstance(model[0].alpha, nn.Parameter)
    assert model[2].weight is not None and model[2].bias is None
    assert model[3].weight is not None and model[3].bias is None


def test_new_modules_keep_the_dtype_and_device():
    model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.LayerNorm(8, elementwise_affine=False))
    model.to(torch.float64)
    dyt.convert(model, "dyt")
    assert all(p.dtype == torch.float64 for p in model.parameters())
    with torch.device("meta"):
        meta = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
    dyt.convert(meta, "dyt")
    assert all(p.is_meta for p in meta.parameters())


def test_derf_and_options_reach_the_new_modules():
    model = timm_vit()
    dyt.convert(model, "derf", alpha_init=0.3, **EAGER)
    derfs = modules_of(model, Derf).values()
    assert len(derfs) == 5 and all(m.alpha.item() == pytest.approx(0.3) for m in derfs)


def test_a_norm_shared_by_two_parents_stays_shared():
    shared = nn.LayerNorm(8)
    model = nn.ModuleDict({"a": nn.Sequential(shared), "b": nn.Sequential(shared)})
    report = dyt.convert(model, "dyt")
    assert report.total == 1 and model["a"][0] is model["b"][0]


def test_convert_does_not_touch_the_global_random_stream():
    model = timm_vit()
    state = torch.get_rng_state()
    dyt.convert(model, "dyt")
    assert torch.equal(torch.get_rng_state(), state)


def test_report_prints_counts():
    text = str(dyt.convert(timm_vit(), "dyt"))
    assert "converted 5 norm module(s) to dyt" in text and "LayerNorm" in text and "blocks.norm1 (2)" in text


# ---- refusals -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bn", [nn.BatchNorm1d(8), nn.BatchNorm2d(8), nn.SyncBatchNorm(8)], ids=["bn1d", "bn2d", "syncbn"]
)
def test_batchnorm_is_left_alone_and_replaced_only_on_request(bn):
    model = nn.Sequential(nn.LayerNorm(8), bn)
    report = dyt.convert(model, "dyt")
    assert isinstance(model[0], DyT) and model[1] is bn
    assert report.untouched == {type(bn).__name__: 1} and "left unchanged: 1" in str(report)
    model = nn.Sequential(nn.LayerNorm(8), bn)
    with pytest.raises(ValueError, match=r"sites=\['1'\] name BatchNorm.*App\. D.*76\.2% -> 68\.9%.*batchnorm=True"):
        dyt.convert(model, "dyt", sites={"1": {"alpha_init": 0.1}})  # an explicit request to replace it
    assert isinstance(model[0], nn.LayerNorm) and model[1] is bn


def test_batchnorm_opt_in_warns_with_the_papers_result_and_keeps_the_weights():
    bn = nn.BatchNorm2d(8)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), bn)
    with pytest.warns(UserWarning, match=r"replaced 1 BatchNorm layer\(s\) with dyt: .*76\.2% -> 68\.9%"):
        report = dyt.convert(model, "dyt", batchnorm=True, sites={"1": {"alpha_init": 0.1}}, **EAGER)
    assert report.by_type == {"BatchNorm2d": 1}
    new = model[1]
    assert isinstance(new, DyT) and new.layout == "channels_first" and torch.equal(new.weight, bn.weight)
    assert model(torch.randn(2, 3, 6, 6)).shape == (2, 8, 4, 4)


def test_timm_maxvit_converts_its_layernorms_and_keeps_its_batchnorms():
    model = timm.create_model("maxvit_tiny_tf_224", pretrained=False, img_size=64)
    batchnorms = modules_of(model, nn.modules.batchnorm._BatchNorm)
    report = dyt.convert(model, "dyt")
    assert report.total == 45 and not modules_of(model, nn.LayerNorm)  # 44 LayerNorm + 1 LayerNorm2d
    assert modules_of(model, nn.modules.batchnorm._BatchNorm) == batchnorms and report.untouched == {
        "BatchNormAct2d": 34
    }
    with pytest.raises(ValueError, match="BatchNormAct2d.*may do more than normalize"):
        dyt.convert(model, "dyt", batchnorm=True)  # it fuses an activation: DyT would drop it


# ---- diffusers DiT: the LayerNorm inside AdaLayerNormZero (as the official converter) ------------------


def tiny_diffusers_dit() -> nn.Module:
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
    )


def dit_forward(model: nn.Module) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    with torch.no_grad():
        return model(x, timestep=torch.tensor([3, 500]), class_labels=torch.tensor([1, 7])).sample


def test_diffusers_dit_converts_the_layernorm_inside_adalayernormzero():
    model = tiny_diffusers_dit()
    reference = dit_forward(model)
    wrappers = {n: type(m) for n, m in model.named_modules() if type(m).__name__ == "AdaLayerNormZero"}
    report = dyt.convert(model, "layernorm")  # the same function: the output must not change
    torch.testing.assert_close(dit_forward(model), reference)
    report = dyt.convert(model, "dyt", **EAGER)
    assert report.total == 5 and set(report.by_site) == {
        "transformer_blocks.norm1.norm",
        "transformer_blocks.norm3",
        "norm_out",
    }
    assert {n: type(m) for n, m in model.named_modules() if n in wrappers} == wrappers  # wrappers kept
    inner = model.transformer_blocks[0].norm1.norm
    assert isinstance(inner, DyT) and inner.weight is None  # elementwise_affine=False: adaLN supplies it
    assert torch.isfinite(dit_forward(model)).all()


def test_nothing_to_convert_is_an_error():
    with pytest.raises(ValueError, match="no LayerNorm- or RMSNorm-family module.*GroupNorm"):
        dyt.convert(nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8)), "dyt")


def test_already_converted_model_is_an_error_naming_dyt():
    model = timm_vit()
    dyt.convert(model, "dyt")
    with pytest.raises(ValueError, match="DyT"):
        dyt.convert(model, "dyt")


class OffsetRMSNorm(nn.Module):
    """Gemma-style RMSNorm: scales by ``1 + weight``; copying ``weight`` into DyT would change the model."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps = 1e-6

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (1 + self.weight)


def test_a_look_alike_norm_that_computes_something_else_is_refused_and_nothing_changes():
    model = nn.Sequential(nn.LayerNorm(8), OffsetRMSNorm(8))
    with pytest.raises(ValueError, match=r"cannot convert 1 \(OffsetRMSNorm\): a probe shows"):
        dyt.convert(model, "dyt")
    assert isinstance(model[0], nn.LayerNorm)


def test_a_norm_over_several_dimensions_is_refused():
    with pytest.raises(ValueError, match="per-channel"):
        dyt.convert(nn.Sequential(nn.LayerNorm((4, 8))), "dyt")


def test_bad_options_raise_the_factorys_error():
    with pytest.raises(ValueError, match="not accepted by norm 'dyt'; valid options are"):
        dyt.convert(timm_vit(), "dyt", shift_init=0.1)
    with pytest.raises(ValueError, match="unknown norm 'tanh'"):
        dyt.convert(timm_vit(), "tanh")
    model = timm_vit()
    with pytest.raises(ValueError, match=r"site\(s\) \['blocks.norm3'\]"):
        dyt.convert(model, "dyt", sites={"blocks.norm3": {"alpha_init": 0.1}})
    assert not modules_of(model, DyT)  # a typo in sites converts nothing
