"""ViT and ConvNeXt (models/vit.py, models/convnext.py): every preset with every norm, parity with timm.

Specification:
- every preset builds with every registered norm with one norm per site of the architecture (build,
  norms per site, forward, backward and meta-device init of every preset: tests/test_model_contract.py);
- with ``norm=layernorm`` every preset has exactly timm's parameter count, and each norm site adds
  exactly one scalar (``alpha``) with DyT;
- a timm state dict loads into ours with no missing or unexpected keys and the logits agree within
  1e-5 (fp32): full size for B, a one-block version of every other preset;
- the norm sites, their layouts and per-site options are the documented ones;
- ``configs/model/*.yaml`` of these families build their preset.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

import pytest
import timm
import torch
from omegaconf import OmegaConf

import models
from dyt.nn import DyT, build_norm_factory, get_norm_class
from models.vit import VisionTransformer

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"

# our preset -> the timm model it must equal
TIMM = {
    "vit_ti": "vit_tiny_patch16_224",
    "vit_s": "vit_small_patch16_224",
    "vit_b": "vit_base_patch16_224",
    "vit_l": "vit_large_patch16_224",
    "vit_b8": "vit_base_patch8_224",
    "convnext_t": "convnext_tiny",
    "convnext_s": "convnext_small",
    "convnext_b": "convnext_base",
    "convnext_l": "convnext_large",
}
SMALL = [
    "vit_digits",
    "vit_test",
    "convnext_test",
    "convnext_digits",
]  # actually run; the others are built on the meta device
SHALLOW = {"vit": {"depth": 1, "img_size": 32}, "convnext": {"depths": (1, 1, 1, 1)}}
TOL = 1e-5


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def family(preset: str) -> str:
    return preset.split("_")[0]


def n_norm_sites(model: torch.nn.Module) -> int:
    """Norm sites by the architecture's definition, independent of what the factory built."""
    if isinstance(model, VisionTransformer):
        return 2 * len(model.blocks) + 1  # attn + ffn per block, one final
    depths = [len(stage.blocks) for stage in model.stages]
    return 1 + (len(depths) - 1) + sum(depths) + 1  # stem, downsamples, one per block, final


def plain(norm: str) -> str | dict:
    """The norm config for model tests: plain PyTorch for point-wise norms (the fused kernels compile on
    first use and are tested in tests/test_norms.py; here the model is under test)."""
    return {"name": norm, "impl": "eager"} if "impl" in inspect.signature(get_norm_class(norm)).parameters else norm


@functools.cache
def meta_model(preset: str, norm: str) -> torch.nn.Module:
    """A preset built on the meta device (no memory, no init cost), shared by the tests below."""
    with torch.device("meta"):
        return models.create_model(preset, norm=norm)


def timm_model(preset: str, **kwargs) -> torch.nn.Module:
    if family(preset) == "vit":
        kwargs.setdefault("global_pool", "avg")  # the paper's ImageNet runs
    return timm.create_model(TIMM[preset], pretrained=False, **kwargs)


def test_every_preset_has_a_timm_reference_or_is_small():
    ours = [n for n in models.model_names() if family(n) in ("vit", "convnext")]
    assert sorted(ours) == sorted([*TIMM, *SMALL])


# ---- parameter counts --------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", list(TIMM))
def test_parameter_count_equals_timm_and_dyt_adds_one_alpha_per_site(preset):
    ln, dyt = meta_model(preset, "layernorm"), meta_model(preset, "dyt")
    with torch.device("meta"):
        ref = timm_model(preset)
    assert n_params(ln) == n_params(ref)
    assert n_params(dyt) == n_params(ln) + n_norm_sites(ln)


# ---- numeric parity with timm -------------------------------------------------------------------------


def random_reference(preset: str, **kwargs) -> torch.nn.Module:
    """timm's model with every parameter random, norm weights and biases included (timm's init leaves
    them at 1 and 0, which would hide a norm wired to the wrong weights). Built on the meta device and
    filled in place: no init cost."""
    with torch.device("meta"):
        ref = timm_model(preset, **kwargs)
    ref.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(
                torch.randn(p.shape, generator=gen) * 0.02
                if p.dim() > 1
                else 1 + 0.1 * torch.randn(p.shape, generator=gen)
            )
    return ref


