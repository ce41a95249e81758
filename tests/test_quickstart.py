"""The README's quickstart commands, end to end through the entry points: a norm sweep with train.py, the
table with eval.py, and eval.py run= re-evaluating a checkpoint.

One test on purpose: what the entry points do in-process is specified elsewhere (metrics, results and a
finished run left alone: tests/test_engine_train.py; resume and longer training: tests/test_engine_train.py,
tests/test_trust_identity.py; 2 processes resumed in 1: tests/test_engine_distributed.py; bad input:
tests/test_bad_input.py; tables and curves: tests/test_results.py). This test checks the commands and their
wiring: Hydra's multirun, the quickstart recipe, and eval.py's two modes on the runs it made."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine_helpers import ENV as TEST_ENV

ROOT = Path(__file__).resolve().parents[1]
ENV = {**TEST_ENV, "WANDB_MODE": "disabled"}  # no W&B at all in these runs


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_readme_quickstart_sweep_table_and_reevaluation(tmp_path):
    runs = tmp_path / "runs"
    out = _run(
        "train.py",
        "-m",
        "norm=layernorm,dyt",
        "trainer.epochs=1",
        f"run_dir={runs}/quickstart/${{norm.tag}}/seed0",
        f"hydra.sweep.dir={tmp_path}/sweep",
    ).stdout
    assert out.count("final metrics") == 2, "one finished run per norm"
    for norm in ("layernorm", "dyt"):
        run_dir = runs / "quickstart" / norm / "seed0"
        results = json.loads((run_dir / "results.json").read_text())
        assert (results["norm"], results["model"], results["steps"]) == (norm, "vit_digits", 22), (
            "the quickstart recipe: vit_digits, 22 steps an epoch"
        )
        assert 0 <= results["val/top1"] <= 100  # learning itself: tests/test_engine_train.py (1 epoch is warm-up)
        logged = [r for r in _metrics(run_dir) if "train/loss" in r]
        assert logged and all(("alpha/mean" in r) == (norm == "dyt") for r in logged), "alpha is tracked for DyT"
        assert (run_dir / "config.yaml").exists() and any((run_dir / "checkpoints").iterdir())

    out = _run("eval.py", f"runs_root={runs}", f"out_dir={tmp_path}/results").stdout
    assert "| quickstart (vit_digits) [22 steps] |" in out and "| layernorm | dyt | dyt − layernorm |" in out
    assert (tmp_path / "results" / "experiments_val_top1.md").exists()
    assert (tmp_path / "results" / "figures" / "quickstart_curves.png").exists()

    # eval.py run= re-evaluates the last checkpoint with the run's own config and writes its metrics into
    # results.json: they agree with training's last evaluation.
    run_dir = runs / "quickstart" / "dyt" / "seed0"
    final = json.loads((run_dir / "results.json").read_text())
    (run_dir / "results.json").write_text(json.dumps({**final, "val/top1": -1.0}))
    _run("eval.py", f"run={run_dir}")
    assert json.loads((run_dir / "results.json").read_text())["val/top1"] == pytest.approx(final["val/top1"])
