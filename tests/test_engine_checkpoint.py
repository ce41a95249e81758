"""Checkpoints: atomic writes, pruning, and refusal of truncated, corrupt, malicious or foreign files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from dyt.engine import CheckpointError, Trainer, load_checkpoint, load_model_state
from dyt.engine import checkpoint as ckpt
from tests.engine_helpers import DigitsTask, TinyNet, make_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


def fit(run_dir: Path, *overrides: str) -> dict:
    cfg = make_cfg(run_dir, ["trainer.max_steps=4", "trainer.ckpt_every_steps=2", *overrides])
    return Trainer(cfg).fit(DigitsTask(cfg))


RUN = ("trainer.keep_checkpoints=2", "trainer.ema_decay=0.5")
EXTEND = (*RUN, "trainer.accept_changes=[trainer.max_steps]")  # the same run, made longer on purpose


@pytest.fixture
def run_dir(tmp_path) -> Path:
    fit(tmp_path / "run", *RUN)
    return tmp_path / "run"


def test_checkpoint_contents_pruning_and_last_pointer(run_dir):
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == [
        "last",
        "step_00000002.pt",
        "step_00000002.pt.manifest.json",
        "step_00000004.pt",
        "step_00000004.pt.manifest.json",
    ]
    assert (ckpts / "last").read_text().strip() == "step_00000004.pt"
    state = load_checkpoint(run_dir)
    assert state["step"] == 4 and state["path"].endswith("step_00000004.pt")
    for key in (
        "model",
        "ema",
        "optimizer",
        "scaler",
        "task",
        "global_batch",
        "epoch",
        "step_in_epoch",
        "rng",
        "wandb_id",
        "config",
        "metrics_bytes",
    ):
        assert key in state, key
    assert state["format"] == 2 and state["task"] == {}
    assert set(state["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert state["config"]["trainer"]["max_steps"] == 4  # resolved config as a plain dict
    model = TinyNet(32, 2, 0.0)
    load_model_state(model, state["ema"])  # EMA weights load into a fresh model


def test_interrupted_write_leaves_previous_checkpoint(run_dir, monkeypatch):
    def dying_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint({"model": {}}, run_dir / "checkpoints", step=6, keep=2)
    monkeypatch.undo()
    assert any(p.name.startswith(".step_00000006.pt.tmp") for p in (run_dir / "checkpoints").iterdir())
    assert load_checkpoint(run_dir)["step"] == 4
    ckpt.remove_partial(run_dir / "checkpoints")
    assert not any(p.name.startswith(".") for p in (run_dir / "checkpoints").iterdir())


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_newest_checkpoint_is_refused_and_the_run_resumes_from_the_intact_one(run_dir, damage, capsys):
    path = run_dir / "checkpoints" / "step_00000004.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else os.urandom(len(data)))
    with pytest.raises(CheckpointError, match="step_00000004.pt is (truncated or )?damaged"):
        load_checkpoint(path)
    assert load_checkpoint(run_dir)["step"] == 2
    fit(run_dir, "trainer.max_steps=6", *EXTEND)
    assert "step_00000004.pt is" in capsys.readouterr().err
    assert load_checkpoint(run_dir)["step"] == 6


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused(run_dir, tmp_path):
    evil = _RunsCode()
    evil.marker = tmp_path / "pwned"
    path = run_dir / "checkpoints" / "step_00000008.pt"
    torch.save({"model": {}, "step": 8, "payload": evil}, path)
    ckpt.write_manifest({path.name: path}, 8, ckpt.manifest_path(path))  # forged to match
    (run_dir / "checkpoints" / "last").write_text("step_00000008.pt\n")
    with pytest.raises(CheckpointError, match="refusing to load .*step_00000008.pt"):
        fit(run_dir, "trainer.max_steps=10", *EXTEND)
    assert not evil.marker.exists()


def test_checkpoint_of_another_model_names_the_keys(run_dir):
    with pytest.raises(
        CheckpointError,
        match=r"mismatched shapes: .*blocks.0.fc.weight \(checkpoint \(32, 32\) "
        r"vs model \(16, 16\)\)",
    ):
        fit(run_dir, "model.width=16", *RUN, "trainer.accept_changes=[model.width]")
    with pytest.raises(CheckpointError, match=r"unexpected keys: blocks.1.fc.bias"):
        load_model_state(TinyNet(32, 1, 0.0), load_checkpoint(run_dir)["model"], "run")
    with pytest.raises(CheckpointError, match=r"missing keys: blocks.2.fc.bias"):
        fit(run_dir, "model.depth=3", *RUN, "trainer.accept_changes=[model.depth]")


def test_missing_checkpoint_path_says_what_was_expected(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path)
