"""init_from and LLaMA export (dyt/weights, dyt/engine/weights.py, models/llama_hf.py).

Specification:
- ``init_from`` loads a run dir (raw or EMA weights), a timm state dict file, and a local Hugging Face
  Llama directory: with the source's norm the model computes exactly the source's function; with DyT
  each norm's weight/bias land in the DyT at its site and ``alpha`` keeps its init;
- a position embedding of another grid is resized bicubically, class token kept;
- what does not fit is one error naming missing, unexpected and mis-shaped keys and the ``ignore`` fix;
  ``ignore`` keeps a new head; a Hugging Face config with other heads / RoPE is refused;
- the report lands in ``init_from.json``;
- an RMSNorm LLaMA exports to a directory ``LlamaForCausalLM.from_pretrained`` loads with the same
  logits; a DyT LLaMA is refused for that format and round-trips through ``format="dyt"``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import LlamaForCausalLM

import models
from dyt.engine.checkpoint import save_checkpoint
from dyt.nn import DyT
from dyt.weights import (
    InitFromError,
    export_llama_hf,
    interpolate_pos_embed,
    load_exported,
    load_init_weights,
    parse_init_from,
    record_init,
)
from models.llama_hf import hf_config

DYT = {"name": "dyt", "impl": "eager"}  # plain PyTorch: the fused kernels are tested in test_norms.py
TIMM_NAME = "vit_tiny_patch16_224"
ROOT = Path(__file__).resolve().parents[1]
_SCRIPT = ROOT / "scripts" / "export_llama.py"
export_llama = importlib.util.module_from_spec(importlib.util.spec_from_file_location("export_llama", _SCRIPT))
export_llama.__spec__.loader.exec_module(export_llama)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random, norm weights and biases included (their init 1 / 0 would hide a norm wired
    to the wrong weights)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(noise * 0.02 if p.dim() > 1 else 1 + 0.1 * noise)
    return model.eval()


def norm_weights_copied_into_dyt(model: torch.nn.Module, source: dict[str, torch.Tensor]) -> int:
    """Number of DyT layers whose weight (and bias) equal the source's and whose alpha is its init."""
    n = 0
    for name, m in model.named_modules():
        if isinstance(m, DyT):
            assert torch.equal(m.weight, source[f"{name}.weight"].to(m.weight.dtype)), name
            assert m.bias is None or torch.equal(m.bias, source[f"{name}.bias"]), name
            assert m.alpha.item() == pytest.approx(m.alpha_init), name
            n += 1
    return n


# ---- a run dir -----------------------------------------------------------------------------------------


@pytest.fixture
def vit_run(tmp_path):
    """A run dir holding one checkpoint of a LayerNorm vit_test (raw and EMA weights differ)."""
    torch.manual_seed(0)
    model = randomize(models.create_model("vit_test", norm="layernorm"))
    ema = {k: v + 1 for k, v in model.state_dict().items()}
    run = tmp_path / "run"
    save_checkpoint({"model": model.state_dict(), "ema": ema, "step": 7, "config": {}}, run / "checkpoints", step=7)
    return run, model


def test_run_dir_gives_the_raw_weights_and_a_report(vit_run, tmp_path):
    run, source = vit_run
    model = models.create_model("vit_test", norm="layernorm")
    report = load_init_weights(model, str(run))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), source(x))
    assert (report.kind, report.entry, report.step, report.fresh) == ("dyt", "model", 7, {})
    written = json.loads(record_init(report, tmp_path / "new_run").read_text())
    assert written["path"].endswith("step_00000007.pt") and written["loaded"] == len(source.state_dict())


def test_run_dir_ema_weights_on_request(vit_run):
    run, source = vit_run
    model = models.create_model("vit_test", norm="layernorm")
    load_init_weights(model, {"source": str(run), "key": "ema"})
    assert all(torch.equal(v, source.state_dict()[k] + 1) for k, v in model.state_dict().items())


