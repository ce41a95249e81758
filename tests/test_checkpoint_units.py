"""Unit tests of dyt/engine/checkpoint.py that pin its small parts exactly: the RNG round trip, every
error message (what a user reads when a save or load goes wrong), the key check of model loading and
the DCP read-back. Written against the survivors of a mutation run (results/mutation.md); fast, no trainer."""

from __future__ import annotations

import json
import random
import re
import shutil
import warnings
from collections import namedtuple
from concurrent.futures import Future as ConcurrentFuture
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn

from dyt.engine import checkpoint as ckpt
from dyt.engine import checkpoint_dir
from dyt.engine import manifest as manifest_format
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
        ckpt.save_checkpoint(state, tmp_path / "c", 4, keep=1, sharded=True)
    assert not (tmp_path / "c").exists()
    path = ckpt.save_checkpoint({"model": {"w": torch.ones(2)}, "step": 4}, tmp_path / "c", 4, sharded=True)
    assert ckpt.load_checkpoint(path)["model"]["w"].tolist() == [1.0, 1.0]


def test_sharded_save_without_a_process_group_warns_nothing(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ckpt.save_checkpoint({"model": {"w": torch.ones(2)}, "step": 1}, tmp_path, 1, sharded=True)


def test_sharded_read_back_keeps_dtypes_and_dotted_names(tmp_path):
    model = {"blocks.0.fc.weight": torch.arange(6.0).reshape(2, 3).bfloat16(), "steps": torch.arange(3)}
    ema = {"blocks.0.fc.weight": torch.full((2, 3), 0.5, dtype=torch.float64)}
    path = ckpt.save_checkpoint({"model": model, "ema": ema, "step": 2}, tmp_path, 2, sharded=True)
    state = ckpt.load_checkpoint(path)
    for got, want in ((state["model"], model), (state["ema"], ema)):
        assert got.keys() == want.keys()
        for k in want:
            assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k


def test_sharded_read_back_failure_says_in_one_process(tmp_path):
    path = ckpt.save_checkpoint({"model": {"w": torch.ones(2)}, "step": 1}, tmp_path, 1, sharded=True)
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

    sharded = ckpt.save_checkpoint({"model": {"w": torch.ones(2)}, "step": 5}, tmp_path / "c", 5, sharded=True)
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


# ---- the second half of the mutation run (results/mutation.md, "checkpoint.py (full run)") ------------
def test_human_bytes_units_and_their_boundaries():
    sizes = (5.25, 999, 1000, 1500, 2_200_000, 3.5e9, 1.5e12, 5e15)
    assert [ckpt.human_bytes(n) for n in sizes] == [
        "5 B",
        "999 B",
        "1 kB",
        "1.5 kB",
        "2.2 MB",
        "3.5 GB",
        "1.5 TB",
        "5e+03 TB",
    ]


def test_write_failure_with_only_a_cxx_location_says_the_write_failed(tmp_path):
    e = RuntimeError("[enforce fail at inline_container.cc:672] . \nmore")
    assert "(RuntimeError: the write failed; " in str(ckpt._write_failed(tmp_path / "step_00000002.pt", e))


class Future:
    """What DCP's async_save returns, in miniature: done or not, and a result that may raise."""

    def __init__(self, done: bool, error: BaseException | None = None) -> None:
        self._done, self.error = done, error

    def done(self) -> bool:
        return self._done

    def result(self) -> None:
        if self.error is not None:
            raise self.error


def test_pending_checkpoint_is_done_when_its_write_has_ended():
    def pending(future):
        return ckpt.PendingCheckpoint(future, Path("t"), Path("f"), b"", 1, keep=1, is_main=True)

    assert pending(None).done() and pending(Future(done=True)).done() and not pending(Future(done=False)).done()


def test_a_failed_background_write_removes_its_files_and_names_the_checkpoint(tmp_path):
    tmp, final = tmp_path / ".step_00000003.tmp", tmp_path / "step_00000003"
    tmp.mkdir()
    (tmp / "__0_0.distcp").write_bytes(b"half")
    failed = Future(done=True, error=OSError(28, "No space left on device"))
    with pytest.raises(CheckpointError) as e:
        ckpt.PendingCheckpoint(failed, tmp, final, b"", 3, keep=1, is_main=True).finish()
    assert str(e.value).startswith(f"could not write checkpoint {final} (OSError: No space left on device; ")
    assert list(tmp_path.iterdir()) == []


def test_list_checkpoints_by_name_oldest_first(tmp_path):
    assert ckpt.list_checkpoints(tmp_path / "absent") == []
    written = [ckpt.save_checkpoint({"model": {}}, tmp_path, step, keep=3) for step in (10, 2)]
    assert ckpt.list_checkpoints(str(tmp_path)) == written[::-1]


def test_background_sharded_save_publishes_on_finish(tmp_path):
    state = {"model": {"w": torch.arange(4.0)}}
    pending = ckpt.save_checkpoint({**state, "step": 3}, tmp_path, 3, sharded=True, background=True)
    assert isinstance(pending, ckpt.PendingCheckpoint) and not (tmp_path / ckpt.LAST).exists()
    path = pending.finish()
    assert path == tmp_path / "step_00000003" and (tmp_path / ckpt.LAST).read_text() == "step_00000003\n"
    assert ckpt.load_checkpoint(path)["model"]["w"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_the_async_group_is_one_gloo_group_made_once(one_process_group, monkeypatch):
    monkeypatch.setattr(ckpt, "_ASYNC_GROUP", [])
    group = ckpt._async_group()
    assert group is not None and ckpt._async_group() is group and dist.get_backend(group) == "gloo"
    assert group is not dist.group.WORLD


def test_a_background_save_waits_for_the_upload_future_of_a_staged_save(tmp_path, monkeypatch):
    """async_save returns a future, or (staged saves) a response whose upload_completion is that future."""
    upload = ConcurrentFuture()

    def staged_async_save(state_dict, *, checkpoint_id, process_group):
        dcp.save(state_dict, checkpoint_id=checkpoint_id)
        return SimpleNamespace(staging_completion=None, upload_completion=upload)

    monkeypatch.setattr(ckpt.dcp, "async_save", staged_async_save)
    state = {"model": {"w": torch.ones(2)}}
    pending = ckpt.save_checkpoint({**state, "step": 1}, tmp_path, 1, sharded=True, background=True)
    assert not pending.done()
    upload.set_result(None)
    assert pending.done() and pending.finish() == tmp_path / "step_00000001"
    assert ckpt.load_checkpoint(tmp_path)["model"]["w"].tolist() == [1.0, 1.0]


def test_remove_partial_deletes_the_temporary_files_and_directories_only(tmp_path):
    ckpt.remove_partial(tmp_path / "absent")
    kept = ckpt.save_checkpoint({"model": {}}, tmp_path, 2)
    (tmp_path / ".step_00000004.pt.tmp123").write_bytes(b"half")
    (tmp_path / ".step_00000004.tmp").mkdir()
    (tmp_path / ".step_00000004.tmp" / "__0_0.distcp").write_bytes(b"half")
    ckpt.remove_partial(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [ckpt.LAST, kept.name, kept.name + ".manifest.json"]


def test_check_finite_state_walks_lists_and_tuples_and_skips_integers():
    nan = torch.tensor(float("nan"))
    state = {"optimizer": {"state": {0: {"buffers": [torch.ones(1), nan], "pair": (nan, torch.arange(2))}}}}
    assert ckpt.check_finite_state(state) == ["optimizer.state.0.buffers.1", "optimizer.state.0.pair.0"]
    assert ckpt.check_finite_state({"model": {"steps": torch.arange(3)}, "step": nan}) == []


def test_load_checkpoint_refuses_what_is_not_a_checkpoint_dict_and_records_the_path(tmp_path):
    for content in ([1, 2], {"weights": {}}):
        path = tmp_path / "step_00000001.pt"
        torch.save(content, path)
        ckpt.write_manifest({path.name: path}, 1, ckpt.manifest_path(path))
        with pytest.raises(CheckpointError) as e:
            ckpt.load_checkpoint(path)
        assert str(e.value) == f"{path} is not a dyt checkpoint: expected a dict with a 'model' entry"
    good = ckpt.save_checkpoint({"model": {}}, tmp_path / "good", 2)
    assert ckpt.load_checkpoint(tmp_path / "good")["path"] == str(good)


def test_verify_hashes_by_default_and_wants_finite_recorded(tmp_path):
    path = ckpt.save_checkpoint({"model": {"w": torch.arange(64.0)}}, tmp_path, 1)
    manifest = ckpt.read_manifest(path)
    assert ckpt.verify_checkpoint(path) == manifest
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert ckpt.verify_checkpoint(path, checksums=False) == manifest  # same size
    with pytest.raises(CheckpointError) as e:
        ckpt.verify_checkpoint(path)
    assert str(e.value) == (
        f"{path} is damaged: the sha256 of {path.name} differs from the one written with it "
        "(disk, copy or transfer corruption)"
    )
    assert manifest["format"] == manifest_format.MANIFEST_FORMAT == 1 and manifest["step"] == 1
    ckpt.manifest_path(path).write_text(json.dumps({**manifest, "finite": False}))
    with pytest.raises(CheckpointError) as e:
        ckpt.verify_checkpoint(path, checksums=False)
    assert str(e.value) == f"{path}: its manifest does not record finite: true"
    path.unlink()
    ckpt.manifest_path(path).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError) as e:
        ckpt.verify_checkpoint(path)
    assert str(e.value) == f"{path} is incomplete: {path.name} is missing"


def test_save_keeps_one_checkpoint_by_default_and_names_the_step_it_refuses(tmp_path):
    ckpt.save_checkpoint({"model": {}}, tmp_path, 1)
    newest = ckpt.save_checkpoint({"model": {}}, tmp_path, 2)
    assert ckpt.list_checkpoints(tmp_path) == [newest]
    with pytest.raises(NonFiniteCheckpointError, match=r"^refusing to write checkpoint step 4: 1 tensor\(s\)"):
        ckpt.save_checkpoint({"model": {"w": torch.tensor(float("nan"))}}, tmp_path, 4)


def test_pruning_removes_manifests_whose_checkpoint_is_gone(tmp_path):
    kept = ckpt.save_checkpoint({"model": {}}, tmp_path, 2)
    (tmp_path / "step_00000001.pt.manifest.json").write_text("{}")  # its checkpoint was deleted by hand
    ckpt._prune(tmp_path, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [ckpt.LAST, kept.name, kept.name + ".manifest.json"]


def test_manifest_problems_are_named_exactly(tmp_path):
    path = ckpt.save_checkpoint({"model": {}}, tmp_path, 1)
    manifest = ckpt.manifest_path(path)
    for content, message in [
        ("{not json", f"the manifest {manifest} of {path} is unreadable (JSONDecodeError: "),
        ("[]", f"the manifest {manifest} of {path} has no 'files' mapping"),
        ('{"files": []}', f"the manifest {manifest} of {path} has no 'files' mapping"),
    ]:
        manifest.write_text(content)
        with pytest.raises(CheckpointError) as e:
            ckpt.read_manifest(path)
        assert str(e.value).startswith(message), str(e.value)
    manifest.unlink()
    with pytest.raises(CheckpointError) as e:
        ckpt.read_manifest(path)
    assert str(e.value) == (
        f"{path} has no checksum manifest ({manifest.name}): it was not written completely by dyt (or by a dyt "
        "before checksums: if you trust it, adopt it with dyt.engine.checkpoint.adopt_checkpoint(path))"
    )


def test_the_last_finite_checkpoint_is_judged_by_sizes_only(tmp_path):
    path = ckpt.save_checkpoint({"model": {"w": torch.arange(64.0)}}, tmp_path, 1)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert ckpt.latest_finite_checkpoint(tmp_path) == path


def test_latest_checkpoint_joins_every_problem_and_warns_on_an_unusable_last(tmp_path, capsys):
    (tmp_path / ckpt.LAST).write_text("garbage")
    assert ckpt.latest_checkpoint(tmp_path) is None
    last = tmp_path / ckpt.LAST
    assert capsys.readouterr().err == (
        f"warning: {last} does not name a checkpoint (it holds 'garbage'); no checkpoint found, starting afresh\n"
    )
    for step in (1, 2):
        path = ckpt.save_checkpoint({"model": {}}, tmp_path, step, keep=2)
        ckpt.manifest_path(path).unlink()
    with pytest.raises(CheckpointError) as e:
        ckpt.latest_checkpoint(tmp_path)
    assert "has no checksum manifest" in str(e.value) and "adopt_checkpoint(path)); " in str(e.value)


def test_load_without_verify_checks_sizes_only(tmp_path):
    path = ckpt.save_checkpoint({"model": {"w": torch.arange(64.0)}, "step": 1}, tmp_path, 1)
    manifest = ckpt.read_manifest(path)
    manifest["files"][path.name]["sha256"] = "0" * 64  # a wrong hash of a file of the right size
    ckpt.manifest_path(path).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="sha256"):
        ckpt.load_checkpoint(path)
    assert ckpt.load_checkpoint(path, verify=False)["step"] == 1


def test_an_unreadable_or_garbage_last_is_named_with_what_it_holds(tmp_path):
    last = tmp_path / ckpt.LAST
    last.write_bytes(b"\xff\xfe")
    assert checkpoint_dir.named_by_last(tmp_path) == (None, f"{last} is unreadable (UnicodeDecodeError)")
    last.write_text("x" * 60)
    expected = f"{last} does not name a checkpoint (it holds {'x' * 40!r})"
    assert checkpoint_dir.named_by_last(tmp_path) == (None, expected)


def test_a_sharded_checkpoint_written_again_at_the_same_step_replaces_the_old_one(tmp_path):
    for value in (1.0, 2.0):
        path = ckpt.save_checkpoint({"model": {"w": torch.full((2,), value)}, "step": 1}, tmp_path, 1, sharded=True)
    assert ckpt.load_checkpoint(path)["model"]["w"].tolist() == [2.0, 2.0]


# ---- one save path and one load path (issue 23) -------------------------------------------------------
def test_one_file_is_written_by_rank_0_alone_and_never_in_the_background(tmp_path):
    path = ckpt.save_checkpoint({"model": {"w": torch.ones(2)}}, tmp_path / "c", 1, is_main=False)
    assert path == tmp_path / "c" / "step_00000001.pt" and not (tmp_path / "c").exists()
    with pytest.raises(ValueError, match=r"^background checkpoint writes need sharded=True \(DCP\)"):
        ckpt.save_checkpoint({"model": {}}, tmp_path / "c", 1, background=True)


def test_either_layout_holds_one_dict_with_the_parts_sharded_and_the_plain_values_in_meta(tmp_path):
    state = {"model": {"w": torch.arange(3.0)}, "ema": None, "step": 7, "config": {"seed": 1}}
    file = ckpt.save_checkpoint(state, tmp_path / "f", 7)
    directory = ckpt.save_checkpoint(state, tmp_path / "d", 7, sharded=True)
    assert ckpt.safe_load(directory / ckpt.META) == {"step": 7, "config": {"seed": 1}}
    assert sorted(ckpt.read_checkpoint(file)) == ["config", "ema", "model", "step"]
    assert ckpt.read_checkpoint(directory) == {"step": 7, "config": {"seed": 1}}
    for path in (file, directory):
        got = ckpt.read_parts(path, ckpt.read_checkpoint(path))
        assert got["step"] == 7 and got["ema"] is None and torch.equal(got["model"]["w"], torch.arange(3.0))


def test_a_file_that_is_not_a_checkpoint_dict_is_refused(tmp_path):
    torch.save([1, 2], tmp_path / "step_00000001.pt")
    with pytest.raises(CheckpointError, match=r"is not a dyt checkpoint: expected a dict with a 'model' entry$"):
        ckpt.read_checkpoint(tmp_path / "step_00000001.pt")
