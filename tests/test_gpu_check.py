"""The one-call GPU check (scripts/ci/gpu_check.py): its plumbing, on CPU.

The GPU sections themselves need a CUDA machine; here the driver runs stand-in sections (fast), and
the whole dry run (every section on CPU at toy sizes, Triton under its interpreter) is a slow test.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts/ci/gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
sys.modules["gpu_check"] = gpu_check  # its dataclass looks its module up while being defined
spec.loader.exec_module(gpu_check)


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_report_records_every_section_passed_failed_or_timed_out(tmp_path, monkeypatch):
    stand_ins = [
        gpu_check.Section("Prints", _python("print('| a | table |')"), 60),
        gpu_check.Section("Fails", _python("import sys; print('partial'); sys.exit(3)"), 60),
        gpu_check.Section("Hangs", _python("import time; time.sleep(30)"), 1),
        gpu_check.Section("Sees its env", _python("import os; print(os.environ['MARK'])"), 60, {"MARK": "set"}),
    ]
    monkeypatch.setattr(gpu_check, "sections", lambda dry_run: stand_ins)
    report = tmp_path / "sub" / "report.md"
    assert gpu_check.main(["--dry-run", str(report)]) == 1  # not every section passed
    text = report.read_text()
    assert text.startswith("# GPU check (dry run on CPU, toy sizes)")
    assert [line for line in text.splitlines() if line.startswith("## ")] == [f"## {s.title}" for s in stand_ins]
    assert "| a | table |" in text and "partial" in text and "\nset\n" in text
    assert "passed in" in text and "FAILED (exit 3)" in text and "TIMED OUT" in text


def test_gpu_sections_fit_in_eight_minutes_and_name_existing_scripts():
    sections = gpu_check.sections(dry_run=False)
    multi = [s for s in sections if s.title.startswith(gpu_check.MULTI_GPU)]
    assert len(multi) == 1  # skips at once on one GPU
    assert sum(s.timeout_s for s in sections if s not in multi) < 8 * 60
    assert sum(s.timeout_s for s in sections) < 9.5 * 60
    for s in sections:
        script = next((a for a in s.command if a.endswith(".py")), None)
        assert script is None or (ROOT / script).is_file(), script
    assert any("--paper" in s.command for s in sections) and any("-m" in s.command for s in sections)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_the_real_check_refuses_and_says_how_to_dry_run(capsys):
    with pytest.raises(SystemExit):
        gpu_check.main([])
    assert "--dry-run" in capsys.readouterr().err


@pytest.mark.slow  # five fresh interpreters, Triton's interpreter among them: ~1 min on 2 cores
def test_dry_run_on_cpu_passes_every_section(tmp_path):
    report = tmp_path / "report.md"
    assert gpu_check.main(["--dry-run", str(report)]) == 0, report.read_text()
    text = report.read_text()
    assert text.count("passed in") == len(gpu_check.sections(dry_run=True))
    assert "| 256 x 64 | fp32 | fwd |" in text and "DyT/RMS" in text and "| llama_tiny |" in text
