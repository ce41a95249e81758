"""init_from for the published checkpoints of every family (``models.PUBLISHED_FORMATS``).

Specification, per layout, offline and at tiny sizes:
- a randomly initialised reference saved in the released layout loads into our ``norm=layernorm`` (or
  RMSNorm) model, whose outputs then equal the reference's: Hugging Face ``ViTMAEForPreTraining`` (both
  spellings of its names) into MAE and into a ViT; ``Wav2Vec2ForPreTraining``; DINO's ``main_dino.py``
  checkpoint (``student`` / ``teacher`` with ``module.``, ``args`` a Namespace) into DINO and a ViT, and its
  backbone-only release; fairseq's ``model`` + ``cfg`` / ``args``; HyenaDNA's standalone state dict (plain
  and as ``weights.ckpt``); Caduceus's Hugging Face layout, unfused and fused: a reference forward that
  follows upstream's fused ``RCPSMambaBlock`` (second half = forward strand, halves swapped each block)
  equals ours after the mapping;
- ``norm=dyt`` loads the same files: each norm's weight/bias land in the DyT, ``alpha`` keeps its init;
- a key the layout lacks is refused in one error naming it; a config that does not fit the model
  (wav2vec 2.0's norm layout, HyenaDNA's filter buffers, Caduceus's odd fused depth) is refused.
Where upstream code cannot be installed (DINO, fairseq, HyenaDNA, Caduceus) the reference is our model's
own LayerNorm forward with its weights written under upstream's names (the names come from the upstream
files each converter cites).
"""

from __future__ import annotations

import argparse
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import ViTMAEForPreTraining, Wav2Vec2ForPreTraining

import models
from dyt.tasks.mae import mae_loss
from dyt.weights import InitFromError, load_init_weights
from models.caduceus import Mamba
from models.dino import DINO
from models.mae import MaskedAutoencoder
from models.wav2vec2 import Wav2Vec2
from models.wav2vec2_hf import hf_config as w2v_hf_config
from models.wav2vec2_layers import sample_mask
from tests.test_mae import TINY as MAE_TINY
from tests.test_mae import hf_config as mae_hf_config
from tests.test_wav2vec2_parity import HF_NO_DROPOUT, MODES, SMALL
from tests.test_weights import DYT, norm_weights_copied_into_dyt, randomize

# ---- Hugging Face ViTMAEForPreTraining ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_mae():
    torch.manual_seed(0)
    return randomize(ViTMAEForPreTraining(mae_hf_config(True)))


@pytest.mark.parametrize("spelling", ["saved", "hub", "modern"])
def test_hf_vitmae_into_mae_gives_its_reconstruction(hf_mae, tmp_path, spelling):
    """``saved``: save_pretrained's file (transformers 4 names, decoder blocks ``decoder_encoder.layer``);
    ``hub``: facebook/vit-mae-*'s files (``decoder.decoder_layers``); ``modern``: transformers 5 names."""
    hf_mae.save_pretrained(tmp_path)
    if spelling != "saved":
        state = load_file(tmp_path / "model.safetensors")
        state = {k.replace("decoder_encoder.layer.", "decoder_layers."): v for k, v in state.items()}
        assert "decoder.decoder_layers.0.attention.attention.query.weight" in state
        save_file(state if spelling == "hub" else hf_mae.state_dict(), tmp_path / "model.safetensors")
    ours = MaskedAutoencoder("layernorm", **MAE_TINY)
    report = load_init_weights(ours, tmp_path)
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        pred, mask = ours.eval()(imgs, noise=noise)
        loss = mae_loss(ours, imgs, pred, mask)
        ref = hf_mae(pixel_values=imgs, noise=noise)
    assert report.kind == "hf_vitmae" and torch.equal(mask, ref.mask)
    assert (pred - ref.logits).abs().max() < 1e-5 and abs(loss.item() - ref.loss.item()) < 1e-5