def test_run_dir_into_dyt_converts_the_norms(vit_run):
    run, source = vit_run
    model = models.create_model("vit_test", norm=DYT)
    report = load_init_weights(model, run)
    assert norm_weights_copied_into_dyt(model, source.state_dict()) == 5  # 2 blocks x 2 + final
    assert len(report.fresh["norm_conversion"]) == 5 and "DyT" in report.norm_conversion
    assert torch.equal(model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert model(torch.randn(2, 3, 32, 32)).isfinite().all()


def test_missing_run_dir_names_the_command_that_makes_it(tmp_path):
    model = models.create_model("vit_test")
    with pytest.raises(InitFromError, match="create it with: python train.py experiment=x"):
        load_init_weights(model, {"source": str(tmp_path / "nope"), "made_by": "python train.py experiment=x"})
    (tmp_path / "empty").mkdir()
    with pytest.raises(InitFromError, match="no checkpoint at"):
        load_init_weights(model, tmp_path / "empty")


# ---- a timm state dict ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def timm_vit():
    """timm's ViT-Ti/16 (class-token pooling, as published), random weights, two blocks."""
    with torch.device("meta"):
        ref = timm.create_model(TIMM_NAME, pretrained=False, depth=2)
    return randomize(ref.to_empty(device="cpu"))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_file_into_layernorm_vit_gives_timm_logits(timm_vit, tmp_path, suffix):
    path = tmp_path / f"vit{suffix}"
    save_file(timm_vit.state_dict(), path) if suffix == ".safetensors" else torch.save(timm_vit.state_dict(), path)
    model = models.create_model("vit_ti", norm="layernorm", depth=2, global_pool="token")
    report = load_init_weights(model, path)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (model.eval()(x) - timm_vit(x)).abs().max() <= 1e-5
    assert report.kind == "file" and report.loaded == len(timm_vit.state_dict())


def test_timm_file_into_dyt_vit_with_avg_pooling(timm_vit, tmp_path):
    """The paper's recipe: a timm LayerNorm checkpoint fine-tuned as a DyT ViT with average pooling; the
    final norm's weights move from timm's ``norm`` to our ``fc_norm``."""
    path = tmp_path / "vit.safetensors"
    save_file(timm_vit.state_dict(), path)
    model = models.create_model("vit_ti", norm=DYT, depth=2)
    report = load_init_weights(model, path)
    source = {("fc_norm" + k[4:] if k.startswith("norm.") else k): v for k, v in timm_vit.state_dict().items()}
    assert norm_weights_copied_into_dyt(model, source) == 5
    assert report.model_filter == "VisionTransformer.init_from_state_dict"
    assert model(torch.randn(1, 3, 224, 224)).isfinite().all()


def test_a_head_of_another_size_is_an_error_unless_ignored(timm_vit, tmp_path):
    path = tmp_path / "vit.safetensors"
    save_file({**timm_vit.state_dict(), "extra.weight": torch.zeros(1)}, path)
    model = models.create_model("vit_ti", norm="layernorm", depth=2, num_classes=10)
    with pytest.raises(InitFromError) as err:
        load_init_weights(model, path)
    message = str(err.value)
    assert "unexpected keys: extra.weight" in message and "missing keys: none" in message
    assert "head.weight (checkpoint (1000, 192) vs model (10, 192))" in message and "init_from.ignore" in message
    head = model.head.weight.clone()
    report = load_init_weights(model, path, ignore=["head.*", "extra.*"])
    assert torch.equal(model.head.weight, head)
    assert report.fresh == {"ignore": ["head.bias", "head.weight"]}
    assert report.dropped == ["extra.weight", "head.bias", "head.weight"]


def test_timm_name_without_the_hub_says_how_to_pass_a_file(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(InitFromError, match="init_from=/path/to/model.safetensors") as err:
        load_init_weights(models.create_model("vit_test"), f"timm:{TIMM_NAME}")
    assert "\n" not in str(err.value) and f"timm/{TIMM_NAME}" in str(err.value)


# ---- position embedding --------------------------------------------------------------------------------


def test_pos_embed_of_a_4x4_grid_is_resized_bicubically_into_8x8(vit_run):
    run, source = vit_run
    model = models.create_model("vit_test", norm="layernorm", img_size=64)  # 8x8 patches of 8 pixels
    report = load_init_weights(model, run)
    old = source.pos_embed.detach()
    grid = old[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    assert model.pos_embed.shape == (1, 65, 32)
    assert torch.equal(model.pos_embed[:, :1], old[:, :1])
    assert torch.allclose(model.pos_embed[:, 1:], expected, atol=1e-6)
    assert report.interpolated == {"pos_embed": [[1, 17, 32], [1, 65, 32]]}
    with pytest.raises(InitFromError, match="not a square grid"):
        interpolate_pos_embed(torch.zeros(1, 1 + 12, 8), (4, 4), 1)


# ---- a local Hugging Face Llama ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_llama_dir(tmp_path_factory):
    """save_pretrained of a random LlamaForCausalLM shaped like our llama_tiny."""
    with torch.device("meta"):
        config = hf_config(models.create_model("llama_tiny", norm="rmsnorm"))
    torch.manual_seed(0)
    hf = randomize(LlamaForCausalLM(config))
    path = tmp_path_factory.mktemp("hf") / "llama"
    hf.save_pretrained(path)
    return path, hf


@pytest.mark.parametrize("sharded", [False, True], ids=["one_file", "sharded"])
def test_hf_llama_dir_into_rmsnorm_llama_gives_hf_logits(hf_llama_dir, tmp_path, sharded):
    path, hf = hf_llama_dir
    if sharded:  # model.safetensors.index.json naming several files, as large checkpoints come
        path = tmp_path / "sharded"
        hf.save_pretrained(path, max_shard_size="100KB")
        assert len(list(path.glob("*.safetensors"))) > 1
    model = models.create_model("llama_tiny", norm="rmsnorm")
    report = load_init_weights(model, path)
    tokens = torch.randint(0, 512, (2, 17))
    with torch.no_grad():
        assert (model.eval()(tokens) - hf(tokens).logits).abs().max() <= 1e-5
    assert (report.kind, report.fresh) == ("huggingface", {})


def test_hf_llama_dir_into_dyt_llama_converts_norms_and_starts_embed_scale_fresh(hf_llama_dir):
    path, hf = hf_llama_dir
    model = models.create_model("llama_tiny", norm=DYT)
    report = load_init_weights(model, path)
    ours = models.llama.from_hf_state_dict(hf.state_dict())
    assert norm_weights_copied_into_dyt(model, ours) == 5
    assert torch.equal(model.output.weight, hf.lm_head.weight)
    assert model.embed_scale.item() == pytest.approx(8.0)  # sqrt(64), paper App. A
    assert report.fresh["model"] == ["embed_scale"] and len(report.fresh["norm_conversion"]) == 5
    assert model(torch.randint(0, 512, (1, 9))).isfinite().all()


def test_hf_config_with_other_heads_or_rope_is_refused(hf_llama_dir):
    path, _ = hf_llama_dir
    model = models.create_model("llama_tiny", norm="rmsnorm", rope_theta=500000.0, n_heads=2, n_kv_heads=1)
    with pytest.raises(InitFromError, match=r"rope_theta 10000.0 vs 500000.0.*set model.rope_theta=10000.0"):
        load_init_weights(model, path)


# ---- export --------------------------------------------------------------------------------------------


def test_rmsnorm_llama_exports_to_a_directory_transformers_loads(tmp_path):
    torch.manual_seed(0)
    model = randomize(models.create_model("llama_tiny", norm="rmsnorm"))
    assert export_llama_hf(model, tmp_path / "hf") == "hf"
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tokens = torch.randint(0, 512, (2, 17))
    with torch.no_grad():
        assert (model(tokens) - hf(tokens).logits).abs().max() <= 1e-5


def test_dyt_llama_is_refused_as_hf_and_round_trips_as_dyt(tmp_path, capsys):
    torch.manual_seed(0)
    model = randomize(models.create_model("llama_tiny", norm=DYT))
    with pytest.raises(ValueError, match=r"norms are DyT.*format='dyt'"):
        export_llama_hf(model, tmp_path / "hf", format="hf")
    run = tmp_path / "run"
    config = {"model": {"name": "llama_tiny"}, "norm": DYT}
    save_checkpoint({"model": model.state_dict(), "step": 1, "config": config}, run / "checkpoints", step=1)
    export_llama.main([str(run), str(tmp_path / "dyt")])  # format auto: DyT does not fit hf
    assert "(dyt format)" in capsys.readouterr().out
    exported = json.loads((tmp_path / "dyt" / "config.json").read_text())
    assert exported["norm"] == DYT and exported["model"] == {"name": "llama_tiny"} and exported["embed_scale"]
    back = load_exported(tmp_path / "dyt")
    tokens = torch.randint(0, 512, (2, 17))
    with torch.no_grad():
        assert torch.equal(back.eval()(tokens), model(tokens))
    assert back.layers[0].attention_norm.alpha.item() == model.layers[0].attention_norm.alpha.item() != 1.0


# ---- config --------------------------------------------------------------------------------------------


def test_init_from_config_forms():
    assert parse_init_from(None) is None
    assert parse_init_from("runs/x").source == "runs/x"
    spec = parse_init_from({"source": "a.pt", "ignore": "head.*", "key": "teacher"})
    assert (spec.ignore, spec.key) == (("head.*",), "teacher")
    with pytest.raises(InitFromError, match="unknown key.*'ignores'.*valid keys are: source, ignore"):
        parse_init_from({"source": "a.pt", "ignores": ["head.*"]})


def test_a_named_entry_of_a_checkpoint_dict(tmp_path, vit_run):
    _, source = vit_run
    torch.save({"teacher": source.state_dict(), "epoch": 3}, tmp_path / "dino.pth")
    model = models.create_model("vit_test", norm="layernorm")
    with pytest.raises(InitFromError, match="neither whole nor as .model.*its dict entries are: teacher"):
        load_init_weights(model, tmp_path / "dino.pth")
    assert load_init_weights(model, tmp_path / "dino.pth", key="teacher").entry == "teacher"
    assert torch.equal(model.pos_embed, source.pos_embed)


@pytest.mark.parametrize("module", ["dyt.weights", "dyt.engine.checkpoint"])
def test_weights_imports_in_a_fresh_interpreter_whichever_module_comes_first(module):
    """The documented ``from dyt.weights import load_exported`` once failed with a circular import unless
    ``dyt.engine`` had been imported first: it must load first, or after the checkpoint module it imports."""
    code = f"import {module}; from dyt.weights import load_exported, load_init_weights"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_published_layouts_are_registered_once_and_leave_timm_and_our_files_alone(timm_vit, vit_run):
    """Each PUBLISHED_FORMATS module names its own format; none claims a timm state dict or our checkpoint
    (those keep their own paths; tests/test_published_weights.py tests each layout)."""
    import importlib

    from dyt.weights import PUBLISHED_FORMATS

    modules = [importlib.import_module(name) for name in PUBLISHED_FORMATS]
    assert len({m.FORMAT for m in modules}) == len(modules) == 6
    run, source = vit_run
    ours = {"model": source.state_dict(), "step": 7, "config": {}}
    assert not any(m.detect(obj, None) for m in modules for obj in (timm_vit.state_dict(), ours))
