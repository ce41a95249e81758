"""DINO (models/dino.py, dyt/tasks/dino.py): backbone parity with Hugging Face, the head, the teacher,
and the published formulas.

Specification:
- with ``norm=layernorm`` the backbone's weights load strictly into Hugging Face ``ViTModel`` and the
  class-token features agree within 1e-5 (fp32); weights convert both ways;
- the backbone of dino_vit_b16 has timm's ViT-B/16 size; the head is DINO's (3 linears with GELU to a
  256-d bottleneck, L2 normalisation, a weight-normalised 65536-way last layer with its norm fixed);
- the teacher starts equal to the student, never requires gradients, sees only the global crops;
- every norm builds and trains the digits preset;
- loss, centring, teacher EMA and the k-NN vote equal a float64 transcription of the published formulas
  (DINO paper Algorithm 1 and Sec. 3.1; DINO eval_knn.py);
- per-parameter clipping and the last-layer freeze act as DINO's ``clip_gradients`` and
  ``cancel_gradients_last_layer``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import ViTConfig, ViTModel

import models
import models.vit
from dyt.data.ssl import MultiCrop
from dyt.engine import Trainer, load_checkpoint
from dyt.engine.sampler import seed_all
from dyt.nn import norm_names
from dyt.tasks.dino import DINOTask, clip_per_parameter, dino_loss, ema_update, knn_predict, updated_center
from dyt.weights import load_init_weights
from models.dino import DINO, backbone_from_hf, backbone_to_hf
from tests.killed_run import run_killed
from tests.test_mae import FINETUNE, check_recipe, compose
from tests.test_vision_models import plain

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, out_dim=64, hidden_dim=48, bottleneck_dim=16)


def tiny(norm="layernorm", **kwargs) -> DINO:
    return DINO(norm, **{**TINY, **kwargs})


# ---- model ---------------------------------------------------------------------------------------------


def test_backbone_equals_hugging_face_vitmodel():
    torch.manual_seed(0)
    backbone = tiny().teacher.backbone.eval()
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        layer_norm_eps=1e-6,  # timm's (DINO's) eps; Hugging Face's default is 1e-12
    )
    hf = ViTModel(config, add_pooling_layer=False).eval()
    hf.load_state_dict(backbone_to_hf(backbone.state_dict()), strict=True)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(backbone(x), hf(pixel_values=x).last_hidden_state[:, 0], atol=1e-5, rtol=0)
    back = backbone_from_hf(hf.state_dict())
    assert back.keys() == backbone.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in backbone.state_dict().items())


def test_b16_backbone_is_vit_b_and_head_is_dinos():
    with torch.device("meta"):
        dino = models.create_model("dino_vit_b16", norm="layernorm")
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # timm's vit_base_patch16_224 (86,567,656 parameters) without its 1000-way head
    assert n(dino.student.backbone) == n(dino.teacher.backbone) == 86_567_656 - (768 * 1000 + 1000)
    linears = [m for m in dino.student.head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(768, 2048), (2048, 2048), (2048, 256)]
    assert sum(isinstance(m, torch.nn.GELU) for m in dino.student.head.mlp) == 2
    last = dino.student.head.last_layer
    assert last.weight_v.shape == (65536, 256) and not last.weight_g.requires_grad
    with torch.device("meta"):
        b8 = models.create_model("dino_vit_b8", norm="layernorm")
    assert b8.student.backbone.patch_embed.patch_size == (8, 8)


def test_head_output_is_a_normalised_projection():
    head = tiny().student.head
    z = torch.randn(5, 32)
    bottleneck = torch.nn.functional.normalize(head.mlp(z), dim=-1)
    weight = head.last_layer.weight_v / head.last_layer.weight_v.norm(dim=1, keepdim=True)
    assert torch.allclose(head(z), bottleneck @ weight.T, atol=1e-6)
    assert torch.equal(head.last_layer.weight_g, torch.ones(64, 1))
    assert tiny(norm_last_layer=False).student.head.last_layer.weight_g.requires_grad


def test_teacher_starts_as_the_student_and_sees_only_global_crops():
    dino = tiny(drop_path_rate=0.1)
    assert all(torch.equal(t, s) for t, s in zip(dino.teacher.parameters(), dino.student.parameters(), strict=True))
    assert not any(p.requires_grad for p in dino.teacher.parameters())
    assert all(isinstance(b.drop_path1, torch.nn.Identity) for b in dino.teacher.backbone.blocks)
    crops = [torch.randn(4, 3, 32, 32) for _ in range(2)] + [torch.randn(4, 3, 16, 16) for _ in range(3)]
    student, teacher = dino(crops)
    assert student.shape == (20, 64) and teacher.shape == (8, 64)
    student.sum().backward()
    assert all(p.grad is None for p in dino.teacher.parameters())
    assert dino.student.backbone.pos_embed.grad is not None


@pytest.mark.parametrize("norm", norm_names("channels_last"))
def test_every_norm_builds_and_trains(norm):
    dino = models.create_model("dino_vit_digits", norm=plain(norm))
    student, teacher = dino([torch.randn(2, 1, 8, 8)] * 2 + [torch.randn(2, 1, 4, 4)] * 2)
    loss = dino_loss(student, teacher, torch.zeros(1, 1024), 0.1, 0.04, num_crops=4)
    loss.backward()
    norm1 = dino.student.backbone.blocks[0].norm1
    assert torch.isfinite(loss)
    assert norm == "identity" or norm1.weight.grad is not None  # norm=identity (Table 9 baselines) has no weight


# ---- the published formulas, transcribed in float64 ------------------------------------------------


def reference_loss(student, teacher, center, tps, tpt, num_crops, num_global=2):
    """DINO Algorithm 1's H(t, s) = -sum t log s over every (teacher view, other student view) pair."""
    s_views, t_views = student.chunk(num_crops), teacher.chunk(num_global)
    terms = []
    for i, t in enumerate(t_views):
        p_t = torch.exp((t - center) / tpt) / torch.exp((t - center) / tpt).sum(dim=1, keepdim=True)
        for j, s in enumerate(s_views):
            if i != j:
                p_s = torch.exp(s / tps) / torch.exp(s / tps).sum(dim=1, keepdim=True)
                terms.append(-(p_t * torch.log(p_s)).sum(dim=1).mean())
    return sum(terms) / len(terms)