def test_hf_vitmae_into_vit_gives_its_encoder_features(hf_mae, tmp_path):
    """MAE fine-tuning: the encoder into a ViT (decoder dropped). With no masking and noise in position order,
    Hugging Face's encoder sees every patch in place, as the ViT does."""
    hf_mae.save_pretrained(tmp_path)
    vit = models.create_model(
        "vit_ti", norm="layernorm", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, global_pool="token"
    )
    load_init_weights(vit, tmp_path, ignore=["head.*"])
    imgs = torch.randn(2, 3, 32, 32)
    hf_mae.config.mask_ratio = 0.0
    with torch.no_grad():
        ref = hf_mae.vit(pixel_values=imgs, noise=torch.arange(16.0).expand(2, -1)).last_hidden_state
        assert (vit.eval().forward_features(imgs) - ref).abs().max() < 1e-5


def test_hf_vitmae_into_dyt_mae_converts_the_norms(hf_mae, tmp_path):
    hf_mae.save_pretrained(tmp_path)
    ours = MaskedAutoencoder(DYT, **MAE_TINY)
    report = load_init_weights(ours, tmp_path)
    reference = MaskedAutoencoder("layernorm", **MAE_TINY)
    load_init_weights(reference, tmp_path)
    assert norm_weights_copied_into_dyt(ours, reference.state_dict()) == 10  # 2 x 2 x 2 blocks + 2 final
    assert "DyT" in report.norm_conversion


def test_hf_vitmae_with_a_foreign_or_missing_key_is_refused_naming_it(hf_mae, tmp_path):
    state = {**hf_mae.state_dict(), "vit.pooler.dense.weight": torch.zeros(2, 2)}
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    hf_mae.config.save_pretrained(tmp_path)
    with pytest.raises(InitFromError, match=r"init_from \(hf_vitmae\): unexpected key\(s\) vit\.pooler\.dense\.weight"):
        load_init_weights(MaskedAutoencoder("layernorm", **MAE_TINY), tmp_path)
    state = {k: v for k, v in hf_mae.state_dict().items() if k != "vit.layers.1.attention.v_proj.bias"}
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    with pytest.raises(InitFromError, match=r"missing key\(s\) 'vit\.layers\.1\.attention\.v_proj\.bias'"):
        load_init_weights(MaskedAutoencoder("layernorm", **MAE_TINY), tmp_path)


# ---- Hugging Face Wav2Vec2ForPreTraining -------------------------------------------------------------------


def _w2v(mode: str = "base", norm="layernorm") -> Wav2Vec2:
    return Wav2Vec2(norm, **SMALL, **MODES[mode])


def _projected_states(ours: Wav2Vec2, hf: Wav2Vec2ForPreTraining) -> tuple[torch.Tensor, torch.Tensor]:
    """Both models' context vectors (``final_proj`` / ``project_hid``) for one batch and one mask."""
    audio = torch.randn(2, 6000)
    mask = sample_mask(2, int(hf._get_feat_extract_output_lengths(6000)), 0.5, 3)
    with torch.no_grad():
        return ours.eval()(audio, mask=mask).projected_states, hf.eval()(audio, mask_time_indices=mask).projected_states


@pytest.mark.parametrize("mode", list(MODES))
def test_hf_wav2vec2_dir_gives_its_context_vectors(mode, tmp_path):
    torch.manual_seed(0)
    hf = randomize(Wav2Vec2ForPreTraining(w2v_hf_config(_w2v(mode), **HF_NO_DROPOUT)))
    hf.save_pretrained(tmp_path)
    ours = _w2v(mode)
    assert load_init_weights(ours, tmp_path).kind == "hf_wav2vec2"
    torch.testing.assert_close(*_projected_states(ours, hf), atol=1e-5, rtol=1e-5)
    dyt = _w2v(mode, DYT)
    load_init_weights(dyt, tmp_path)
    assert norm_weights_copied_into_dyt(dyt, ours.state_dict()) > 0


def test_hf_wav2vec2_of_another_norm_layout_is_refused(tmp_path):
    Wav2Vec2ForPreTraining(w2v_hf_config(_w2v("large"), **HF_NO_DROPOUT)).save_pretrained(tmp_path)
    with pytest.raises(
        InitFromError, match="layer_norm_first True vs False in the model; extractor_mode layer_norm vs default"
    ):
        load_init_weights(_w2v("base"), tmp_path)


