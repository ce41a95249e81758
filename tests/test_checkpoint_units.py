"""Unit tests of dyt/engine/checkpoint.py that pin its small parts exactly: the RNG round trip, every
error message (what a user reads when a save or load goes wrong), the key check of model loading and
the DCP read-back. Written against the survivors of a mutation run (results/mutation.md); fast, no trainer."""

from __future__ import annotations

import random
import re
import shutil
import warnings
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from dyt.engine import checkpoint as ckpt
from dyt.engine.checkpoint import CheckpointError, NonFiniteCheckpointError


def draws() -> tuple:
    return torch.rand(3).tolist(), np.random.randn(3).tolist(), [random.gauss(0, 1) for _ in range(3)]


def test_rng_state_round_trips_every_generator_through_a_safe_load(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.randn()  # numpy's cached gaussian is part of its state
    random.gauss(0, 1)  # and so is python's
    state = ckpt.rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = draws()
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    ckpt.set_rng_state(ckpt.safe_load(tmp_path / "rng.pt"))
    assert draws() == expected
    ckpt.set_rng_state(state)
    assert np.random.get_state()[1].dtype == np.uint32
    assert draws() == expected
    if not torch.cuda.is_available():
        assert state["cuda"] == []


def test_warn_is_one_flushed_line_on_stderr(capsys, monkeypatch):
    flushed = []
    real_print = print

    def spy(*args, **kwargs):
        flushed.append(kwargs.get("flush"))
        real_print(*args, **kwargs)

    monkeypatch.setattr("builtins.print", spy)
    ckpt.warn("something")
    assert capsys.readouterr().err == "warning: something\n"
    assert flushed == [True]


def test_refusing_a_non_finite_state_says_which_tensors_and_what_to_do(tmp_path):
    names = [f"model.w{i}" for i in range(5)]
    message = str(ckpt._refuse_non_finite(names, tmp_path, 3, 5))
    assert message == (
        "refusing to write checkpoint step 3: 5 tensor(s) hold NaN or inf (model.w0, model.w1, model.w2, "
        "model.w3 ...). The last finite checkpoint is none (no checkpoint yet); resume from it with a lower "
        "optim.lr or a trainer.clip_grad, or check the data"
    )
    assert "(model.w0, model.w1, model.w2, model.w3)." in str(ckpt._refuse_non_finite(names[:4], tmp_path, 3, 4))
    other = str(ckpt._refuse_non_finite([], tmp_path, 3, 2))
    assert "2 tensor(s) hold NaN or inf (tensors on other ranks)." in other


def test_write_failure_message_names_the_error_the_free_space_and_the_resume_point(tmp_path, monkeypatch):
    final = tmp_path / "step_00000002.pt"
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(0, 0, 3 * 2**30 + 2**28))
    message = str(ckpt._write_failed(final, OSError(28, "No space left on device")))
    assert message == (
        f"could not write checkpoint {final} (OSError: No space left on device; 3.49 GB free there); its "
        "temporary files were removed. Free disk space (or lower trainer.keep_checkpoints, or move run_dir to a "
        "larger disk) and rerun the same command: it resumes from the start"
    )
    # not an OSError, or one without strerror: the first line of the message
    assert "(RuntimeError: first line; 3.49 GB" in str(ckpt._write_failed(final, RuntimeError("\nfirst line\nmore")))
    assert "(OSError: plain; 3.49 GB" in str(ckpt._write_failed(final, OSError("plain")))

    def unknown(_):
        raise OSError("gone")

    monkeypatch.setattr(shutil, "disk_usage", unknown)
    assert "; free space unknown)" in str(ckpt._write_failed(final, OSError(5, "I/O error")))


def test_write_failure_names_the_last_finite_checkpoint(tmp_path):
    written = ckpt.save_checkpoint({"model": {"w": torch.ones(2)}}, tmp_path, 1)
    assert str(ckpt._write_failed(tmp_path / "step_00000002.pt", OSError(5, "I/O error"))).endswith(
        f"it resumes from {written}"
    )


