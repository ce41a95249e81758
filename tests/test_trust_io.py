"""Files the project writes are readable by a team on a shared cluster (0666 minus the umask)."""

from __future__ import annotations

import os
import stat

import pytest

from dyt.io import atomic_write_json, atomic_write_text, current_umask


@pytest.fixture
def umask():
    """Set the process umask for one test, then restore it."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_written_files_and_dirs_get_normal_permissions(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    assert current_umask() == mask
    atomic_write_json(tmp_path / "new" / "results.json", {"val/top1": 50.8})
    atomic_write_text(tmp_path / "last", "step_00000004.pt\n")
    assert stat.S_IMODE((tmp_path / "new" / "results.json").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "last").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == dir_mode
    with open(tmp_path / "plain", "w") as f:  # what a plain open gives, for comparison
        f.write("x")
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == file_mode