# ---- fairseq wav2vec 2.0 -----------------------------------------------------------------------------------


def fairseq_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our wav2vec 2.0 weights under fairseq's Wav2Vec2Model names (old weight_norm spelling)."""
    rules = [
        (r"conv_layers\.(\d+)\.conv\.", r"conv_layers.\1.0."),
        (r"conv_layers\.0\.norm\.(weight|bias)$", r"conv_layers.0.2.\1"),  # GroupNorm (default mode)
        (r"conv_layers\.(\d+)\.norm\.", r"conv_layers.\1.2.1."),  # LayerNorm between transposes
        (r"^post_extract_norm\.", "layer_norm."),
        (r"pos_conv\.conv\.parametrizations\.weight\.original0", "pos_conv.0.weight_g"),
        (r"pos_conv\.conv\.parametrizations\.weight\.original1", "pos_conv.0.weight_v"),
        (r"pos_conv\.conv\.bias", "pos_conv.0.bias"),
        (r"^encoder\.norm\.", "encoder.layer_norm."),
        (r"quantizer\.codevectors", "quantizer.vars"),
    ]
    out = {}
    for key, value in state.items():
        for pattern, new in rules:
            if re.search(pattern, key):
                key = re.sub(pattern, new, key)
                break
        out[key] = value
    return out


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("config", ["cfg", "args"])
def test_fairseq_checkpoint_gives_the_same_model(mode, config, tmp_path):
    torch.manual_seed(0)
    source = randomize(_w2v(mode))
    fields = {key: MODES[mode][key] for key in ("layer_norm_first", "extractor_mode", "conv_bias")}
    ckpt = {"model": fairseq_names(source.state_dict()), "optimizer_history": [], "extra_state": {"epoch": 3}}
    ckpt.update(
        {"cfg": {"model": {"_name": "wav2vec2", **fields}}, "args": None}
        if config == "cfg"
        else {"args": argparse.Namespace(**fields)}
    )
    torch.save(ckpt, tmp_path / "checkpoint_best.pt")
    ours = _w2v(mode)
    assert load_init_weights(ours, tmp_path / "checkpoint_best.pt").kind == "fairseq_wav2vec2"
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in ours.state_dict().items())
    dyt = _w2v(mode, DYT)
    load_init_weights(dyt, tmp_path / "checkpoint_best.pt")
    assert norm_weights_copied_into_dyt(dyt, source.state_dict()) > 0


def test_fairseq_checkpoint_of_another_layout_or_with_a_foreign_key_is_refused(tmp_path):
    state = fairseq_names(_w2v("base").state_dict())
    torch.save({"model": state, "cfg": {"model": {"layer_norm_first": True}}}, tmp_path / "large.pt")
    with pytest.raises(InitFromError, match="layer_norm_first True vs False in the model"):
        load_init_weights(_w2v("base"), tmp_path / "large.pt")
    torch.save({"model": {**state, "w2v_encoder.proj.weight": torch.zeros(1)}, "cfg": {}}, tmp_path / "ctc.pt")
    with pytest.raises(InitFromError, match=r"unexpected key\(s\) w2v_encoder\.proj\.weight"):
        load_init_weights(_w2v("base"), tmp_path / "ctc.pt")


# ---- official DINO -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dino():
    torch.manual_seed(0)
    model = randomize(models.create_model("dino_vit_digits", norm="layernorm", depth=2))
    with torch.no_grad():  # a teacher that is not the student
        for p in model.teacher.parameters():
            p.add_(0.01)
    return model


def dino_full_checkpoint(model: DINO) -> dict:
    """main_dino.py's save_dict: the DDP student (module.), the teacher (no DDP for a ViT), args, loss."""
    state = model.state_dict()
    return {
        "student": {"module." + k[len("student.") :]: v for k, v in state.items() if k.startswith("student.")},
        "teacher": {k[len("teacher.") :]: v for k, v in state.items() if k.startswith("teacher.")},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
        "epoch": 100,
        "args": argparse.Namespace(arch="vit_small", patch_size=16, out_dim=65536),
        "dino_loss": {"center": torch.zeros(1, 1024)},
    }