@pytest.fixture
def one_process_group(tmp_path):
    """A gloo process group of one: the all-reduce and barriers of sharded saves really run."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_sharded_non_finite_refusal_counts_over_ranks_and_names_the_step(tmp_path, one_process_group):
    state = {"model": {"w": torch.tensor([1.0, float("nan")]), "b": torch.tensor([float("inf")])}}
    with pytest.raises(NonFiniteCheckpointError, match=r"^refusing to write checkpoint step 4: 2 tensor\(s\)"):
        ckpt.save_sharded_checkpoint(state, {}, tmp_path / "c", 4, keep=1, is_main=True)
    assert not (tmp_path / "c").exists()
    path = ckpt.save_sharded_checkpoint({"model": {"w": torch.ones(2)}}, {"step": 4}, tmp_path / "c", 4, 1, True)
    assert ckpt.load_checkpoint(path)["model"]["w"].tolist() == [1.0, 1.0]


def test_sharded_save_without_a_process_group_warns_nothing(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ckpt.save_sharded_checkpoint({"model": {"w": torch.ones(2)}}, {"step": 1}, tmp_path, 1, keep=1, is_main=True)


def test_sharded_read_back_keeps_dtypes_and_dotted_names(tmp_path):
    model = {"blocks.0.fc.weight": torch.arange(6.0).reshape(2, 3).bfloat16(), "steps": torch.arange(3)}
    ema = {"blocks.0.fc.weight": torch.full((2, 3), 0.5, dtype=torch.float64)}
    path = ckpt.save_sharded_checkpoint({"model": model, "ema": ema}, {"step": 2}, tmp_path, 2, keep=1, is_main=True)
    state = ckpt.load_checkpoint(path)
    for got, want in ((state["model"], model), (state["ema"], ema)):
        assert got.keys() == want.keys()
        for k in want:
            assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k


def test_sharded_read_back_failure_says_in_one_process(tmp_path):
    path = ckpt.save_sharded_checkpoint({"model": {"w": torch.ones(2)}}, {"step": 1}, tmp_path, 1, keep=1, is_main=True)
    for f in path.glob("*.distcp"):
        f.write_bytes(b"")
    with pytest.raises(CheckpointError, match=rf"^cannot load DCP checkpoint {re.escape(str(path))} in one process \("):
        ckpt._dcp_full_state(path, ("model",))


def test_adopting_names_the_problem_and_records_the_step(tmp_path):
    single = ckpt.save_checkpoint({"model": {"w": torch.ones(2)}, "step": 9}, tmp_path / "a", 9)
    with pytest.raises(CheckpointError, match=rf"^{single} already has a manifest; nothing to adopt$"):
        ckpt.adopt_checkpoint(single)
    ckpt.manifest_path(single).unlink()
    assert ckpt.adopt_checkpoint(single) == single
    assert ckpt.read_manifest(single)["step"] == 9

    no_step = tmp_path / "b" / "step_00000001.pt"
    no_step.parent.mkdir()
    torch.save({"model": {"w": torch.ones(1)}}, no_step)
    ckpt.adopt_checkpoint(no_step)
    assert ckpt.read_manifest(no_step)["step"] == -1

    sharded = ckpt.save_sharded_checkpoint({"model": {"w": torch.ones(2)}}, {"step": 5}, tmp_path / "c", 5, 1, True)
    recorded = set(ckpt.read_manifest(sharded)["files"])
    ckpt.manifest_path(sharded).unlink()
    ckpt.adopt_checkpoint(sharded)
    assert set(ckpt.read_manifest(sharded)["files"]) == recorded and ckpt.read_manifest(sharded)["step"] == 5

    bad = tmp_path / "d" / "step_00000001.pt"
    bad.parent.mkdir()
    nan = torch.tensor(float("nan"))
    torch.save({"model": {f"w{i}": nan for i in range(5)}, "step": 1}, bad)
    with pytest.raises(NonFiniteCheckpointError) as e:
        ckpt.adopt_checkpoint(bad)
    assert str(e.value) == f"not adopting {bad}: NaN or inf in model.w0, model.w1, model.w2, model.w3"
    assert not ckpt.manifest_path(bad).exists()


class Two(nn.Module):
    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(2, width), nn.Linear(width, 1)


def test_load_model_state_copies_a_matching_state():
    source, target = Two(), Two()
    ckpt.load_model_state(target, source.state_dict())
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in target.state_dict().items())


@pytest.mark.parametrize(
    "change, missing, unexpected, mismatched",
    [
        (lambda s: s.pop("a.bias"), "a.bias", "none", "none"),
        (lambda s: s.update(extra=torch.ones(1)), "none", "extra", "none"),
        (
            lambda s: s.update({"b.weight": torch.ones(1, 4)}),
            "none",
            "none",
            "b.weight (checkpoint (1, 4) vs model (1, 3))",
        ),
    ],
)
def test_load_model_state_names_each_kind_of_difference(change, missing, unexpected, mismatched):
    state = Two().state_dict()
    change(state)
    with pytest.raises(CheckpointError) as e:
        ckpt.load_model_state(Two(), state, "ckpt.pt")
    assert str(e.value) == (
        f"ckpt.pt does not match Two: missing keys: {missing}; unexpected keys: {unexpected}; "
        f"mismatched shapes: {mismatched}. Was it written by another model or config?"
    )


def test_load_model_state_lists_at_most_eight_keys_and_counts_them():
    model = nn.Sequential(*[nn.Linear(1, 1, bias=False) for _ in range(9)])
    with pytest.raises(CheckpointError) as e:
        ckpt.load_model_state(model, {})
    names = ", ".join(f"{i}.weight" for i in range(8))
    assert f"missing keys: {names} ... (9 in all); unexpected keys: none" in str(e.value)
    assert str(e.value).startswith("checkpoint does not match Sequential:")
    model8 = nn.Sequential(*[nn.Linear(1, 1, bias=False) for _ in range(8)])
    with pytest.raises(CheckpointError, match=rf"missing keys: {names}; unexpected"):
        ckpt.load_model_state(model8, {})


def test_manifest_and_name_helpers(tmp_path):
    assert ckpt.checkpoint_name(12, sharded=False) == "step_00000012.pt"
    assert ckpt.checkpoint_name(12, sharded=True) == "step_00000012"
    assert ckpt.manifest_path(Path("x/step_00000012.pt")) == Path("x/step_00000012.pt.manifest.json")
    assert ckpt.manifest_path(Path("x/step_00000012")) == Path("x/step_00000012/manifest.json")


def test_resolve_checks_the_hash_unless_told_to_check_sizes_only(tmp_path):
    path = ckpt.save_checkpoint({"model": {"w": torch.arange(64.0)}}, tmp_path / "checkpoints", 1)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    for where in (path, tmp_path / "checkpoints", tmp_path):
        with pytest.raises(CheckpointError, match="sha256"):
            ckpt.resolve_checkpoint(where)
        assert ckpt.resolve_checkpoint(where, verify=False) == path  # the size is unchanged


def test_resolve_names_what_it_expected(tmp_path):
    with pytest.raises(CheckpointError) as e:
        ckpt.resolve_checkpoint(tmp_path)
    assert str(e.value) == (
        f"no checkpoint at {tmp_path}: expected a step_*.pt file, a DCP checkpoint directory, "
        "a checkpoints/ directory or a run dir containing one"
    )
