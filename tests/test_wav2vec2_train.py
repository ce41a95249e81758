"""wav2vec 2.0 through the trainer: the recipes hold the paper's values and build on meta, a tiny run logs
val/loss and it falls, kill -9 + the same command ends bit-identical, and the demo corpus script works or
names the install command."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from hydra import compose, initialize_config_dir

import models
from dyt.engine import Trainer, load_checkpoint
from dyt.engine.checkpoint import latest_checkpoint
from dyt.tasks import build_task
from dyt.tasks.wav2vec2 import contrastive_loss
from tests.engine_helpers import ENV
from tests.killed_run import run_killed

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return compose("train", overrides=list(overrides))


# ---- recipes ----------------------------------------------------------------------------------------


def test_base_recipe_is_the_papers():
    """paper App. A and fairseq wav2vec2_base_librispeech.yaml."""
    cfg = _compose("experiment=paper/wav2vec2_base", "norm=dyt")
    assert cfg.model.name == "wav2vec2_base" and list(cfg.model.keep_norms) == ["conv"]
    assert (cfg.optim.name, cfg.optim.lr, tuple(cfg.optim.betas), cfg.optim.eps) == ("adam", 5e-4, (0.9, 0.98), 1e-6)
    assert (cfg.optim.weight_decay, cfg.task.decay_all_params, cfg.optim.lr_batch_size) == (0.01, True, None)
    assert (cfg.optim.schedule.name, cfg.optim.schedule.power, cfg.optim.schedule.min_lr) == ("polynomial", 1.0, 0.0)
    assert (cfg.optim.schedule.warmup_steps, cfg.trainer.max_steps) == (32_000, 400_000)
    assert (cfg.trainer.global_batch, cfg.trainer.micro_batch) == (1_400_000 * 64, 1_400_000)
    assert (cfg.model.layerdrop, cfg.model.dropout_input, cfg.model.dropout_features) == (0.05, 0.1, 0.1)
    assert (cfg.model.feature_grad_mult, cfg.model.final_dim) == (0.1, 256)
    assert (cfg.task.diversity_weight, cfg.task.feature_penalty_weight) == (0.1, 10.0)
    assert dict(cfg.task.quantizer_temp) == {"shape": "exponential", "start": 2.0, "end": 0.5, "decay": 0.999995}
    assert (cfg.data.max_sample_size, cfg.data.min_sample_size, cfg.data.normalize) == (250_000, 32_000, False)
    assert (cfg.trainer.precision, cfg.trainer.clip_grad) == ("fp16", None)
    assert (cfg.paper_ref.table, cfg.paper_ref.row) == ("table5", "w2v2_base")
    assert build_task(cfg).headline_metric == "val/loss" and build_task(cfg).headline_mode == "min"


def test_large_recipe_is_the_papers():
    """Every field of the authors' other_tasks/wav2vec2/wav2vec2_large_librispeech.yaml (github.com/
    jiachenzhu/DyT, paper App. A), and fairseq's Wav2Vec2Config defaults where that file sets none."""
    cfg = _compose("experiment=paper/wav2vec2_large", "norm=layernorm")
    assert cfg.model.name == "wav2vec2_large" and list(cfg.model.keep_norms) == ["conv"]
    assert (cfg.optim.name, cfg.optim.lr, tuple(cfg.optim.betas), cfg.optim.eps) == ("adam", 3e-4, (0.9, 0.98), 1e-6)
    assert (cfg.optim.weight_decay, cfg.task.decay_all_params, cfg.optim.lr_batch_size) == (0.01, True, None)
    assert (cfg.optim.schedule.name, cfg.optim.schedule.power, cfg.optim.schedule.min_lr) == ("polynomial", 1.0, 0.0)
    assert (cfg.optim.schedule.warmup_steps, cfg.trainer.max_steps) == (20_000, 250_000)
    assert (cfg.trainer.global_batch, cfg.trainer.micro_batch) == (1_200_000 * 128, 1_200_000)
    assert (cfg.trainer.precision, cfg.trainer.clip_grad, cfg.trainer.num_workers) == ("fp16", None, 6)
    assert (cfg.trainer.log_every_steps, cfg.trainer.ckpt_every_steps) == (200, 25_000)
    # task: normalize false, min/max sample size
    assert (cfg.data.max_sample_size, cfg.data.min_sample_size, cfg.data.normalize) == (320_000, 32_000, False)
    # criterion.loss_weights [0.1, 10]: the feature penalty is on (and so in val/loss)
    assert (cfg.task.diversity_weight, cfg.task.feature_penalty_weight) == (0.1, 10.0)
    assert dict(cfg.task.quantizer_temp) == {"shape": "exponential", "start": 2.0, "end": 0.1, "decay": 0.999995}
    m = cfg.model
    assert (m.extractor_mode, m.conv_bias, m.feature_grad_mult, m.final_dim) == ("default", False, 0.1, 768)
    assert (m.layerdrop, m.dropout, m.attention_dropout, m.activation_dropout) == (0.2, 0.1, 0.0, 0.0)
    assert (m.dropout_input, m.dropout_features) == (0.1, 0.1)
    assert (cfg.paper_ref.table, cfg.paper_ref.row) == ("table5", "w2v2_large")
    with torch.device("meta"):
        model = build_task(cfg).build_model()
    layer = model.encoder.layers[0]
    assert (len(model.encoder.layers), layer.fc1.in_features, layer.fc1.out_features, layer.self_attn.num_heads) == (
        24, 1024, 4096, 16,
    )  # fmt: skip
    assert layer.layer_norm_first and layer.self_attn.dropout == 0.0 and model.feature_grad_mult == 0.1
    conv = model.feature_extractor.conv_layers
    assert isinstance(conv[0].norm, torch.nn.GroupNorm) and all(c.norm is None for c in conv[1:])
    assert all(c.conv.bias is None for c in conv)
    assert (model.quantizer.groups, model.quantizer.num_vars, model.num_negatives) == (2, 320, 100)
    assert (model.mask_prob, model.mask_length, model.logit_temp) == (0.65, 10, 0.1)