def test_dino_training_checkpoint_into_dino_and_into_a_vit(dino, tmp_path):
    path = tmp_path / "checkpoint.pth"
    torch.save(dino_full_checkpoint(dino), path)
    ours = models.create_model("dino_vit_digits", norm="layernorm", depth=2)
    assert load_init_weights(ours, path).kind == "dino_official"
    assert all(torch.equal(v, dino.state_dict()[k]) for k, v in ours.state_dict().items())
    vit = models.create_model("vit_digits", norm="layernorm", depth=2, global_pool="token")
    load_init_weights(vit, path, ignore=["head.*"])
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(
            vit.eval().forward_head(vit.forward_features(x), pre_logits=True), dino.teacher.backbone.eval()(x)
        )
    dyt = models.create_model("dino_vit_digits", norm=DYT, depth=2)
    load_init_weights(dyt, path)
    assert norm_weights_copied_into_dyt(dyt, dino.state_dict()) == 10  # (2 blocks x 2 + final) x 2 networks


def test_dino_backbone_release_starts_both_backbones_and_fresh_heads(dino, tmp_path):
    path = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(
        {k[len("teacher.backbone.") :]: v for k, v in dino.state_dict().items() if k.startswith("teacher.backbone.")},
        path,
    )
    ours = models.create_model("dino_vit_digits", norm="layernorm", depth=2)
    report = load_init_weights(ours, path)
    assert report.kind == "dino_official" and len(report.fresh["model"]) == 16  # 8 head tensors x 2
    for net in (ours.student, ours.teacher):
        assert all(torch.equal(v, dino.teacher.backbone.state_dict()[k]) for k, v in net.backbone.state_dict().items())


def test_dino_checkpoint_with_a_foreign_key_is_refused_naming_it(dino, tmp_path):
    ckpt = dino_full_checkpoint(dino)
    ckpt["student"]["module.head.prototypes.weight"] = torch.zeros(2)
    torch.save(ckpt, tmp_path / "checkpoint.pth")
    with pytest.raises(
        InitFromError, match=r"dino_official.*'student'.*head\.prototypes\.weight|head\.prototypes.*'student'"
    ):
        load_init_weights(
            models.create_model("dino_vit_digits", norm="layernorm", depth=2), tmp_path / "checkpoint.pth"
        )


# ---- HyenaDNA ----------------------------------------------------------------------------------------------


def hyena_upstream(model) -> dict[str, torch.Tensor]:
    """Our HyenaDNA's weights under standalone_hyenadna.py's HyenaDNAModel names, with its fixed buffers
    (pos_emb.z / t, modulation.deltas) and the shared Sin's frequency at each of its three uses."""
    rules = [
        (r"^embed\.weight", "backbone.embeddings.word_embeddings.weight"),
        (r"^norm_f\.", "backbone.ln_f."),
        (r"\.mixer\.filter\.mlp_in\.", ".mixer.filter_fn.implicit_filter.0."),
        (r"\.mixer\.filter\.mlp_hidden\.0\.", ".mixer.filter_fn.implicit_filter.2."),
        (r"\.mixer\.filter\.mlp_hidden\.1\.", ".mixer.filter_fn.implicit_filter.4."),
        (r"\.mixer\.filter\.mlp_out\.", ".mixer.filter_fn.implicit_filter.6."),
        (r"\.mixer\.filter\.act\.freq", ".mixer.filter_fn.implicit_filter.1.freq"),
        (r"\.mixer\.filter\.bias", ".mixer.filter_fn.bias"),
        (r"^head\.", "head.output_transform."),
    ]
    out = {}
    for key, value in model.state_dict().items():
        for pattern, new in rules:
            key = re.sub(pattern, new, key)
        out[key if key.startswith(("backbone.", "head.")) else "backbone." + key] = value
    for i, layer in enumerate(model.layers):
        f, p = layer.mixer.filter, f"backbone.layers.{i}.mixer.filter_fn."
        out.update({p + "pos_emb.z": f.z, p + "pos_emb.t": f.t, p + "modulation.deltas": f.deltas})
        out.update({p + f"implicit_filter.{j}.freq": f.act.freq for j in (3, 5)})
    return out


