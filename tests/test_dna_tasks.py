"""DNA tasks: MLM masking, RC of padded batches, recipe checks, short training runs, kill -9 + resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from dyt.data import dna
from dyt.engine import Trainer, load_checkpoint
from dyt.tasks.dna import IGNORE, DNAPretrainTask, GenomicBenchmarkTask, _reverse_complement_padded, mask_tokens
from tests.killed_run import run_killed

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def _genome(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    records = [f">r{i}\n" + "".join(rng.choice(list("ACGT"), 400)) + "N" * 7 + "acgt" * 20 + "\n" for i in range(12)]
    path = tmp_path / "genome.fa"
    path.write_text("".join(records))
    return path


def pretrain_overrides(tmp_path: Path, *overrides: str) -> list[str]:
    """The demo pretraining recipe on a small synthetic genome (written to ``tmp_path``), a few steps."""
    return [
        "experiment=dna_demo_hyena_pretrain",
        "norm=layernorm",
        f"data.fasta={_genome(tmp_path)}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.seq_len=32",
        "data.val_fraction=0.2",
        "data.val_samples=16",
        "data.samples_per_epoch=48",
        "trainer.global_batch=8",
        "trainer.max_steps=8",
        "trainer.eval_every_steps=null",
        "trainer.ckpt_every_steps=2",
        "trainer.log_every_steps=1",
        "trainer.progress=off",
        f"run_dir={tmp_path / 'run'}",
        *overrides,
    ]


def pretrain_cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return compose("train", overrides=pretrain_overrides(tmp_path, *overrides))


def test_mask_tokens_masks_15_percent_of_bases_bert_style():
    tokens = torch.randint(7, 11, (64, 256), generator=torch.Generator().manual_seed(0))
    tokens[:, -6:] = dna.PAD
    inputs, targets = mask_tokens(tokens, 0.15, torch.Generator().manual_seed(1))
    chosen = targets != IGNORE
    assert abs(chosen.float().mean().item() - 0.15 * 250 / 256) < 0.01
    assert not chosen[:, -6:].any() and torch.equal(targets[chosen], tokens[chosen])
    masked = (inputs == dna.MASK)[chosen].float().mean().item()
    kept = (inputs == tokens)[chosen].float().mean().item()  # 10% unchanged + 1/4 of the 10% random bases
    assert abs(masked - 0.8) < 0.02 and abs(kept - 0.125) < 0.02
    assert torch.equal(inputs[~chosen], tokens[~chosen])


def test_reverse_complement_of_a_padded_batch_keeps_padding_on_the_right():
    tokens = torch.tensor([[7, 8, 9, dna.PAD], [7, 7, 10, 8]])  # ACG_, AATC
    rc = _reverse_complement_padded(tokens)
    assert dna.decode(rc[0]) == "CGT" and rc[0, 3] == dna.PAD
    assert dna.decode(rc[1]) == "GATT"


def test_next_token_objective_refuses_a_bidirectional_model(tmp_path):
    cfg = pretrain_cfg(tmp_path, "model=caduceus_cpu")
    with pytest.raises(ValueError, match="needs a causal model, but caduceus_cpu sees later tokens"):
        DNAPretrainTask(cfg).build_model()


def test_sequences_longer_than_the_model_allows_are_refused_at_build(tmp_path):
    with pytest.raises(ValueError, match=r"data.seq_len=300 tokens is longer than the model allows \(l_max=258\)"):
        DNAPretrainTask(pretrain_cfg(tmp_path, "data.seq_len=300")).build_model()


@pytest.mark.parametrize(
    "overrides",
    [("trainer.max_steps=12",), ("model=caduceus_cpu", "task.objective=mlm", "data.rc_aug=false", "norm=rmsnorm")],
    ids=["hyenadna_next_token", "caduceus_mlm"],
)
def test_pretraining_learns_the_genome(tmp_path, overrides):
    cfg = pretrain_cfg(tmp_path, "optim.lr=1e-2", *overrides)
    results = Trainer(cfg).fit(DNAPretrainTask(cfg))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == cfg.trainer.max_steps and losses[-1] < losses[0] - 0.5
    assert results["headline_metric"] == "val/loss" and results["val/loss"] < 2.0  # uniform over 16 ids: 2.77


def classification_cfg(tmp_path: Path, *overrides: str):
    """The HyenaDNA GenomicBenchmarks recipe on a tiny model and a toy two-class dataset, a few epochs."""
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return compose(
            "train",
            overrides=[
                "experiment=paper/hyenadna_gb",
                "model=hyenadna_cpu",
                "data.dataset=toy",
                "data.num_classes=2",
                "data.max_length=48",
                "trainer.global_batch=16",
                "trainer.epochs=4",
                "trainer.progress=off",
                "optim.lr=3e-3",
                "init_from=null",
                f"run_dir={tmp_path / 'run'}",
                *overrides,
            ],
        )


def test_classification_on_a_benchmark_directory_trains_and_reports_accuracy(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("test", 8)):
        for cls, alphabet in (("at_rich", "AATTACGT"), ("gc_rich", "GGCCACGT")):
            (tmp_path / "gb" / "toy" / split / cls).mkdir(parents=True)
            for i in range(n):
                seq = "".join(rng.choice(list(alphabet), int(rng.integers(20, 40))))
                (tmp_path / "gb" / "toy" / split / cls / f"{i}.txt").write_text(seq)
    cfg = classification_cfg(tmp_path, f"data.root={tmp_path / 'gb'}")
    results = Trainer(cfg).fit(GenomicBenchmarkTask(cfg))
    assert results["headline_metric"] == "val/acc" and results["val/acc"] >= 75.0  # AT- vs GC-rich: easy


def test_kill_9_mid_pretraining_then_same_command_is_bit_identical(tmp_path):
    # Embedding dropout, RC augmentation and window sampling all draw randomness: all must resume exactly.
    reference = tmp_path / "reference"
    reference.mkdir()
    ref_cfg = pretrain_cfg(reference)
    Trainer(ref_cfg).fit(DNAPretrainTask(ref_cfg))

    run = tmp_path / "resumed"
    run.mkdir()
    run_killed(pretrain_overrides(run), 5)  # a fresh process, SIGKILLed after step 5
    assert load_checkpoint(run / "run")["step"] == 4  # checkpoints every 2 steps; killed after step 5
    cfg = pretrain_cfg(run)
    Trainer(cfg).fit(DNAPretrainTask(cfg))  # the same command again

    ours, ref = load_checkpoint(run / "run"), load_checkpoint(reference / "run")
    assert ours["step"] == ref["step"] == 8
    for k, v in ref["model"].items():
        assert torch.equal(ours["model"][k], v), f"model.{k} differs from the uninterrupted run"

    def rows(path: Path) -> list[dict]:
        lines = [json.loads(x) for x in (path / "run" / "metrics.jsonl").read_text().splitlines()]
        return [
            {k: v for k, v in r.items() if "throughput" not in k and "per_s" not in k and "time" not in k}
            for r in lines
        ]

    assert rows(run) == rows(reference)


def test_hyenadna_with_dyt_warns_about_its_scale_at_start_up_and_calibration_fixes_it(tmp_path, capsys):
    """DyT reads HyenaDNA's std-0.02 embedding at alpha x std = 0.01 (LayerNorm would hand on std 1):
    the start-up probe warns once, naming the layer and the option; calibrated, the scale is 0.3."""
    cfg = pretrain_cfg(tmp_path, "norm=dyt", "trainer.max_steps=1", "trainer.progress=log")
    Trainer(cfg).fit(DNAPretrainTask(cfg))
    out, err = capsys.readouterr()
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "alpha x std < 0.02" in warnings[0] and "norm.alpha_init=calibrate" in warnings[0]
    assert "point-wise norm scale at init (5 layers, one training batch): alpha x input std min 0.01" in out
    calibrated = tmp_path / "calibrated"
    calibrated.mkdir()
    cfg = pretrain_cfg(calibrated, "norm=dyt", "norm.alpha_init=calibrate", "trainer.max_steps=1")
    Trainer(cfg).fit(DNAPretrainTask(cfg))
    assert "warning:" not in capsys.readouterr().err
    scales = json.loads((calibrated / "run" / "resolved.json").read_text())["scale_at_init"]
    assert [round(v, 4) for k, v in scales.items() if k.startswith("scale/")] == [0.3] * 5
