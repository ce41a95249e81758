"""The train state: everything a checkpoint holds, listed in exactly one place.

:class:`TrainState` owns the counters (step, epoch, data position), the evaluation record and the run's
identity (W&B id, resolved config), and references the objects whose state it saves: model, EMA, optimizer,
gradient scaler and the task (its own state, e.g. DINO's center). It writes and reads both checkpoint
kinds of ``dyt.engine.checkpoint``: one file (single process / DDP, written by rank 0) or a DCP directory
(FSDP2: model, EMA and optimizer sharded, everything else in ``meta.pt``).

Checkpoint format 2 (this file): ``format``, the :data:`COUNTERS`, ``scaler``, ``rng``, ``task``, ``config``,
``world_size``, ``global_batch``, plus ``model``, ``ema`` (or None) and ``optimizer`` (sharded in DCP).
Format 1 checkpoints (before task state existed) still load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from dyt.engine import checkpoint as ckpt
from dyt.engine.identity import check_run_identity

FORMAT = 2
# Plain values restored as they were saved. metrics_bytes: length of metrics.jsonl at the checkpoint
# (a resumed run truncates the lines logged after it); wall_time: seconds trained before this session.
# nonfinite_skips: steps skipped so far for a non-finite loss or gradient norm.
COUNTERS = (
    "step",
    "epoch",
    "step_in_epoch",
    "eval_metrics",
    "eval_step",
    "wall_time",
    "wandb_id",
    "metrics_bytes",
    "nonfinite_skips",
)


class TrainState:
    """The state of one run. ``ema`` may be None; ``sharded`` selects DCP checkpoints (FSDP2)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: Any,
        scaler: Any,
        ema: Any,
        task: Any,
        config: dict[str, Any],
        world_size: int,
        global_batch: int,
        sharded: bool,
    ) -> None:
        self.model, self.optimizer, self.scaler, self.ema, self.task = model, optimizer, scaler, ema, task
        self.config, self.world_size, self.global_batch, self.sharded = config, world_size, global_batch, sharded
        self.step = self.epoch = self.step_in_epoch = 0
        self.eval_metrics: dict[str, float] = {}
        self.eval_step = -1
        self.wall_time = 0.0
        self.wandb_id: str | None = None
        self.metrics_bytes = 0
        self.nonfinite_skips = 0

    # ---- what a checkpoint holds ----------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        """Everything but the model, EMA and optimizer tensors."""
        return {
            "format": FORMAT,
            **{k: getattr(self, k) for k in COUNTERS},
            "scaler": self.scaler.state_dict(),
            "rng": ckpt.rng_state(),
            "task": self.task.state_dict(),
            "config": self.config,
            "world_size": self.world_size,
            "global_batch": self.global_batch,
        }

    def _sharded_tensors(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model, optimizer = get_state_dict(self.model, self.optimizer)
        return {"model": model, "optimizer": optimizer, **({"ema": self.ema.state_dict()} if self.ema else {})}

    def save(self, ckpt_dir: Path, keep: int, is_main: bool, background: bool = False) -> ckpt.PendingCheckpoint | None:
        """Write a checkpoint of the current step (call on every rank; only rank 0 writes files
        unless the checkpoint is sharded). ``background`` (sharded only): return while DCP writes the
        tensors; the caller finishes the returned :class:`~dyt.engine.checkpoint.PendingCheckpoint`."""
        meta = self._meta()
        if self.sharded:
            tensors = self._sharded_tensors()
            written = ckpt.save_sharded_checkpoint(tensors, meta, ckpt_dir, self.step, keep, is_main, background)
            return written if background else None
        if is_main:
            tensors = {
                "model": self.model.state_dict(),
                "ema": self.ema.state_dict() if self.ema else None,
                "optimizer": self.optimizer.state_dict(),
            }
            ckpt.save_checkpoint({**meta, **tensors}, ckpt_dir, self.step, keep)
        return None

    def load(self, path: Path, accept: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
        """Restore everything from the checkpoint at ``path`` (a file, or a DCP directory written at any
        world size: DCP reshards model, EMA and optimizer to this run's processes),
        after checking that it was trained with this config (:func:`~dyt.engine.identity.check_run_identity`:
        keys in ``accept`` may differ). Returns the accepted differences."""
        if self.sharded and not path.is_dir():
            raise ckpt.CheckpointError(
                f"{path} is a single-file (DDP / one process) checkpoint, which this run cannot resume with "
                "trainer.distributed=fsdp: resume it with trainer.distributed=ddp (on any number of processes), "
                "or read its weights with dyt.engine.load_checkpoint()"
            )
        if path.is_dir():  # DCP reshards: written by any number of processes, read by FSDP2, DDP or one process
            from torch.distributed.checkpoint.state_dict import set_state_dict

            state = ckpt.safe_load(path / ckpt.META)
            accepted = check_run_identity(state["config"], self.config, str(path.parent.parent), accept)
            tensors = self._sharded_tensors()
            ckpt.load_sharded_into(path, tensors)
            set_state_dict(
                self.model, self.optimizer, model_state_dict=tensors["model"], optim_state_dict=tensors["optimizer"]
            )
        else:
            state = ckpt.load_checkpoint(path, verify=False)  # rank 0 verified it when it chose it
            accepted = check_run_identity(state["config"], self.config, str(path.parent.parent), accept)
            ckpt.load_model_state(self.model, state["model"], str(path))
            if self.ema is not None:
                if state["ema"] is None:
                    raise ckpt.CheckpointError(f"{path} has no EMA weights but trainer.ema_decay is set")
                self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.task.load_state_dict(state.get("task", {}))  # format 1 had no task state
        ckpt.set_rng_state(state["rng"])
        for k in COUNTERS:
            setattr(self, k, state.get(k, 0) if k == "nonfinite_skips" else state[k])  # not in format 1
        return accepted
