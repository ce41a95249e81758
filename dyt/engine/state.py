"""The train state: everything a checkpoint holds, listed in exactly one place.

:class:`TrainState` owns the counters (step, epoch, data position), the evaluation record and the run's
identity (W&B id, resolved config), and references the objects whose state it saves: model, EMA, optimizer
(the stateful parts, :meth:`TrainState.parts`), gradient scaler and the task (its own state, e.g. DINO's
center). One save path and one load path: :meth:`~TrainState.save` hands the plain values and the parts'
state dicts, as one dict, to :func:`dyt.engine.checkpoint.save_checkpoint`; :meth:`~TrainState.load` reads
the plain values, checks the run identity, then reads the parts and restores them. The checkpoint's layout
decides only how the parts' state dicts are gathered and restored: whole (``state_dict`` /
``load_state_dict``) for one file, written by rank 0 (single process, DDP); through ``get_state_dict`` /
``set_state_dict`` for a DCP directory (FSDP2: sharded, resharded to any world size on load).

Checkpoint format 2 (this file): ``format``, the :data:`COUNTERS`, ``scaler``, ``rng``, ``task``, ``config``,
``world_size``, ``global_batch``, plus the parts ``model``, ``ema`` (None without an EMA; absent from a DCP
checkpoint then) and ``optimizer`` (sharded in DCP, with the other values in ``meta.pt``).
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

    def parts(self, dcp: bool = False) -> dict[str, Any]:
        """The state dicts of the stateful parts, under the names of :data:`~dyt.engine.checkpoint.PARTS`
        (``ema`` None without an EMA). For one file they are whole; for a DCP checkpoint (``dcp``) they come
        from ``get_state_dict``: under FSDP2 this rank's DTensor shards, the optimizer's state keyed by
        parameter name, in the form DCP reshards across world sizes."""
        if dcp:
            from torch.distributed.checkpoint.state_dict import get_state_dict

            model, optimizer = get_state_dict(self.model, self.optimizer)
        else:
            model, optimizer = self.model.state_dict(), self.optimizer.state_dict()
        return dict(zip(ckpt.PARTS, (model, self.ema.state_dict() if self.ema else None, optimizer), strict=True))

    def _restore_parts(self, state: dict[str, Any], dcp: bool, path: Path) -> None:
        """Load the parts' state dicts of ``state`` (in the form :meth:`parts` gives them) into the parts."""
        if dcp:
            from torch.distributed.checkpoint.state_dict import set_state_dict

            set_state_dict(
                self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
            )
        else:
            ckpt.load_model_state(self.model, state["model"], str(path))
            self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise ckpt.CheckpointError(f"{path} has no EMA weights but trainer.ema_decay is set")
            self.ema.load_state_dict(state["ema"])

    def save(self, ckpt_dir: Path, keep: int, is_main: bool, background: bool = False) -> ckpt.PendingCheckpoint | None:
        """Write a checkpoint of the current step (call on every rank: one file is written by rank 0, a DCP
        checkpoint by all). ``background`` (sharded only): return while DCP writes the tensors; the caller
        finishes the returned :class:`~dyt.engine.checkpoint.PendingCheckpoint`."""
        state = {**self._meta(), **self.parts(self.sharded)}
        written = ckpt.save_checkpoint(
            state, ckpt_dir, self.step, keep, sharded=self.sharded, is_main=is_main, background=background
        )
        return written if background else None

    def load(self, path: Path, accept: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
        """Restore everything from the checkpoint at ``path`` (a file, or a DCP directory written at any
        world size: DCP reshards model, EMA and optimizer to this run's processes, under FSDP2, DDP or in
        one process), after checking that it was trained with this config
        (:func:`~dyt.engine.identity.check_run_identity`: keys in ``accept`` may differ). Returns the
        accepted differences."""
        dcp = path.is_dir()
        if self.sharded and not dcp:
            raise ckpt.CheckpointError(
                f"{path} is a single-file (DDP / one process) checkpoint, which this run cannot resume with "
                "trainer.distributed=fsdp: resume it with trainer.distributed=ddp (on any number of processes), "
                "or read its weights with dyt.engine.load_checkpoint()"
            )
        ckpt.verify_checkpoint(path, checksums=False)  # sizes only: rank 0 hashed it when it chose it
        state = ckpt.read_checkpoint(path)
        accepted = check_run_identity(state["config"], self.config, str(path.parent.parent), accept)
        self._restore_parts(ckpt.read_parts(path, state, into=self.parts(dcp) if dcp else None), dcp, path)
        self.scaler.load_state_dict(state["scaler"])
        self.task.load_state_dict(state.get("task", {}))  # format 1 had no task state
        ckpt.set_rng_state(state["rng"])
        for k in COUNTERS:
            setattr(self, k, state.get(k, 0) if k == "nonfinite_skips" else state[k])  # not in format 1
        return accepted
