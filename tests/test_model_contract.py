"""The model protocol (``models/__init__.py``), for every registered preset x every ``configs/norm`` file.

A new family is picked up from the registry: it needs no entry here (its inputs come from its own
``example_inputs``). Specification, for every preset and norm config:
- it builds on the meta device with nothing materialised; every norm layer comes from the factory;
- ``wrap_units()`` are disjoint submodules; ``no_weight_decay()`` names real parameters;
  ``resolved_options()`` is JSON and accounts for every norm layer, with the config's norm;
- every norm config builds as many norms at each site as ``norm=dyt`` does (a site that one norm
  skips, or builds twice, fails);
- where a reference implementation exists, the parameter count equals its count (``REFERENCE``; with
  the site counts above, this pins the number of norm sites for every norm);
- presets under ``REAL_BELOW`` parameters are also built for real: ``torch.manual_seed(s)`` then an
  eager build equals ``torch.manual_seed(s)``, a meta build, ``to_empty`` and ``reset_parameters()``,
  bit for bit, every parameter and buffer included (non-persistent ones too, which ``state_dict``
  leaves out: HyenaDNA's filter positions, Caduceus's complement table); every weight-normed layer
  starts with its magnitude equal to its direction's norm; the values a shared bug would give both
  builds are pinned where a paper or upstream fixes them (``INIT_VALUES``); forward and backward on
  ``example_inputs`` give finite outputs and a finite gradient for every trainable parameter;
- the smallest preset of every model class also materialises under FSDP2 on 2 processes: sharded on
  the meta device, ``to_empty`` and ``reset_parameters()`` on the shards, then finite forward and
  backward (the values differ from an eager build: the shards draw from DTensor's RNG).

Run as a script, this file is the torchrun worker of the FSDP2 check.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from torch.nn.utils import parametrize
from torch.utils._pytree import tree_leaves

import models
from dyt.nn import build_norm_factory, norm_tag
from models.mae import sincos_pos_embed

ROOT = Path(__file__).resolve().parents[1]
NORM_CONFIGS = ROOT / "configs" / "norm"
REAL_BELOW = 30_000_000  # parameters; bigger presets are checked on the meta device only

# Parameters plus persistent buffers (``state_dict`` entries), with the family's own norm, and what
# DyT adds: one alpha per norm site (plus LLaMA's embed_scale). Sources: timm's vit_*_patch*_224 and
# convnext_* built with pretrained=False; DiT paper Table 1 as DiT's train.py prints it (its fixed
# position embedding counted); Hugging Face LlamaForCausalLM of the fms-fsdp llama2 configs (DyT: 65
# alphas and embed_scale for 7B); LongSafari/hyenadna-tiny-1k-seqlen ("0.44M": upstream's module shapes,
# vocabulary padded to 16, filter MLP 5-64-64-64-128, MLP 512).
REFERENCE = {
    "vit_ti": ("layernorm", 5_717_416, 25),
    "vit_s": ("layernorm", 22_050_664, 25),
    "vit_b": ("layernorm", 86_567_656, 25),
    "vit_l": ("layernorm", 304_326_632, 49),
    "vit_b8": ("layernorm", 86_576_872, 25),
    "convnext_t": ("layernorm", 28_589_128, 23),
    "convnext_s": ("layernorm", 50_223_688, 41),
    "convnext_b": ("layernorm", 88_591_464, 41),
    "convnext_l": ("layernorm", 197_767_336, 41),
    "dit_s2": ("layernorm", 32_963_360, 25),
    "dit_b4": ("layernorm", 130_475_648, 25),
    "dit_l4": ("layernorm", 458_053_760, 49),
    "dit_xl2": ("layernorm", 675_129_632, 57),
    "llama2_7b": ("rmsnorm", 6_738_415_616, 66),
    "llama2_13b": ("rmsnorm", 13_015_864_320, 82),
    "llama2_34b": ("rmsnorm", 33_743_970_304, 98),
    "llama2_70b": ("rmsnorm", 68_976_648_192, 162),
    "hyenadna_tiny_1k": ("layernorm", 436_096, 5),
}

# Initial values a paper or upstream fixes, checked on the eager build: a wrong init shared by the eager
# and the meta build passes their comparison. (preset, norm) -> {what: (value in the model, expected)}.
INIT_VALUES: dict[tuple[str, str], Callable[[torch.nn.Module], dict[str, tuple[Any, Any]]]] = {
    # LLaMA: truncated normal std 0.02 (fms-fsdp's init), alpha_init 1.0 at width 64 (paper Table 11),
    # embed_scale sqrt(dim) = 8 (paper App. A).
    ("llama_tiny", "dyt"): lambda m: {
        "feed_forward.w1 std": (m.layers[0].feed_forward.w1.weight.std().item(), pytest.approx(0.02, rel=0.1)),
        "embed_scale": (m.embed_scale.item(), 8.0),
        "attention_norm.alpha": (m.layers[0].attention_norm.alpha.item(), 1.0),
    },
    # MAE: fixed 2-D sin-cos position tables, class-token row zero (MAE's util/pos_embed.py); 4x4 patches.
    ("mae_vit_digits", "dyt"): lambda m: {
        "pos_embed": (m.pos_embed, sincos_pos_embed(64, 4)),
        "decoder_pos_embed": (m.decoder_pos_embed, sincos_pos_embed(m.decoder_pos_embed.shape[-1], 4)),
    },
}


@functools.cache
def norm_config(name: str) -> dict[str, Any]:
    """``configs/norm/<name>.yaml`` with its defaults list applied (the ablations extend ``dyt``), and
    plain PyTorch point-wise norms: their fused CPU kernels compile on first use (tests/test_norms.py)."""
    cfg = OmegaConf.load(NORM_CONFIGS / f"{name}.yaml")
    defaults = list(cfg.pop("defaults", ["_self_"]))
    merged = OmegaConf.merge(*[cfg if d == "_self_" else norm_config(d) for d in defaults])
    out = OmegaConf.to_container(merged)
    if "impl" in out:
        out["impl"] = "eager"
    return out


def state_size(model: torch.nn.Module) -> int:
    return sum(t.numel() for t in model.state_dict().values())


def build(preset: str, norm: str, device: str) -> torch.nn.Module:
    with torch.device(device):
        return models.create_model(preset, norm=norm_config(norm))


def site_counts(model: torch.nn.Module) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in model.resolved_options()["norms"]:
        counts[row["site"]] = counts.get(row["site"], 0) + row["count"]
    return counts


@functools.cache
def dyt_site_counts(preset: str) -> dict[str, int]:
    return site_counts(build(preset, "dyt", "meta"))


def check_meta_build(model: torch.nn.Module, preset: str, norm: str) -> None:
    cfg = norm_config(norm)
    real = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if not t.is_meta]
    assert not real, f"{preset}: built outside deferred_init, so not on the meta device: {real[:5]}"

    units = model.wrap_units()
    inside = {id(m) for m in model.modules()}
    assert units and all(id(u) in inside for u in units), f"{preset}: wrap_units() must list submodules"
    owned = [{id(m) for m in u.modules()} for u in units]
    assert sum(map(len, owned)) == len(set().union(*owned)), f"{preset}: wrap_units() overlap"

    if hasattr(model, "no_weight_decay"):
        assert model.no_weight_decay() <= dict(model.named_parameters()).keys()

    resolved = json.loads(json.dumps(model.resolved_options()))
    norm_cls = build_norm_factory(cfg).cls
    built = sum(isinstance(m, norm_cls) for m in model.modules())
    # Norms a model keeps whatever the config (wav2vec 2.0's conv encoder) are listed apart.
    kept = sum(r["count"] for r in resolved.get("kept_norms", []) if r["norm"] == cfg["name"])
    assert built and sum(r["count"] for r in resolved["norms"]) + kept == built
    assert {r["norm"] for r in resolved["norms"]} == {cfg["name"]}
    sites = site_counts(model)
    assert sites == dyt_site_counts(preset), (
        f"{preset}: norms per site {sites} with {norm}, with dyt {dyt_site_counts(preset)}"
    )

    if preset in REFERENCE:
        ref_norm, count, dyt_extra = REFERENCE[preset]
        expected = {ref_norm: count, "dyt": count + dyt_extra}.get(norm_tag(cfg))
        assert expected is None or state_size(model) == expected, (preset, norm, state_size(model))


def check_meta_init_equals_eager_init(preset: str, norm: str, seed: int = 3) -> torch.nn.Module:
    torch.manual_seed(seed)
    eager = build(preset, norm, "cpu")
    torch.manual_seed(seed)
    meta = build(preset, norm, "meta").to_empty(device="cpu")
    with torch.no_grad():
        for t in [*meta.parameters(), *meta.buffers()]:
            t.fill_(math.nan if t.is_floating_point() else -1)  # what reset_parameters() misses stays visible
    meta.reset_parameters()
    a, b = every_tensor(eager), every_tensor(meta)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{preset}: meta build + reset_parameters() differs from the eager build at {differ[:5]}"
    return eager


def every_tensor(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers, the non-persistent buffers that ``state_dict`` leaves out included."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def check_init_values(model: torch.nn.Module, preset: str, norm: str) -> None:
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight") and hasattr(module.parametrizations.weight, "original1"):
            # weight norm starts as the identity: magnitude g = ||v|| (torch.nn.utils.parametrizations.weight_norm)
            torch.testing.assert_close(module.weight, module.parametrizations.weight.original1, msg=f"{preset}.{name}")
    if (preset, norm) in INIT_VALUES:
        for what, (value, expected) in INIT_VALUES[preset, norm](model).items():
            same = torch.equal(value, expected) if torch.is_tensor(value) else value == expected
            assert same, f"{preset}: {what} is {value} at init, expected {expected}"


def check_forward_backward(model: torch.nn.Module, preset: str) -> None:
    out = model(*model.example_inputs(2))
    if dataclasses.is_dataclass(out):  # e.g. wav2vec 2.0's pretraining outputs
        out = [getattr(out, f.name) for f in dataclasses.fields(out)]
    outputs = [t for t in tree_leaves(out) if torch.is_tensor(t) and t.is_floating_point()]
    # -inf is allowed where a model masks on purpose (wav2vec 2.0's distractors equal to the target).
    assert outputs and all(not t.isnan().any() and not (t == math.inf).any() for t in outputs), f"{preset}: NaN"
    sum(t[t.isfinite()].float().square().mean() for t in outputs).backward()
    bad = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.isfinite().all())
    ]
    assert not bad, f"{preset}: trainable parameters without a finite gradient (DDP needs one for each): {bad[:5]}"


@pytest.mark.parametrize("norm", sorted(p.stem for p in NORM_CONFIGS.glob("*.yaml")))
@pytest.mark.parametrize("preset", models.model_names())
def test_model_contract(preset, norm, one_thread):
    try:
        meta = build(preset, norm, "meta")
    except ValueError as e:  # BatchNorm (channels-first only) is refused by a model with token sites
        assert norm == "batchnorm" and "built only at channels-first sites" in str(e), str(e)
        return
    check_meta_build(meta, preset, norm)
    if state_size(meta) < REAL_BELOW:
        eager = check_meta_init_equals_eager_init(preset, norm)
        check_init_values(eager, preset, norm)
        check_forward_backward(eager, preset)


def smallest_of_each_class() -> list[str]:
    sizes = {preset: build(preset, "dyt", "meta") for preset in models.model_names()}
    smallest: dict[type, str] = {}
    for preset, model in sizes.items():
        best = smallest.get(type(model))
        if best is None or state_size(model) < state_size(sizes[best]):
            smallest[type(model)] = preset
    return sorted(smallest.values())


@pytest.mark.distributed
def test_smallest_preset_of_each_class_materialises_under_fsdp2():
    presets = smallest_of_each_class()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__, *presets]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(json.loads(done.stdout.strip().splitlines()[-1])) == presets


def _fsdp_worker(presets: list[str]) -> None:
    """torchrun entry: shard each preset on the meta device, materialise, run forward and backward."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo")
    for preset in presets:
        torch.manual_seed(0)
        model = build(preset, "dyt", "meta")
        for unit in model.wrap_units():
            fully_shard(unit)
        fully_shard(model)
        model.to_empty(device="cpu")
        model.reset_parameters()
        assert all(t.full_tensor().isfinite().all() for t in model.parameters()), preset
        check_forward_backward(model, preset)
    if dist.get_rank() == 0:
        print(json.dumps(presets), flush=True)
    del model
    dist.destroy_process_group()
    os._exit(0)  # skip interpreter teardown: avoids gloo's exit-time SIGABRT race


if __name__ == "__main__":
    _fsdp_worker(sys.argv[1:])