def test_loss_centering_and_teacher_update_match_the_formulas():
    torch.manual_seed(0)
    n, dim, crops = 6, 40, 5
    student = torch.randn(crops * n, dim, dtype=torch.float64)
    teacher = torch.randn(2 * n, dim, dtype=torch.float64)
    center = torch.randn(1, dim, dtype=torch.float64) * 0.1
    expected = reference_loss(student, teacher, center, 0.1, 0.04, crops)
    assert torch.allclose(dino_loss(student, teacher, center, 0.1, 0.04, crops), expected, atol=1e-12, rtol=0)
    ours32 = dino_loss(student.float(), teacher.float(), center.float(), 0.1, 0.04, crops)
    assert abs(ours32.item() - expected.item()) < 1e-4
    # C <- m C + (1 - m) mean(teacher outputs of the batch)
    new_center = updated_center(center, teacher.sum(0, keepdim=True), len(teacher), 0.9)
    assert torch.allclose(new_center, 0.9 * center + 0.1 * teacher.mean(0, keepdim=True), atol=1e-15, rtol=0)
    # teacher <- l teacher + (1 - l) student
    t_net, s_net = torch.nn.Linear(3, 2).double(), torch.nn.Linear(3, 2).double()
    before = [p.clone() for p in t_net.parameters()]
    ema_update(t_net, s_net, 0.996)
    for b, t, s in zip(before, t_net.parameters(), s_net.parameters(), strict=True):
        assert torch.allclose(t, 0.996 * b + 0.004 * s, atol=1e-15, rtol=0)