def test_large_feature_penalty_enters_val_loss():
    """loss_weights [0.1, 10]: the Large task's loss, which evaluate() sums into val/loss, holds 10 x the
    feature penalty that the model computes (fairseq's features_pen, the mean squared encoder output)."""
    torch.manual_seed(0)
    task = build_task(_compose("experiment=paper/wav2vec2_large", "norm=layernorm"))
    out = models.create_model("wav2vec2_tiny")(torch.randn(2, 8000))
    features = out.features_pen
    loss, m = task._loss(out)
    assert features > 0 and m == out.num_masked
    torch.testing.assert_close(loss, contrastive_loss(out.logits) + m * (0.1 * out.diversity + 10.0 * features))


@pytest.mark.parametrize("size", ["base", "large"])
def test_derf_recipes_follow_derfs_patch(size):
    """The Derf column of Table 5 (Derf paper Table 10): github.com/zlab-princeton/Derf "speech model/
    dynamic_erf.patch" and its wav2vec2_large_librispeech.yaml. They differ from our DyT-paper recipe in
    exactly Derf's changes: fp32, the post-extractor LayerNorm kept, and Base made pre-norm."""
    from omegaconf import OmegaConf

    from dyt.engine.identity import ABSENT, config_diff

    def resolved(experiment):
        cfg = _compose(f"experiment=paper/{experiment}", "norm=derf")
        return OmegaConf.to_container(cfg, resolve=True)

    ours, derf = resolved(f"wav2vec2_{size}"), resolved(f"wav2vec2_{size}_derf")
    expected = {
        "experiment_name": (f"paper/wav2vec2_{size}", f"paper/wav2vec2_{size}_derf"),
        "paper_ref.row": (f"w2v2_{size}", f"w2v2_{size}_derf"),
        "model.keep_norms": (["conv"], ["conv", "post_extract"]),
        "trainer.precision": ("fp16", "fp32"),
    }
    if size == "base":
        expected["model.layer_norm_first"] = (ABSENT, True)
    assert config_diff(ours, derf, ("run_dir", "hydra*")) == expected
    assert _compose(f"experiment=paper/wav2vec2_{size}_derf").norm.name == "derf"  # the recipe's default
    with torch.device("meta"):
        model = build_task(_compose(f"experiment=paper/wav2vec2_{size}_derf")).build_model()
    assert type(model.post_extract_norm).__name__ == "LayerNorm"
    assert type(model.encoder.layers[0].self_attn_layer_norm).__name__ == "Derf"
    assert model.encoder.layers[0].layer_norm_first and model.encoder.norm is not None


@pytest.mark.parametrize("experiment, params", [("wav2vec2_base", 95_044_608), ("wav2vec2_large", 317_380_864)])
def test_recipes_build_on_meta_with_the_papers_norm_sites(experiment, params):
    cfg = _compose(f"experiment=paper/{experiment}", "norm=dyt")
    with torch.device("meta"):
        model = build_task(cfg).build_model()
    depth = len(model.encoder.layers)
    assert sum(p.numel() for p in model.parameters()) == params + 2 * depth + 2  # one DyT alpha per replaced norm
    assert type(model.post_extract_norm).__name__ == "DyT"
    assert type(model.feature_extractor.conv_layers[0].norm).__name__ in ("GroupNorm", "LayerNorm")


# ---- a tiny run ---------------------------------------------------------------------------------------


def _clip(path: Path, seconds: float, seed: int) -> None:
    """Speech-like test audio: a few harmonic tones switching every 50 ms, plus noise."""
    rng = np.random.default_rng(seed)
    n, t = int(seconds * 16000), np.arange(int(seconds * 16000)) / 16000
    f0 = np.repeat(rng.uniform(100, 300, size=n // 800 + 1), 800)[:n]
    wave = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in (1, 2, 3)) + 0.05 * rng.standard_normal(n)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, (0.2 * wave).astype(np.float32), 16000)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("speech")
    for i in range(10):
        _clip(root / "train" / "1" / "2" / f"1-2-{i:04d}.flac", 0.5 + 0.03 * i, seed=i)
    for i in range(3):
        _clip(root / "dev" / "3" / "4" / f"3-4-{i:04d}.flac", 0.6, seed=100 + i)
    return root


