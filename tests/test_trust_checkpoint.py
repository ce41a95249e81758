"""Checkpoints that cannot run code and cannot lie: checksums, fallback, finiteness, safe DCP metadata,
one-line write errors. Library-level tests (no trainer): states are built by hand, small and fast."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from dyt.engine import checkpoint as ckpt
from dyt.engine.checkpoint import CheckpointError, NonFiniteCheckpointError


def train_state(seed: int = 0) -> dict:
    """What the trainer saves, in miniature: model, EMA and AdamW state after one step, plus metadata."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 8)).square().sum().backward()
    opt.step()
    return {
        "model": model.state_dict(),
        "ema": {k: v.clone() for k, v in model.state_dict().items()},
        "optimizer": opt.state_dict(),
        "step": 0,
        "rng": ckpt.rng_state(),
    }


def save_steps(ckpt_dir: Path, steps: tuple[int, ...], sharded: bool = False, keep: int = 10) -> list[Path]:
    paths = []
    for step in steps:
        state = {**train_state(step), "step": step}
        paths.append(ckpt.save_checkpoint(state, ckpt_dir, step, keep, sharded=sharded))
    return paths


def flip_byte(path: Path, where: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0xFF
    path.write_bytes(bytes(data))


def one_warning(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("warning: "), lines
    return lines[0]


class RunsCode:
    """Unpickling this creates ``marker``: the payload of a malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---- manifests, checksums and fallback --------------------------------------------------------------
@pytest.mark.parametrize("sharded", [False, True], ids=["file", "dcp"])
def test_manifest_records_every_file_and_finite(tmp_path, sharded):
    (path,) = save_steps(tmp_path, (2,), sharded)
    manifest = json.loads(ckpt.manifest_path(path).read_text())
    assert manifest["finite"] is True and manifest["step"] == 2
    on_disk = sorted(p.name for p in path.iterdir() if p.name != ckpt.MANIFEST) if sharded else [path.name]
    assert sorted(manifest["files"]) == on_disk
    state = ckpt.load_checkpoint(tmp_path)
    assert state["step"] == 2 and torch.equal(state["model"]["0.weight"], train_state(2)["model"]["0.weight"])


@pytest.mark.parametrize("sharded", [False, True], ids=["file", "dcp"])
def test_flipped_tensor_bytes_are_refused_and_resolution_falls_back(tmp_path, capsys, sharded):
    old, new = save_steps(tmp_path, (2, 4), sharded)
    data_file = next(new.glob("*.distcp")) if sharded else new
    flip_byte(data_file)
    with pytest.raises(CheckpointError, match=f"{new.name} is damaged: the sha256 of {data_file.name} differs"):
        ckpt.load_checkpoint(new)
    capsys.readouterr()
    assert ckpt.latest_checkpoint(tmp_path) == old
    line = one_warning(capsys)
    assert f"{new} is damaged" in line and f"using {old} instead" in line
    assert ckpt.load_checkpoint(tmp_path)["step"] == 2


@pytest.mark.parametrize("sharded", [False, True], ids=["file", "dcp"])
def test_truncated_newest_checkpoint_falls_back_to_the_intact_one(tmp_path, capsys, sharded):
    old, new = save_steps(tmp_path, (2, 4), sharded)
    data_file = next(new.glob("*.distcp")) if sharded else new
    data_file.write_bytes(data_file.read_bytes()[:100])
    assert ckpt.latest_checkpoint(tmp_path, verify=False) == old
    assert "is truncated or damaged" in one_warning(capsys)


@pytest.mark.parametrize("content", ["", "\x00\x17garbage", "step_00000009.pt"], ids=["empty", "garbage", "gone"])
def test_unusable_last_file_falls_back_with_a_warning(tmp_path, capsys, content):
    _, new = save_steps(tmp_path, (2, 4))
    (tmp_path / ckpt.LAST).write_text(content)
    assert ckpt.latest_checkpoint(tmp_path) == new
    line = one_warning(capsys)
    assert "last" in line and "sharded" not in line and "DCP" not in line


def test_last_may_roll_back_to_an_earlier_checkpoint(tmp_path, capsys):
    old, _ = save_steps(tmp_path, (2, 4))
    (tmp_path / ckpt.LAST).write_text(old.name + "\n")
    assert ckpt.latest_checkpoint(tmp_path) == old
    assert capsys.readouterr().err == ""


def test_no_intact_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    (only,) = save_steps(tmp_path, (2,))
    flip_byte(only)
    with pytest.raises(CheckpointError, match="no intact checkpoint in .*remove .* to start the run afresh"):
        ckpt.latest_checkpoint(tmp_path)


@pytest.mark.parametrize("sharded", [False, True], ids=["file", "dcp"])
def test_checkpoint_without_manifest_is_not_trusted_until_adopted(tmp_path, capsys, sharded):
    old, new = save_steps(tmp_path, (2, 4), sharded)
    ckpt.manifest_path(new).unlink()
    assert ckpt.latest_checkpoint(tmp_path) == old
    assert "has no checksum manifest" in one_warning(capsys)
    with pytest.raises(CheckpointError, match=r"no checksum manifest .*adopt_checkpoint\(path\)"):
        ckpt.load_checkpoint(new)
    ckpt.adopt_checkpoint(new)
    assert ckpt.latest_checkpoint(tmp_path) == new and ckpt.load_checkpoint(new)["step"] == 4


# ---- no code execution -------------------------------------------------------------------------------
def forge_manifest(path: Path) -> None:
    """Rewrite the manifest of ``path`` to match its (tampered) files, as an attacker would."""
    files = {p.name: p for p in path.iterdir() if p.name != ckpt.MANIFEST} if path.is_dir() else {path.name: path}
    ckpt.write_manifest(files, 0, ckpt.manifest_path(path))


@pytest.mark.parametrize("forged", [False, True], ids=["checksum", "forged-checksum"])
def test_malicious_dcp_metadata_never_runs(tmp_path, capsys, forged):
    run_dir = tmp_path / "run"
    (path,) = save_steps(run_dir / "checkpoints", (2,), sharded=True)
    marker = tmp_path / "pwned"
    (path / ".metadata").write_bytes(pickle.dumps(RunsCode(marker)))
    if forged:
        forge_manifest(path)
    refused = "refusing to read DCP metadata .*global posix.system"
    with pytest.raises(CheckpointError, match=refused if forged else "truncated or damaged: .metadata has"):
        ckpt.load_checkpoint(path)
    # Damage (a checksum that does not match) is skipped; tampering (it asks for code) stops the run.
    with pytest.raises(CheckpointError, match=refused if forged else "no intact checkpoint"):
        ckpt.resolve_checkpoint(run_dir)
    with pytest.raises(CheckpointError, match=refused):  # the trainer's path, after resolution
        ckpt.load_sharded_into(path, train_state())
    assert not marker.exists()


def test_malicious_dcp_entry_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    state = {"model": {**train_state()["model"], "payload": RunsCode(marker)}, "step": 2}
    path = ckpt.save_checkpoint(state, tmp_path, 2, keep=1, sharded=True)
    with pytest.raises(CheckpointError, match=r"refusing to load the DCP entry model.payload.*posix.system"):
        ckpt.load_sharded_into(path, {"model": {"payload": 0}})
    assert not marker.exists()


def test_malicious_single_file_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "step_00000002.pt"
    torch.save({"model": {}, "payload": RunsCode(marker)}, path)
    forge_manifest(path)
    with pytest.raises(CheckpointError, match="refusing to load .*step_00000002.pt"):
        ckpt.load_checkpoint(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("sharded", [False, True], ids=["file", "dcp"])
def test_untrusted_content_is_refused_alike_in_both_formats_never_a_fallback(tmp_path, capsys, sharded):
    """docs/guarantees.md, "Untrusted content": a newest checkpoint that asks to run code stops the run
    (one error naming the file), for a single file and DCP metadata alike, even with an intact older one."""
    run_dir = tmp_path / "run"
    old, new = save_steps(run_dir / "checkpoints", (2, 4), sharded)
    marker = tmp_path / "pwned"
    if sharded:
        (new / ".metadata").write_bytes(pickle.dumps(RunsCode(marker)))
    else:
        torch.save({"model": {}, "payload": RunsCode(marker)}, new)
    forge_manifest(new)
    with pytest.raises(ckpt.UntrustedContentError, match=rf"refusing to (load|read DCP metadata) {new}"):
        ckpt.load_checkpoint(ckpt.resolve_checkpoint(run_dir))
    assert "warning" not in capsys.readouterr().err and not marker.exists()


# ---- finiteness --------------------------------------------------------------------------------------
def test_check_finite_state_names_the_tensors():
    state = train_state()
    assert ckpt.check_finite_state(state) == []
    state["optimizer"]["state"][0]["exp_avg"][0, 0] = float("nan")
    state["ema"]["1.bias"][0] = float("inf")
    assert ckpt.check_finite_state(state) == ["ema.1.bias", "optimizer.state.0.exp_avg"]


@pytest.mark.parametrize("sharded", [False, True], ids=["file", "dcp"])
def test_non_finite_state_is_never_written(tmp_path, sharded):
    (good,) = save_steps(tmp_path, (2,), sharded)
    state = {**train_state(), "step": 4}
    state["model"]["0.weight"][1, 1] = float("nan")
    with pytest.raises(NonFiniteCheckpointError, match=rf"model.0.weight.*last finite checkpoint is {good}"):
        ckpt.save_checkpoint(state, tmp_path, 4, keep=1, sharded=sharded)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [good.name]
    assert ckpt.latest_checkpoint(tmp_path) == good


def test_pruning_keeps_the_newest_finite_checkpoint(tmp_path):
    (finite,) = save_steps(tmp_path, (2,))
    for step in (4, 6):  # written by something else: no manifest, so not known to be finite
        torch.save({"model": {}}, tmp_path / ckpt.checkpoint_name(step, sharded=False))
    ckpt._prune(tmp_path, keep=1)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [finite.name, "step_00000006.pt"]


def test_pruning_removes_manifests_with_their_checkpoints(tmp_path):
    save_steps(tmp_path, (2, 4, 6), keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last", "step_00000006.pt", "step_00000006.pt.manifest.json"]


# ---- failed writes -----------------------------------------------------------------------------------
def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_is_one_actionable_line_and_leaves_no_temp_file(tmp_path, monkeypatch):
    (good,) = save_steps(tmp_path, (2,))

    def half_then_full(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")
        disk_full()

    monkeypatch.setattr(ckpt.torch, "save", half_then_full)
    with pytest.raises(CheckpointError) as info:
        ckpt.save_checkpoint(train_state(), tmp_path, 4, keep=1)
    message = str(info.value)
    assert "\n" not in message
    assert f"could not write checkpoint {tmp_path / 'step_00000004.pt'}" in message
    assert "No space left on device" in message and "B free there" in message
    assert f"resumes from {good}" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last", good.name, good.name + ".manifest.json"]


def test_torch_zip_writer_failure_reads_as_what_happened_with_free_space_in_human_units(tmp_path, monkeypatch):
    """torch.save on a full disk raises "[enforce fail at inline_container.cc:672] . unexpected pos ...";
    the line drops the C++ location and says the real free space (2.2 MB, not 0.0 GiB)."""

    def zip_writer_full(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1216 vs 1114")

    monkeypatch.setattr(ckpt.torch, "save", zip_writer_full)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 2_200_000))
    with pytest.raises(CheckpointError) as info:
        ckpt.save_checkpoint(train_state(), tmp_path, 4, keep=1)
    message = str(info.value)
    assert "enforce fail" not in message and "inline_container" not in message, message
    assert "(RuntimeError: unexpected pos 1216 vs 1114; 2.2 MB free there)" in message, message
    assert [ckpt.human_bytes(n) for n in (512, 2_200_000, 3.5e9, 1.5e12)] == ["512 B", "2.2 MB", "3.5 GB", "1.5 TB"]


def test_dcp_write_failure_is_one_line_not_a_checkpoint_exception(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt.dcp.FileSystemWriter, "write_data", disk_full)
    with pytest.raises(CheckpointError, match="could not write checkpoint .*No space left on device") as info:
        save_steps(tmp_path, (2,), sharded=True)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_dcp_load_failure_is_one_line(tmp_path):
    (path,) = save_steps(tmp_path, (2,), sharded=True)
    with pytest.raises(CheckpointError, match=r"cannot load DCP checkpoint .* into this model .*model.nope") as info:
        ckpt.load_sharded_into(path, {"model": {"nope": torch.zeros(3)}})
    assert "\n" not in str(info.value)