def assert_same_logits(ours: torch.nn.Module, ref: torch.nn.Module, img_size: int) -> None:
    """Load ref's weights into ours (strict: same names, nothing missing or extra) and compare logits."""
    result = ours.load_state_dict(ref.state_dict(), strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    ours.eval()
    ref.eval()
    x = torch.randn(1, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ref(x)
        err = (ours(x) - expected).abs().max().item()
    assert expected.abs().max() > 0.1, "logits too small for the comparison to mean anything"
    assert err <= TOL, f"max abs logit difference {err:.3g} > {TOL}"


@pytest.mark.parametrize("preset", list(TIMM))
def test_one_block_version_of_every_preset_matches_timm(preset):
    overrides = SHALLOW[family(preset)]
    ref = random_reference(preset, **overrides)
    with torch.device("meta"):
        ours = models.create_model(preset, norm="layernorm", **overrides)
    assert_same_logits(ours, ref, img_size=32)


def test_convnext_for_digits_has_a_2x2_stem_and_two_stages():
    """convnext_digits (timm's ConvNeXt always has four stages, so the blocks are timm's but the preset
    has no timm twin): 8x8 digits -> 4x4 after the stem -> 2x2 after the second stage."""
    model = models.create_model("convnext_digits", norm=plain("dyt"), in_chans=1, num_classes=10)
    x = torch.randn(3, 1, 8, 8)
    assert model.forward_features(x).shape == (3, 128, 2, 2)
    assert model(x).shape == (3, 10)
    assert model.example_inputs(1)[0].shape[-2:] == (4, 4)  # the smallest image it accepts


@pytest.mark.slow  # ~5 s unloaded, 20-40 s on a busy 2-core machine
@pytest.mark.parametrize("preset", ["vit_b", "convnext_b"])
def test_full_size_b_matches_timm(preset):
    ref = random_reference(preset)
    with torch.device("meta"):
        ours = models.create_model(preset, norm="layernorm")
    assert_same_logits(ours, ref, img_size=224)


def test_token_pooling_matches_timm():
    ref = random_reference("vit_ti", depth=2, img_size=32, global_pool="token")
    ours = models.create_model("vit_ti", norm="layernorm", depth=2, img_size=32, global_pool="token")
    assert isinstance(ours.fc_norm, torch.nn.Identity) and not isinstance(ours.norm, torch.nn.Identity)
    assert_same_logits(ours, ref, img_size=32)


# ---- sites, layouts, options ---------------------------------------------------------------------------


def test_vit_norm_sites_and_per_site_options():
    norm = build_norm_factory({"name": "dyt", "sites": {"final": {"alpha_init": 0.2}, "ffn": {"alpha_init": 0.3}}})
    model = models.create_model("vit_test", norm=norm)
    assert norm.used_sites == {"attn", "ffn", "final"}
    assert isinstance(model.norm, torch.nn.Identity)  # avg pooling: the final norm is fc_norm
    assert model.fc_norm.alpha.item() == pytest.approx(0.2)
    assert all(b.norm2.alpha.item() == pytest.approx(0.3) for b in model.blocks)
    assert all(b.norm1.alpha.item() == pytest.approx(0.5) for b in model.blocks)
    assert all(m.layout == "channels_last" for m in model.modules() if isinstance(m, DyT))


def test_convnext_norm_sites_and_layouts():
    norm = build_norm_factory("dyt")
    model = models.create_model("convnext_test", norm=norm)
    assert norm.used_sites == {"stem", "downsample", "block", "final"}
    first = [model.stem[1], model.head.norm, *(stage.downsample[0] for stage in model.stages[1:])]
    assert all(m.layout == "channels_first" for m in first)
    assert all(block.norm.layout == "channels_last" for stage in model.stages for block in stage.blocks)


def test_site_option_for_a_site_the_model_lacks_is_an_error():
    with pytest.raises(ValueError, match="does not have"):
        models.create_model("vit_test", norm={"name": "dyt", "sites": {"block": {"alpha_init": 0.2}}})


def test_bad_pooling_options_are_errors():
    with pytest.raises(ValueError, match="valid choices are: avg, token"):
        models.create_model("vit_test", global_pool="max")
    with pytest.raises(ValueError, match="class_token"):
        models.create_model("vit_test", global_pool="token", class_token=False)


def test_drop_path_grows_linearly_to_the_rate():
    vit = models.create_model("vit_test", drop_path_rate=0.2)
    assert isinstance(vit.blocks[0].drop_path1, torch.nn.Identity)
    assert vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)
    convnext = models.create_model("convnext_test", drop_path_rate=0.5)
    assert convnext.stages[-1].blocks[-1].drop_path.drop_prob == pytest.approx(0.5)


def test_layer_scale_options():
    assert isinstance(models.create_model("vit_test").blocks[0].ls1, torch.nn.Identity)  # off by default
    assert models.create_model("vit_test", init_values=1e-4).blocks[0].ls1.gamma.eq(1e-4).all()
    gamma = models.create_model("convnext_test").stages[0].blocks[0].gamma
    assert torch.allclose(gamma, torch.full_like(gamma, 1e-6))
    assert models.create_model("convnext_test", ls_init_value=None).stages[0].blocks[0].gamma is None


def test_head_init_scale_scales_the_classifier():
    torch.manual_seed(0)
    base = models.create_model("convnext_test").head.fc.weight
    torch.manual_seed(0)
    scaled = models.create_model("convnext_test", head_init_scale=0.01).head.fc.weight
    assert torch.allclose(scaled, base * 0.01)


def test_no_weight_decay_names_real_parameters():
    model = models.create_model("vit_test")
    assert model.no_weight_decay() <= dict(model.named_parameters()).keys()
    assert model.no_weight_decay() == {"pos_embed", "cls_token"}


@pytest.mark.parametrize("preset", ["vit_ti", "convnext_t"])
def test_features_and_pre_logits_match_timm(preset):
    """The two halves of ``forward`` that feature extraction and linear probing use, against timm's
    ``forward_features`` and ``forward_head(pre_logits=True)`` (the logits are compared above)."""
    overrides = SHALLOW[family(preset)]
    ref = random_reference(preset, **overrides).eval()
    with torch.device("meta"):
        ours = models.create_model(preset, norm="layernorm", **overrides)
    ours.load_state_dict(ref.state_dict(), strict=True, assign=True)
    ours.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features, expected = ours.forward_features(x), ref.forward_features(x)
        assert features.shape == expected.shape
        torch.testing.assert_close(features, expected, rtol=0, atol=TOL)
        pooled, expected_pooled = (
            ours.forward_head(features, pre_logits=True),
            ref.forward_head(expected, pre_logits=True),
        )
        assert pooled.shape == expected_pooled.shape == (2, ref.num_features)
        torch.testing.assert_close(pooled, expected_pooled, rtol=0, atol=TOL)


# ---- configs --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", sorted(CONFIGS.glob("vit_*.yaml")) + sorted(CONFIGS.glob("convnext_*.yaml")), ids=lambda p: p.stem
)
def test_model_config_builds_its_preset(path):
    data = {"num_classes": 7, "img_size": 32, "in_chans": 3}
    cfg = OmegaConf.merge({"data": data}, {"model": OmegaConf.load(path)})
    assert cfg.model.name == path.stem
    with torch.device("meta"):
        model = models.create_model(cfg.model, norm="dyt")
    assert model.num_classes == 7


def test_every_preset_has_a_config():
    presets = {n for n in models.model_names() if family(n) in ("vit", "convnext")}
    assert presets == {p.stem for p in CONFIGS.glob("*.yaml") if family(p.stem) in ("vit", "convnext")}
