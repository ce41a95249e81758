"""The C++ kernel's build cache is keyed by the source's bytes and the build flags, not by the checkout.

Before: every checkout built ``dyt_pointwise_cpu_<isa>`` into the same directory, so two checkouts (or
an installed copy and a clone) rebuilt it in turn, and different sources overwrote each other.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dyt.nn.kernels import cpp

ROOT = Path(__file__).resolve().parents[1]


def copy_source(directory: Path, extra: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / cpp.SOURCE.name
    path.write_bytes(cpp.SOURCE.read_bytes() + extra.encode())
    return path


def test_the_key_follows_the_bytes_and_the_flags_not_the_path(tmp_path):
    a, b = copy_source(tmp_path / "checkout_a"), copy_source(tmp_path / "checkout_b")
    changed = copy_source(tmp_path / "checkout_c", "// another kernel\n")
    flags = ["-O3", "-mavx2"]
    assert cpp.build_key(a, flags) == cpp.build_key(b, flags)
    assert cpp.build_key(a, flags) != cpp.build_key(changed, flags)
    assert cpp.build_key(a, flags) != cpp.build_key(a, ["-O3", "-mavx512f"])


def test_the_staged_source_is_written_once_and_compiled_from_one_path(tmp_path):
    a, b = copy_source(tmp_path / "checkout_a"), copy_source(tmp_path / "checkout_b")
    build = tmp_path / "ext" / "dyt_pointwise_cpu_avx2_0123"
    staged = cpp.stage_source(a, build)
    os.utime(staged, (1, 1))  # what ninja compares: an unchanged copy keeps its time
    assert cpp.stage_source(b, build) == staged and staged.stat().st_mtime == 1
    assert staged.read_bytes() == a.read_bytes()
    assert [p.name for p in staged.parent.iterdir()] == [a.name]  # no temporary file left


BUILD = """
import sys
from pathlib import Path
from dyt.nn.kernels import cpp
cpp.SOURCE = Path(sys.argv[1])
cpp.ops()
print(cpp.build_seconds)
"""


@pytest.mark.slow
def test_two_checkouts_build_concurrently_once_and_a_third_does_not_rebuild(tmp_path):
    """Two processes with two source paths (same bytes) start a first build at once in an empty cache."""
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), "PYTHONPATH": str(ROOT)}
    sources = [copy_source(tmp_path / f"checkout_{i}") for i in range(3)]
    procs = [
        subprocess.Popen([sys.executable, "-c", BUILD, str(s)], env=env, stdout=subprocess.PIPE, text=True)
        for s in sources[:2]
    ]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    (build,) = (tmp_path / "ext").iterdir()
    assert build.name.startswith("dyt_pointwise_cpu_")
    (library,) = build.glob("*.so")
    built_at = library.stat().st_mtime_ns
    out = subprocess.run([sys.executable, "-c", BUILD, str(sources[2])], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert library.stat().st_mtime_ns == built_at, "the third checkout rebuilt the kernel"
    assert [p.name for p in (tmp_path / "ext").iterdir()] == [build.name]