@pytest.mark.parametrize("lightning", [False, True])
def test_hyenadna_release_gives_the_same_logits(tmp_path, lightning):
    torch.manual_seed(0)
    source = randomize(models.create_model("hyenadna_cpu", norm="layernorm"))
    state = hyena_upstream(source)
    assert "backbone.layers.1.mixer.filter_fn.implicit_filter.6.weight" in state
    obj = {"state_dict": {"model." + k: v for k, v in state.items()}, "epoch": 3} if lightning else state
    torch.save(obj, tmp_path / "weights.ckpt")
    ours = models.create_model("hyenadna_cpu", norm="layernorm")
    assert load_init_weights(ours, tmp_path / "weights.ckpt").kind == "hyenadna"
    tokens = torch.randint(7, 12, (2, 40))
    with torch.no_grad():
        assert torch.equal(ours.eval()(tokens), source(tokens))
    dyt = models.create_model("hyenadna_cpu", norm=DYT)
    load_init_weights(dyt, tmp_path / "weights.ckpt")
    assert norm_weights_copied_into_dyt(dyt, source.state_dict()) == 5  # 2 blocks x 2 + ln_f


def test_hyenadna_release_of_another_length_or_with_foreign_or_missing_keys_is_refused(tmp_path):
    state = hyena_upstream(models.create_model("hyenadna_cpu", norm="layernorm"))
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(InitFromError, match=r"pos_emb\.z \(1, 258, 5\) is not our model's \(1, 130, 5\)"):
        load_init_weights(models.create_model("hyenadna_cpu", norm="layernorm", l_max=130), tmp_path / "w.pt")
    torch.save({**state, "backbone.layers.0.mixer.Wqkv.weight": torch.zeros(1)}, tmp_path / "w.pt")
    with pytest.raises(InitFromError, match=r"unexpected key\(s\) backbone\.layers\.0\.mixer\.Wqkv\.weight"):
        load_init_weights(models.create_model("hyenadna_cpu", norm="layernorm"), tmp_path / "w.pt")
    torch.save({k: v for k, v in state.items() if not k.startswith("backbone.ln_f.")}, tmp_path / "w.pt")
    with pytest.raises(InitFromError, match=r"missing keys: norm_f\.bias, norm_f\.weight; unexpected keys: none"):
        load_init_weights(models.create_model("hyenadna_cpu", norm="layernorm"), tmp_path / "w.pt")


# ---- Caduceus ----------------------------------------------------------------------------------------------

CADUCEUS = dict(d_model=16, d_state=4, norm="rmsnorm")
_SCAN_KEYS = ("conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias", "A_log", "D")