def dino_pos_encoding(pos_embed, w, h, patch):
    """facebookresearch/dino vision_transformer.py ``interpolate_pos_encoding`` for an image of w x h
    pixels (w: the height axis, as DINO unpacks ``B, nc, w, h = x.shape``), transcribed step by step."""
    npatch, n = (w // patch) * (h // patch), pos_embed.shape[1] - 1
    if npatch == n and w == h:
        return pos_embed
    dim, side = pos_embed.shape[-1], math.sqrt(n)
    w0, h0 = w // patch + 0.1, h // patch + 0.1
    grid = pos_embed[:, 1:].reshape(1, int(side), int(side), dim).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, scale_factor=(w0 / side, h0 / side), mode="bicubic")
    assert (int(w0), int(h0)) == tuple(grid.shape[-2:])
    return torch.cat([pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


def dino_backbone_reference(vit, x):
    """DINO's ``prepare_tokens`` + blocks + norm + class token, on our ViT's weights."""
    tokens = torch.cat([vit.cls_token.expand(len(x), -1, -1), vit.patch_embed(x)], dim=1)
    tokens = tokens + dino_pos_encoding(vit.pos_embed, x.shape[-2], x.shape[-1], vit.patch_embed.patch_size[0])
    return vit.norm(vit.blocks(tokens))[:, 0]


@pytest.mark.parametrize("size", [(16, 16), (24, 24), (40, 40), (16, 24)])
def test_local_crops_get_dinos_position_interpolation(size):
    """A crop of another size gets DINO's bicubic resample with scale_factor (g + 0.1) / sqrt(N), which
    differs from timm's resize to exactly g; the built size keeps the embeddings as they are."""
    torch.manual_seed(0)
    vit = tiny(drop_path_rate=0.0).student.backbone.double()
    grid = [size[0] // 8, size[1] // 8]
    expected = dino_pos_encoding(vit.pos_embed, *size, 8)
    assert torch.equal(vit.resample_pos_embed(grid), expected)
    timm = models.vit.VisionTransformer.resample_pos_embed(vit, grid)
    assert timm.shape == expected.shape and not torch.allclose(timm, expected, atol=1e-6)  # the fix matters
    assert torch.equal(timm[:, :1], expected[:, :1])  # the class token's embedding is kept by both
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    assert torch.allclose(vit(x), dino_backbone_reference(vit, x), atol=1e-12, rtol=0)
    glob = torch.randn(2, 3, 32, 32, dtype=torch.float64)  # a global crop: embeddings untouched
    assert torch.equal(dino_pos_encoding(vit.pos_embed, 32, 32, 8), vit.pos_embed)
    assert torch.allclose(vit(glob), dino_backbone_reference(vit, glob), atol=1e-12, rtol=0)


def test_dino_loss_on_mixed_crop_sizes_equals_dinos_reference():
    """Student and teacher on 2 global (32 px) and 3 local (16 px) crops: the loss and its gradients equal a
    reference built with DINO's own interpolation and the published loss, to float64 precision."""
    torch.manual_seed(0)
    dino = tiny(drop_path_rate=0.0).double()  # no drop path: the reference draws none
    crops = [torch.randn(3, 3, 32, 32, dtype=torch.float64) for _ in range(2)]
    crops += [torch.randn(3, 3, 16, 16, dtype=torch.float64) for _ in range(3)]
    center = torch.randn(1, 64, dtype=torch.float64) * 0.1
    student, teacher = dino(crops)
    loss = dino_loss(student, teacher, center, 0.1, 0.04, num_crops=5)
    net = dino.student
    params = [(n, p) for n, p in net.named_parameters() if p.requires_grad]  # not the fixed weight_g
    ours = torch.autograd.grad(loss, [p for _, p in params])

    ref_student = torch.cat([net.head(dino_backbone_reference(net.backbone, c)) for c in crops])
    with torch.no_grad():
        t = dino.teacher
        ref_teacher = torch.cat([t.head(dino_backbone_reference(t.backbone, c)) for c in crops[:2]])
    ref = reference_loss(ref_student, ref_teacher, center, 0.1, 0.04, num_crops=5)
    assert abs(loss.item() - ref.item()) < 1e-12
    grads = torch.autograd.grad(ref, [p for _, p in params])
    for (name, _), a, b in zip(params, ours, grads, strict=True):
        assert torch.allclose(a, b, atol=1e-12, rtol=1e-9), name
    assert ours[[n for n, _ in params].index("backbone.pos_embed")].abs().sum() > 0


def test_pos_embed_resample_timm_keeps_the_old_behaviour_and_bad_names_are_refused():
    torch.manual_seed(0)
    vit = tiny(pos_embed_resample="timm").student.backbone
    assert type(vit) is models.vit.VisionTransformer
    with pytest.raises(ValueError, match="unknown pos_embed_resample 'exact'; valid choices are: dino, timm"):
        tiny(pos_embed_resample="exact")


def test_knn_vote_matches_a_direct_transcription():
    torch.manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(50, 8, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 4, (50,))
    queries = torch.nn.functional.normalize(torch.randn(7, 8, dtype=torch.float64), dim=1)
    pred = knn_predict(queries, bank, labels, k=5, temperature=0.07, num_classes=4)
    for q, p in zip(queries, pred, strict=True):
        sims = [(float(q @ b), int(y)) for b, y in zip(bank, labels, strict=True)]
        votes = [0.0] * 4
        for sim, y in sorted(sims, reverse=True)[:5]:
            votes[y] += math.exp(sim / 0.07)
        assert int(p) == max(range(4), key=votes.__getitem__)


def test_per_parameter_clipping_is_dinos():
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.tensor([3.0, 4.0, 0.0]), torch.tensor([0.1, 0.0])
    clip_per_parameter([a, b], 1.0)
    assert torch.allclose(a.grad, torch.tensor([0.6, 0.8, 0.0]), atol=1e-6)  # norm 5 -> 1
    assert torch.equal(b.grad, torch.tensor([0.1, 0.0]))  # norm 0.1 < 1: unchanged


# ---- multi-crop views ------------------------------------------------------------------------------


def test_multicrop_gives_dinos_views_reproducibly():
    from PIL import Image

    image = Image.fromarray((torch.rand(60, 50, 3) * 255).to(torch.uint8).numpy())
    views = MultiCrop(32, 16, (0.25, 1.0), (0.05, 0.25), local_crops=3)
    seed_all(0, 1, 2, cuda=False)
    a = views(image)
    seed_all(0, 1, 2, cuda=False)
    b = views(image)
    assert [v.shape for v in a] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    digits = MultiCrop(8, 4, (0.5, 1.0), (0.15, 0.5), local_crops=2, photometric=False)(torch.randn(1, 8, 8))
    assert [v.shape for v in digits] == [(1, 8, 8)] * 2 + [(1, 4, 4)] * 2


# ---- fine-tuning from a pretraining run ------------------------------------------------------------


def test_finetune_takes_the_teacher_backbone_of_a_dino_run(tmp_path):
    dino = models.create_model("dino_vit_digits", norm="dyt")
    with torch.no_grad():
        dino.teacher.backbone.pos_embed.add_(1.0)  # teacher and student differ after training
    torch.save(dino.state_dict(), tmp_path / "dino.pt")
    vit = models.create_model("vit_digits", norm="dyt", num_classes=10, global_pool="avg")
    report = load_init_weights(vit, {"source": str(tmp_path / "dino.pt"), "ignore": ["head.*", "fc_norm.*"]})
    assert {k.split(".")[0] for k in report.fresh["ignore"]} == {"fc_norm", "head"}
    assert torch.equal(vit.pos_embed, dino.teacher.backbone.pos_embed)
    # token pooling keeps the pretrained final norm
    token = models.create_model("vit_digits", norm="dyt", num_classes=10, global_pool="token")
    report = load_init_weights(token, {"source": str(tmp_path / "dino.pt"), "ignore": ["head.*"]})
    assert report.fresh["ignore"] == ["head.bias", "head.weight"]
    assert torch.equal(token.norm.weight, dino.teacher.backbone.norm.weight)


# ---- recipes ---------------------------------------------------------------------------------------

DINO_PRETRAIN = {  # DINO README's ViT-B arguments (main_dino.py)
    "task._target_": "dyt.tasks.dino.DINOTask",
    "model.out_dim": 65536,
    "model.norm_last_layer": True,
    "model.drop_path_rate": 0.1,
    "optim.lr_batch_size": 256,
    "optim.betas": [0.9, 0.999],
    "optim.weight_decay": 0.04,
    "optim.schedules.weight_decay": {"shape": "cosine", "start": 0.04, "end": 0.4},
    "optim.schedule.name": "cosine",
    "optim.schedule.warmup_epochs": 10,
    "optim.schedule.min_lr": 2e-6,
    "task.student_temp": 0.1,
    "task.teacher_momentum": {"shape": "cosine", "start": 0.996, "end": 1.0},
    "task.center_momentum": 0.9,
    "task.freeze_last_layer_epochs": 3,
    "task.multicrop": {
        "global_size": 224,
        "local_size": 96,
        "global_scale": [0.25, 1.0],
        "local_scale": [0.05, 0.25],
        "local_crops": 10,
    },
    "task.knn.k": 20,
    "task.knn.temperature": 0.07,
    "data.name": "imagenet",
    "trainer.clip_grad": None,
    "trainer.precision": "fp32",
}
DINO_FINETUNE = {  # MAE FINETUNE.md's ViT-B values (assumed: the paper states none for DINO)
    **FINETUNE,
    "optim.lr": 5e-4,
    "task.layer_decay": 0.65,
    "model.drop_path_rate": 0.1,
    "trainer.epochs": 100,
}
DINO_RECIPES = {
    "paper/dino_vit_b16_pretrain": {
        **DINO_PRETRAIN,
        "model.name": "dino_vit_b16",
        "optim.lr": 7.5e-4,
        "task.teacher_temp": {"shape": "linear", "start": 0.04, "end": 0.07, "epochs": 49, "unit": "epoch"},
        "task.clip_grad": 0.3,
        "trainer.epochs": 400,
        "trainer.global_batch": 1024,
    },
    "paper/dino_vit_b8_pretrain": {
        **DINO_PRETRAIN,
        "model.name": "dino_vit_b8",
        "optim.lr": 5e-4,
        "task.teacher_temp": {"shape": "linear", "start": 0.03, "end": 0.07, "epochs": 49, "unit": "epoch"},
        "task.clip_grad": 3.0,
        "trainer.epochs": 300,
        "trainer.global_batch": 1056,
    },
    "paper/dino_vit_b16_finetune": {
        **DINO_FINETUNE,
        "model.name": "vit_b",
        "paper_ref": {"table": "table2", "row": "dino_vit_b16"},
    },
    "paper/dino_vit_b8_finetune": {
        **DINO_FINETUNE,
        "model.name": "vit_b8",
        "paper_ref": {"table": "table2", "row": "dino_vit_b8"},
    },
}


@pytest.mark.parametrize("experiment", sorted(DINO_RECIPES))
def test_recipe_values(experiment):
    check_recipe(experiment, DINO_RECIPES[experiment])


# ---- training: a few steps, and kill -9 + the same command = an uninterrupted run ----------------

ROOT = Path(__file__).resolve().parents[1]
KILL_AT = 7  # steps 1-10 (5 per epoch); checkpoints at 3, 5 (epoch end), 6, 9, 10: resumes from 6


def tiny_run(run: Path) -> list[str]:
    """dino_digits shrunk to seconds: one narrow block, 2 local crops, 179 training digits (the other
    1,618 are the k-NN queries) in 5 steps of 32 per epoch, 2 epochs (the first with the last layer
    frozen), a checkpoint every 3 steps."""
    return [
        "experiment=dino_digits",
        "norm=dyt",
        "norm.impl=eager",
        f"run_dir={run}",
        "+model.depth=1",
        "+model.embed_dim=32",
        "+model.num_heads=2",
        "+model.out_dim=128",
        "+model.hidden_dim=64",
        "+model.bottleneck_dim=16",
        "task.multicrop.local_crops=2",
        "task.teacher_temp.epochs=1",  # 0.04 in epoch 0, 0.07 in epoch 1
        "trainer.device=cpu",
        "trainer.epochs=2",
        "data.test_fraction=0.9",
        "trainer.global_batch=32",
        "trainer.ckpt_every_steps=3",
        "trainer.log_every_steps=1",
        "trainer.eval_every_epochs=2",
        "trainer.progress=off",
    ]


def fit(overrides: list[str]) -> dict:
    cfg = compose(*overrides)
    return Trainer(cfg).fit(DINOTask(cfg))


def metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith("_per_s")} for r in rows]  # wall-clock speed


@pytest.mark.usefixtures("one_thread")
def test_tiny_dino_trains_and_a_killed_run_resumes_bit_identically(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    results = fit(tiny_run(whole))
    rows = metrics(whole)
    train = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train] == list(range(1, 11))
    # the schedules reach the task every step: the teacher temperature changes once per epoch (DINO)
    assert [r["sched/teacher_temp"] for r in train] == pytest.approx([0.04] * 5 + [0.07] * 5)
    assert 0.0 <= results["val/knn_top1"] <= 100.0
    state = load_checkpoint(whole)
    model, center = state["model"], state["task"]["center"]
    # the teacher is an EMA of the student (it moved, but is not the student), the centre moved off zero
    t, s = model["teacher.backbone.pos_embed"], model["student.backbone.pos_embed"]
    assert not torch.equal(t, s) and center.abs().sum() > 0

    run_killed(tiny_run(killed), KILL_AT)
    fit(tiny_run(killed))  # the same command again
    resumed = load_checkpoint(killed)
    for k, v in model.items():
        assert torch.equal(resumed["model"][k], v), f"{k} differs from the uninterrupted run"
    assert torch.equal(resumed["task"]["center"], center)
    assert metrics(killed) == rows