def _overrides(corpus: Path, run: Path) -> list[str]:
    return [
        "experiment=wav2vec2_speech_demo",
        "norm=dyt",
        "norm.impl=eager",  # the fused CPU kernel would compile for seconds
        f"data.root={corpus}",
        "data.min_sample_size=4000",
        "data.max_sample_size=6000",
        "+model.conv_channels=16",
        "+model.embed_dim=32",
        "+model.ffn_dim=64",
        "+model.final_dim=16",
        "+model.latent_vars=8",
        "+model.num_negatives=5",
        "+model.pos_conv_kernel=8",
        "+model.mask_length=3",
        "trainer.global_batch=12000",  # two 6000-sample crops
        "trainer.max_steps=8",
        "trainer.log_every_steps=1",
        "trainer.eval_every_steps=4",
        "trainer.ckpt_every_steps=3",
        "trainer.progress=off",
        "optim.schedule.warmup_steps=2",
        "task.quantizer_temp.decay=0.995",
        f"run_dir={run}",
    ]


def _fit(corpus: Path, run: Path) -> dict:
    cfg = _compose(*_overrides(corpus, run))
    return Trainer(cfg).fit(build_task(cfg))


def _rows(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith("_per_s")} for r in lines]


def check_kill_9_then_resume(overrides: Callable[[Path], list[str]], reference: Path, run: Path) -> None:
    """Run ``overrides(run)`` in a fresh process killed with SIGKILL after step 5 (checkpoints every 3),
    run the same command again, and check it ends bit-identical to the finished run in ``reference``."""
    run_killed(overrides(run), 5)
    assert latest_checkpoint(run / "checkpoints").name == "step_00000003.pt"
    cfg = _compose(*overrides(run))  # the same command again
    Trainer(cfg).fit(build_task(cfg))
    ours, ref = load_checkpoint(run), load_checkpoint(reference)
    assert ours["step"] == ref["step"] == 8
    for k, v in ref["model"].items():
        assert torch.equal(ours["model"][k], v), f"model.{k} differs from the uninterrupted run"
    assert _rows(run) == _rows(reference)


def test_tiny_run_logs_fairseqs_val_loss_and_survives_kill_9_bit_identically(corpus, tmp_path):
    reference = tmp_path / "reference"
    results = _fit(corpus, reference)
    rows = _rows(reference)
    evals = [r for r in rows if "val/loss" in r]
    assert [r["step"] for r in evals] == [4, 8]
    assert evals[-1]["val/loss"] < evals[0]["val/loss"]  # bits per masked frame fall
    assert results["val/loss"] == evals[-1]["val/loss"] and np.isfinite(results["val/loss"])
    temps = [r["sched/quantizer_temp"] for r in rows if "sched/quantizer_temp" in r]
    assert temps[0] == 2.0 and temps[1] == pytest.approx(2.0 * 0.995) and temps == sorted(temps, reverse=True)
    check_kill_9_then_resume(lambda run: _overrides(corpus, run), reference, tmp_path / "run")


# ---- demo corpus script ---------------------------------------------------------------------------


def test_corpus_script_names_the_install_command_without_espeak(tmp_path):
    env = {**ENV, "PATH": str(tmp_path)}  # no espeak-ng on this PATH
    done = subprocess.run(
        [sys.executable, "scripts/data/make_speech_corpus.py", "--out", str(tmp_path / "c")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "apt-get install -y espeak-ng" in done.stderr


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (apt-get install -y espeak-ng)")
def test_corpus_script_writes_librispeech_layout_at_16k_where_data_speech_demo_reads(tmp_path):
    out = tmp_path / "speech_demo"  # no --out: $DYT_DATA_DIR/speech_demo, configs/data/speech_demo.yaml's root
    subprocess.run(
        [sys.executable, "scripts/data/make_speech_corpus.py", "--train", "3", "--dev", "1"],
        cwd=ROOT,
        env={**ENV, "DYT_DATA_DIR": str(tmp_path)},
        check=True,
        capture_output=True,
    )
    flacs = sorted(out.rglob("*.flac"))
    assert len(flacs) == 4 and {p.relative_to(out).parts[0] for p in flacs} == {"train", "dev"}
    for p in flacs:
        speaker, chapter = p.parent.parent.name, p.parent.name
        assert p.name.startswith(f"{speaker}-{chapter}-")
        assert (p.parent / f"{speaker}-{chapter}.trans.txt").exists()
        info = soundfile.info(str(p))
        assert info.samplerate == 16000 and info.frames > 16000 * 0.5