def caduceus_upstream(n_layer: int, rcps: bool, fused: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random CaduceusForMaskedLM state dict (modeling_caduceus.py / modeling_rcps.py names; the rev
    Mamba's projections and the LM head tied, as upstream ties them)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = models.create_model("caduceus_cpu", n_layer=1, rcps=False, **CADUCEUS).state_dict()

    def rand(shape, scale=0.2, base=0.0):
        return base + scale * torch.randn(shape, generator=gen)

    d = CADUCEUS["d_model"]
    emb = rand((16, d))
    wrap = "submodule." if rcps else ""
    out = {"caduceus.backbone.embeddings.word_embeddings." + ("embedding.weight" if rcps else "weight"): emb}
    for i in range(n_layer):
        p = f"caduceus.backbone.layers.{i}."
        in_proj, out_proj = rand((4 * d, d)), rand((d, 2 * d))
        out[p + ("norm.weight" if fused or not rcps else "norm.submodule.weight")] = rand((d,), 0.1, 1.0)
        for branch in ("fwd", "rev"):
            q = f"{p}mixer.{wrap}mamba_{branch}."
            out[q + "in_proj.weight"], out[q + "out_proj.weight"] = in_proj, out_proj
            for k in _SCAN_KEYS:
                out[q + k] = rand(shapes[f"layers.0.mixer.fwd.{k}"].shape, 0.3, 1.0 if k in ("A_log", "D") else 0.0)
    out["caduceus.backbone.norm_f." + ("weight" if fused or not rcps else "submodule.weight")] = rand((d,), 0.1, 1.0)
    out["lm_head.lm_head.weight" if rcps else "lm_head.weight"] = emb
    if rcps:
        complement = models.create_model("caduceus_cpu", n_layer=1, **CADUCEUS).complement
        out["caduceus.backbone.embeddings.word_embeddings.complement_map"] = out["lm_head.complement_map"] = complement
    return out


def rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """mamba_ssm's rms_norm_fn (eps 1e-5) without the residual add."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w


def caduceus_reference(up: dict[str, torch.Tensor], tokens: torch.Tensor, n_layer: int, fused: bool) -> torch.Tensor:
    """CaduceusForMaskedLM's logits written after modeling_caduceus.py and modeling_rcps.py (RC-shared):
    RCPSEmbedding, then per block RCPSMambaBlock's fused branch (``fused``: second half as the forward
    strand, residual halves concatenated in the order the branch writes them) or RCPSAddNormWrapper, the
    RCPSWrapper'd BiMambaWrapper, the final norm and RCPSLMHead. Each Mamba is one direction of ours."""
    b = "caduceus.backbone."
    d = CADUCEUS["d_model"]
    rc = lambda x: x.flip(-2, -1)  # noqa: E731 - RCPSWrapper.rc
    comp = up[b + "embeddings.word_embeddings.complement_map"]
    emb = up[b + "embeddings.word_embeddings.embedding.weight"]
    h = torch.cat([F.embedding(tokens, emb), rc(F.embedding(comp[tokens.flip(-1)], emb))], dim=-1)
    residual = None
    for i in range(n_layer):
        p = f"{b}layers.{i}."
        w = up.get(p + "norm.weight", up.get(p + "norm.submodule.weight"))  # fused / unfused checkpoint
        if fused:
            s = h if residual is None else h + residual
            h_fwd, r_fwd = rms(s[..., d:], w), s[..., d:]
            h_rc, r_rc = rms(s[..., :d].flip(-2, -1), w), s[..., :d].flip(-2, -1)
            h, residual = torch.cat([h_fwd, h_rc.flip(-2, -1)], -1), torch.cat([r_fwd, r_rc.flip(-2, -1)], -1)
        else:
            residual = h if residual is None else h + residual
            h = torch.cat([rms(residual[..., :d], w), rc(rms(rc(residual[..., d:]), w))], -1)
        mambas = []
        for branch in ("fwd", "rev"):
            m = Mamba(d, d_state=CADUCEUS["d_state"], bidirectional=False)
            q = f"{p}mixer.submodule.mamba_{branch}."
            m.load_state_dict(
                {
                    (k if k.endswith("_proj.weight") and "x_" not in k and "dt_" not in k else f"fwd.{k}"): up[q + k]
                    for k in ("in_proj.weight", "out_proj.weight", *_SCAN_KEYS)
                }
            )
            mambas.append(m)

        def bimamba(x, fwd=mambas[0], rev=mambas[1]):
            return fwd(x) + rev(x.flip(1)).flip(1)

        h = torch.cat([bimamba(h[..., :d]), rc(bimamba(rc(h[..., d:])))], -1)
    wf = up.get(b + "norm_f.weight", up.get(b + "norm_f.submodule.weight"))
    s = h + residual
    out = torch.cat([rms(s[..., :d], wf), rc(rms(rc(s[..., d:]), wf))], -1)
    head = up["lm_head.lm_head.weight"]
    return F.linear(out[..., :d], head) + F.linear(out[..., d:].flip(-1), head[comp])


@pytest.mark.parametrize("fused", [True, False])
def test_caduceus_ps_checkpoint_computes_upstreams_function(fused, tmp_path):
    """The fused path's halves are mapped: our model equals the fused reference (and the unfused one)."""
    up = caduceus_upstream(4, rcps=True, fused=fused)
    # save_pretrained keeps one name of each tied tensor (safetensors refuses shared memory)
    tied = ("mamba_rev.in_proj.", "mamba_rev.out_proj.", "lm_head.")
    save_file(
        {k: v.contiguous() for k, v in up.items() if not any(t in k for t in tied)}, tmp_path / "model.safetensors"
    )
    (tmp_path / "config.json").write_text(
        f'{{"model_type": "caduceus", "rcps": true, "fused_add_norm": {str(fused).lower()}}}'
    )
    ours = models.create_model("caduceus_cpu", n_layer=4, **CADUCEUS)
    assert load_init_weights(ours, tmp_path).kind == "hf_caduceus"
    tokens = torch.randint(7, 12, (2, 24))
    with torch.no_grad():
        ref = caduceus_reference(up, tokens, 4, fused)
        assert (ours.eval()(tokens) - ref).abs().max() < 1e-4
        if fused:  # the mapping matters: the unfused reading of the same weights is another function
            assert (caduceus_reference(up, tokens, 4, False) - ref).abs().max() > 1e-2


def test_caduceus_fused_mapping_without_the_config_and_into_dyt(tmp_path):
    """The layout alone (bare ``norm.weight`` of an RC block) says fused; RMSNorm weights go into DyT."""
    up = caduceus_upstream(2, rcps=True, fused=True)
    torch.save(up, tmp_path / "caduceus.bin")
    ours = models.create_model("caduceus_cpu", n_layer=2, **CADUCEUS)
    load_init_weights(ours, tmp_path / "caduceus.bin")
    tokens = torch.randint(7, 12, (2, 24))
    with torch.no_grad():
        assert (ours.eval()(tokens) - caduceus_reference(up, tokens, 2, True)).abs().max() < 1e-4
    dyt = models.create_model("caduceus_cpu", n_layer=2, **{**CADUCEUS, "norm": DYT})
    report = load_init_weights(dyt, tmp_path / "caduceus.bin")
    assert torch.equal(dyt.norm_f.weight, up["caduceus.backbone.norm_f.weight"]) and "DyT" in report.norm_conversion


def test_caduceus_ph_checkpoint_loads_unchanged(tmp_path):
    up = caduceus_upstream(2, rcps=False, fused=True)
    torch.save(up, tmp_path / "ph.bin")
    ours = models.create_model("caduceus_cpu", n_layer=2, rcps=False, **CADUCEUS)
    load_init_weights(ours, tmp_path / "ph.bin")
    assert torch.equal(
        ours.layers[0].mixer.in_proj.weight, up["caduceus.backbone.layers.0.mixer.mamba_fwd.in_proj.weight"]
    )
    assert torch.equal(ours.layers[1].mixer.rev.A_log, up["caduceus.backbone.layers.1.mixer.mamba_rev.A_log"])


def test_caduceus_odd_fused_depth_untied_weights_and_foreign_keys_are_refused(tmp_path):
    torch.save(caduceus_upstream(3, rcps=True, fused=True), tmp_path / "odd.bin")
    with pytest.raises(InitFromError, match=r"odd depth \(3\)"):
        load_init_weights(models.create_model("caduceus_cpu", n_layer=3, **CADUCEUS), tmp_path / "odd.bin")
    up = caduceus_upstream(2, rcps=True, fused=True)
    up["caduceus.backbone.layers.0.mixer.submodule.mamba_rev.in_proj.weight"] = torch.zeros(64, 16)
    torch.save(up, tmp_path / "untied.bin")
    with pytest.raises(InitFromError, match="mamba_rev.in_proj.weight is not tied"):
        load_init_weights(models.create_model("caduceus_cpu", n_layer=2, **CADUCEUS), tmp_path / "untied.bin")
    up = {**caduceus_upstream(2, rcps=True, fused=True), "caduceus.backbone.layers.0.mlp.fc1.weight": torch.zeros(1)}
    torch.save(up, tmp_path / "mlp.bin")
    with pytest.raises(InitFromError, match=r"unexpected key\(s\) backbone\.layers\.0\.mlp\.fc1\.weight"):
        load_init_weights(models.create_model("caduceus_cpu", n_layer=2, **CADUCEUS), tmp_path / "mlp.bin")
