"""The trainer-overhead benchmark (scripts/bench/trainer_overhead.py) runs end to end and prints its
tables: a tiny run (steps 1 and 2, one round) of the quickstart, with the attribution (one of its trainer
variants, to stay fast). Timings are not checked (noisy on a shared machine); that the command runs and
reports is."""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts/bench/trainer_overhead.py"
spec = importlib.util.spec_from_file_location("trainer_overhead", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

pytestmark = pytest.mark.usefixtures("one_thread")
NUMBER = r"-?\d+\.\d+"


def test_benchmark_command_prints_its_tables(capsys, monkeypatch):
    label, extra = next(iter(bench.ATTRIBUTION.items()))
    monkeypatch.setattr(bench, "ATTRIBUTION", {label: extra})
    args = ["--setups", "quickstart", "--steps", "1", "2", "--rounds", "1", "--clock", "cpu", "--attribute"]
    results = bench.main(args)
    out = capsys.readouterr().out
    assert re.search(rf"^\| quickstart \| 64 \| {NUMBER} \| {NUMBER} \| {NUMBER} \|$", out, re.M), out
    for label in bench.ATTRIBUTION:
        assert re.search(rf"^\| {re.escape(label)} \| {NUMBER} \| [+-]{NUMBER} \|$", out, re.M), (label, out)
    for label in ("seed_all per micro-batch", "per-item seeding x batch", "grad-norm pass (clip_grad=null)"):
        assert re.search(rf"^\| {re.escape(label)} \| {NUMBER} \|$", out, re.M), (label, out)
    row = results["quickstart"]
    assert math.isfinite(row["ratio"]) and row["bare_ms"] > 0 and row["ratio"] == row["bare_ms"] / row["trainer_ms"]
