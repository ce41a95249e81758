"""Run outputs other than checkpoints: ``metrics.jsonl``, W&B, and progress on the console.

Everything here is a no-op on ranks other than 0. ``metrics.jsonl`` holds one JSON object per line
with ``step`` and ``epoch`` plus metric keys (``train/loss``, ``val/top1``, ``val/top1_ema``, ...);
it is the source of truth for tables and tests.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from dyt.nn.factory import norm_tag

PROGRESS_MODES = ("auto", "bar", "log", "off")
FLOP_UNITS = (("PFLOP/s", 1e15), ("TFLOP/s", 1e12), ("GFLOP/s", 1e9), ("MFLOP/s", 1e6), ("kFLOP/s", 1e3))


class MetricsLog:
    """Append-only ``metrics.jsonl``; every line is flushed so a checkpoint can record the file's length."""

    def __init__(self, path: str | os.PathLike, enabled: bool) -> None:
        self.path, self.enabled = Path(path), enabled
        self._file = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (lives as long as the run)

    def truncate(self, nbytes: int) -> None:
        """Drop everything logged after a checkpoint that recorded ``nbytes`` (used on resume)."""
        if self._file is not None:
            self._file.flush()
            self._file.truncate(min(nbytes, self.tell()))
            self._file.seek(0, os.SEEK_END)

    def tell(self) -> int:
        """Current length of the file in bytes (0 on other ranks)."""
        return self._file.tell() if self._file is not None else 0

    def log(self, step: int, epoch: int, metrics: dict[str, Any]) -> None:
        if self._file is not None:
            row = {"step": step, "epoch": epoch, **{k: _plain(v) for k, v in metrics.items()}}
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _plain(v: Any) -> Any:
    v = v.item() if hasattr(v, "item") else v
    return None if isinstance(v, float) and not math.isfinite(v) else v


class LoggerError(RuntimeError):
    """The experiment logger (W&B) could not start."""


class WandbRun:
    """A W&B run named ``<experiment>/<norm>/seed<k>``, grouped by experiment, tagged by model / norm /
    seed / task. ``run_id`` (from the checkpoint) makes a resumed run continue the same W&B run."""

    def __init__(self, cfg: Any, config: dict[str, Any], run_id: str, enabled: bool) -> None:
        self.run = None
        if not enabled:
            return
        import wandb

        lg = cfg.logger
        norm, model = norm_tag(cfg.norm), cfg.get("model", {}).get("name", "model")
        task = str(cfg.get("task", {}).get("_target_", "task")).rsplit(".", 1)[-1]
        tags = [f"model:{model}", f"norm:{norm}", f"seed:{cfg.seed}", f"task:{task}", *lg.get("tags", [])]
        try:
            self.run = wandb.init(
                project=lg.get("project", "dyt"),
                entity=lg.get("entity"),
                mode=lg.get("mode"),
                id=run_id,
                resume="allow",
                name=f"{cfg.experiment_name}/{norm}/seed{cfg.seed}",
                group=str(cfg.experiment_name),
                tags=tags,
                config=config,
                dir=str(cfg.run_dir),
            )
        except wandb.errors.Error as e:  # no API key, wrong key, no network: one line, not W&B's traceback
            reason = " ".join(str(e).split()) or type(e).__name__
            raise LoggerError(
                f"W&B could not start ({reason}). Log in with `wandb login` or WANDB_API_KEY, or log locally "
                "with logger.mode=offline (upload later with `wandb sync`), or use logger=jsonl (no W&B)"
            ) from None

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.log({k: _plain(v) for k, v in metrics.items()}, step=step)

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None


def new_wandb_id() -> str:
    """A fresh W&B run id (generated once per run, then kept in its checkpoints)."""
    return secrets.token_hex(6)


def _duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``7300`` -> ``2h01m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def flop_rate(flop_per_s: float) -> str:
    """A FLOP rate in readable units: ``5.8e9`` -> ``5.8 GFLOP/s``, ``4.2e14`` -> ``420 TFLOP/s``."""
    for unit, scale in FLOP_UNITS:
        if abs(flop_per_s) >= scale:
            return f"{flop_per_s / scale:.3g} {unit}"
    return f"{flop_per_s:.3g} FLOP/s"


class Progress:
    """A progress bar with throughput on a TTY (``bar``) or one line every ``log_every`` steps (``log``),
    with the time left estimated from the steps of this process. ``throughput_unit`` is what the logged
    ``train/<unit>_per_s`` counts (the task declares it: ``images``, ``tokens``). The line shows the
    model FLOP rate (``train/tflop_per_device_per_s``) in readable units, per device and next to the
    other per-device rates when ``world_size`` is above 1; on one process those rates equal the totals
    and are left out of the line (``metrics.jsonl`` keeps them)."""

    def __init__(
        self,
        mode: str,
        total_steps: int,
        start_step: int,
        log_every: int,
        enabled: bool,
        throughput_unit: str = "samples",
        world_size: int = 1,
    ) -> None:
        if mode not in PROGRESS_MODES:
            raise ValueError(f"unknown trainer.progress {mode!r}; valid choices are: {', '.join(PROGRESS_MODES)}")
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode = mode if enabled else "off"
        self.total, self.log_every, self.bar = total_steps, max(1, log_every), None
        self.start, self.unit, self.key = start_step, f"{throughput_unit}/s", f"train/{throughput_unit}_per_s"
        self.world_size = world_size
        self._t0 = time.time()
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, unit="step")

    def update(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        """Called after every step with the latest training scalars."""
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            if step % self.log_every == 0:
                self.bar.set_postfix(
                    loss=f"{metrics.get('train/loss', float('nan')):.4f}",
                    thr=f"{metrics.get(self.key, 0):.0f} {self.unit}",
                    refresh=False,
                )
        elif self.mode == "log" and (step % self.log_every == 0 or step == self.total):
            elapsed = time.time() - self._t0
            done = step - self.start
            eta = f" ETA {_duration(elapsed / done * (self.total - step))}" if done > 0 else ""
            shown = "  ".join(
                item for k, v in metrics.items() if isinstance(v, (int, float)) and (item := self._shown(k, v))
            )
            print(f"[step {step}/{self.total} epoch {epoch} {_duration(elapsed)}{eta}] {shown}", flush=True)

    def _shown(self, key: str, value: float) -> str:
        """One ``name value`` item of a log line ('' to leave the metric out)."""
        if key == self.key:
            return f"throughput {value:.4g} {self.unit}"
        if key == "train/tflop_per_device_per_s":
            return f"{'flops/device' if self.world_size > 1 else 'flops'} {flop_rate(value * 1e12)}"
        if key.endswith("_per_device_per_s") and self.world_size == 1:
            return ""
        return f"{key.removeprefix('train/')} {value:.4g}"

    def write(self, line: str) -> None:
        """A message that does not break the bar (eval results, checkpoints)."""
        if self.mode == "off":
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
