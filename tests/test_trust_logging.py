"""Console and W&B output: a W&B login problem is one line with the offline option; log-mode progress
shows the time left and the throughput's unit."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import wandb
from omegaconf import OmegaConf

from dyt.engine.logging import LoggerError, Progress, WandbRun, flop_rate


def test_wandb_without_api_key_is_one_line_naming_offline_mode(tmp_path, monkeypatch):
    def no_key(**kwargs):
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.setattr(wandb, "init", no_key)
    cfg = OmegaConf.create(
        {
            "logger": OmegaConf.load(Path(__file__).resolve().parents[1] / "configs/logger/wandb.yaml"),
            "norm": {"name": "dyt"},
            "model": {"name": "vit_digits"},
            "task": {"_target_": "dyt.tasks.classification.ClassificationTask"},
            "seed": 0,
            "experiment_name": "quickstart",
            "run_dir": str(tmp_path),
        }
    )
    assert "mode" in cfg.logger  # the key the message names exists in configs/logger/wandb.yaml
    with pytest.raises(LoggerError) as info:
        WandbRun(cfg, {}, "abc123", enabled=True)
    message = str(info.value)
    assert "\n" not in message and "No API key configured" in message
    assert "logger.mode=offline" in message and "wandb login" in message


def test_log_mode_shows_eta_and_throughput_unit(capsys, monkeypatch):
    clock = iter([100.0, 130.0, 160.0])  # start, then 30 s per 10 steps
    monkeypatch.setattr("dyt.engine.logging.time.time", lambda: next(clock))
    progress = Progress("log", total_steps=100, start_step=40, log_every=10, enabled=True, throughput_unit="images")
    progress.update(50, 1, {"train/loss": 0.5, "train/images_per_s": 1234.0})
    progress.update(60, 1, {"train/loss": 0.4, "train/images_per_s": 1250.0})
    first, second = capsys.readouterr().out.splitlines()
    # 10 steps in 30 s, 50 to go: 2m30s; then 20 steps in 60 s, 40 to go: 2m00s
    assert first.startswith("[step 50/100 epoch 1 30s ETA 2m30s]") and "throughput 1234 images/s" in first
    assert second.startswith("[step 60/100 epoch 1 1m00s ETA 2m00s]")
    assert re.search(r"loss 0\.4\b", second)


def test_flop_rates_in_readable_units_and_per_device_rates_only_with_several_processes(capsys):
    assert [flop_rate(x) for x in (5.774e9, 4.2e14, 989e12, 1.5e15, 12.0)] == [
        "5.77 GFLOP/s",
        "420 TFLOP/s",
        "989 TFLOP/s",
        "1.5 PFLOP/s",
        "12 FLOP/s",
    ]
    row = {
        "train/loss": 0.5,
        "train/images_per_s": 1200.0,
        "train/images_per_device_per_s": 300.0,
        "train/tflop_per_device_per_s": 0.0007,
        "train/mfu": 41.0,
    }
    for world_size in (1, 4):
        Progress("log", 10, 0, 1, True, throughput_unit="images", world_size=world_size).update(1, 0, row)
    one, four = capsys.readouterr().out.splitlines()
    assert "throughput 1200 images/s" in one and "flops 700 MFLOP/s" in one and "mfu 41" in one
    assert "per_device" not in one and "tflop" not in one
    assert "images_per_device_per_s 300" in four and "flops/device 700 MFLOP/s" in four
