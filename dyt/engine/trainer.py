"""The shared trainer: ``Trainer(cfg).fit(task)`` trains any :class:`~dyt.tasks.base.Task`.

One run, in order: set up devices and the process group (torchrun or SLURM env); build the model with
identical initial weights on every rank; wrap it (DDP, or FSDP2 with ``trainer.distributed=fsdp``);
build AdamW, the per-iteration lr schedule, the gradient scaler and the EMA; resume from
``<run_dir>/checkpoints`` when a checkpoint exists; train with gradient accumulation and clipping;
evaluate the raw and the EMA model; checkpoint; write ``results.json``.

Determinism: the data order is a function of ``(seed, epoch)`` (:mod:`dyt.engine.sampler`), every
item is produced with RNGs seeded from ``(seed, epoch, index)``, and every micro-batch's
``training_step`` runs with RNGs seeded from ``(seed, step, micro_batch, rank)``. With the model,
optimizer, EMA and data position restored from a checkpoint, a resumed CPU run therefore ends with
the same bits as an uninterrupted one.

Stopping early: a non-finite loss raises :class:`NonFiniteLossError` before the optimizer step (no
checkpoint of the bad state is written); SIGTERM / SIGUSR1 / SIGUSR2 write a checkpoint at the next
step boundary and hand over to :class:`~dyt.engine.signals.PreemptionHandler` (exit status
:data:`~dyt.engine.signals.PREEMPTED_EXIT_CODE` unless a previous handler, e.g. submitit's, takes over).
"""

from __future__ import annotations

import contextlib
import math
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from dyt.engine import checkpoint as ckpt
from dyt.engine.distributed import (
    DistEnv,
    all_reduce_sum,
    apply_activation_checkpointing,
    barrier,
    broadcast_object,
    reshard,
    setup_distributed,
    teardown_distributed,
    wrap_model,
)
from dyt.engine.ema import ModelEMA
from dyt.engine.logging import MetricsLog, Progress, WandbRun, new_wandb_id
from dyt.engine.precision import autocast, grad_scaler, resolve_precision
from dyt.engine.sampler import SeededDataset, ShardedBatchSampler, seed_all
from dyt.engine.schedule import build_optimizer, build_schedule, scaled_lr, set_lr
from dyt.engine.signals import PreemptionHandler
from dyt.io import atomic_write_json, atomic_write_text

EVAL_STREAM = 1 << 20  # seeds evaluation apart from any training micro-batch


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped before applying that step."""


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def alpha_mean(model: nn.Module) -> float | None:
    """Mean |alpha| over modules with an ``alpha`` parameter (DyT, Derf; paper Fig. 8), or None.
    Collective under FSDP2 (call on every rank)."""
    values = []
    for m in model.modules():
        alpha = getattr(m, "alpha", None)
        if isinstance(alpha, torch.Tensor):
            alpha = alpha.full_tensor() if hasattr(alpha, "full_tensor") else alpha
            values.append(alpha.detach().abs().float().mean())
    return torch.stack(values).mean().item() if values else None


class Trainer:
    """Trains a task as configured by the full composed config (``configs/train.yaml``).

    Reads ``cfg.trainer``, ``cfg.optim``, ``cfg.logger``, ``cfg.seed``, ``cfg.run_dir`` and, for names
    in logs and results, ``cfg.experiment_name``, ``cfg.model.name``, ``cfg.norm.name``.
    """

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.tc = cfg.trainer
        self.run_dir = Path(cfg.run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"

    # ---- public ---------------------------------------------------------------------------------
    def fit(self, task: Any) -> dict[str, Any]:
        """Train (resuming automatically), evaluate, write the run dir; return the contents of
        ``results.json`` (final eval metrics, ``_ema`` keys for the EMA model, and run metadata)."""
        owns_group = not torch.distributed.is_initialized()  # a caller's process group outlives fit()
        env = setup_distributed(self.tc.device)
        preemption = PreemptionHandler()
        try:
            results = self._fit(task, env, preemption)
        except BaseException as e:
            if env.is_distributed:  # the traceback's frames hold the model: free it before gloo goes
                traceback.clear_frames(e.__traceback__)
            raise
        finally:
            preemption.restore()
            self._release()
            if owns_group:
                teardown_distributed()
        if results is None:
            preemption.hand_over()
        return results

    # ---- setup ----------------------------------------------------------------------------------
    def _build(self, task: Any, env: DistEnv) -> None:
        cfg, tc = self.cfg, self.tc
        self.env, self.task = env, task
        self.precision = resolve_precision(tc.precision, env.device, tc.get("tf32", True))
        self.config = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
        seed_all(cfg.seed)  # identical initial weights on every rank
        self.fsdp = tc.distributed == "fsdp" and env.is_distributed
        model = self._new_model(task, env)
        self.model = model  # unwrapped; FSDP2 shards it in place
        if tc.compile:
            model.compile()  # in place: state_dict keys stay free of "_orig_mod."

        self.dataset = SeededDataset(task.train_data(), cfg.seed)
        self.sampler = ShardedBatchSampler(len(self.dataset), tc.batch_size, env.rank, env.world_size, cfg.seed)
        self.accum = int(tc.grad_accum)
        self.steps_per_epoch = self.sampler.batches_per_epoch // self.accum
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"an epoch has {self.sampler.batches_per_epoch} batches per rank, fewer than "
                f"trainer.grad_accum={self.accum}; lower grad_accum or batch_size"
            )
        self.total_steps = int(tc.max_steps) if tc.max_steps else int(tc.epochs) * self.steps_per_epoch
        self.global_batch = tc.batch_size * self.accum * env.world_size
        peak_lr = scaled_lr(cfg.optim, self.global_batch)
        self.optimizer = build_optimizer(cfg.optim, task, model, peak_lr)
        self.schedule = build_schedule(cfg.optim, peak_lr, self.total_steps, self.steps_per_epoch)
        self.scaler = grad_scaler(self.precision, env.device)
        self.ema = ModelEMA(model, tc.ema_decay, tc.get("ema_every", 1)) if tc.ema_decay else None

        self.step = self.epoch = self.step_in_epoch = 0
        self.eval_metrics: dict[str, float] = {}
        self.eval_step = self.ckpt_step = -1
        self.wall_before = 0.0  # wall time of earlier sessions of this run
        self.wandb_id: str | None = None
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", env.is_main)

    def _new_model(self, task: Any, env: DistEnv) -> nn.Module:
        """The task's model on this rank's device, wrapped for DDP / FSDP2 (``self.wrapped``).

        Under FSDP2 a model with ``reset_parameters()`` is built on the meta device, sharded, and only
        then materialised and initialised shard by shard: no rank ever holds the whole model (LLaMA-2
        70B is ~276 GB in fp32). Other models are built whole, then sharded."""
        tc = self.tc
        model = None
        if self.fsdp:
            with torch.device("meta"):
                model = task.build_model()
            if not hasattr(model, "reset_parameters"):
                model = None
        if model is None:
            model = task.build_model().to(env.device)
        if tc.activation_checkpointing:
            apply_activation_checkpointing(model)
        self.wrapped = wrap_model(model, env, tc.distributed)
        if any(p.is_meta for p in model.parameters()):
            model.to_empty(device=env.device)
            with torch.no_grad():
                model.reset_parameters()
        return model

    def _resume(self) -> None:
        """Restore everything from the newest checkpoint, or start afresh when there is none."""
        if self.env.is_main:
            ckpt.remove_partial(self.ckpt_dir)
        barrier()
        path = ckpt.latest_checkpoint(self.ckpt_dir)
        if path is None:
            self.metrics.truncate(0)  # lines of an attempt killed before its first checkpoint
            self.wandb_id = broadcast_object(new_wandb_id() if self.cfg.logger.wandb and self.env.is_main else None)
            return
        if self.fsdp != path.is_dir():
            kind, how = (
                ("a sharded DCP (FSDP2)", "under torchrun with trainer.distributed=fsdp")
                if path.is_dir()
                else ("a single-file (DDP / one process)", "with trainer.distributed=ddp")
            )
            raise ckpt.CheckpointError(
                f"{path} is {kind} checkpoint, which this run cannot resume: resume it {how}, "
                "or read its weights with dyt.engine.load_checkpoint()"
            )
        if self.fsdp:
            state = ckpt.safe_load(path / ckpt.META)
            self._load_sharded(path)
        else:
            state = ckpt.load_checkpoint(path)
            ckpt.load_model_state(self.model, state["model"], str(path))
            if self.ema is not None:
                if state["ema"] is None:
                    raise ckpt.CheckpointError(f"{path} has no EMA weights but trainer.ema_decay is set")
                self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
        self.step, self.epoch, self.step_in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
        self.eval_metrics, self.eval_step = state["eval_metrics"], state["eval_step"]
        self.ckpt_step, self.wall_before, self.wandb_id = self.step, state["wall_time"], state["wandb_id"]
        self.metrics.truncate(state["metrics_bytes"])

    def _sharded_state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        msd, osd = get_state_dict(self.model, self.optimizer)
        return {"model": msd, "optimizer": osd, **({"ema": self.ema.state_dict()} if self.ema else {})}

    def _load_sharded(self, path: Path) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        sharded = self._sharded_state()
        ckpt.load_sharded_into(path, sharded)
        set_state_dict(
            self.model, self.optimizer, model_state_dict=sharded["model"], optim_state_dict=sharded["optimizer"]
        )

    # ---- the run --------------------------------------------------------------------------------
    def _fit(self, task: Any, env: DistEnv, preemption: PreemptionHandler) -> dict[str, Any] | None:
        """The whole run; None when a preemption signal stopped it after a checkpoint."""
        self._build(task, env)
        self._resume()
        self.t_start = time.time()
        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.yaml", OmegaConf.to_yaml(self.config))
        self.wandb = WandbRun(self.cfg, self.config, self.wandb_id, env.is_main and bool(self.cfg.logger.wandb))
        self.progress = Progress(self.tc.progress, self.total_steps, self.step, self.tc.log_every_steps, env.is_main)
        self.last_ckpt_time = time.time()
        while self.step < self.total_steps:
            self.dataset.set_epoch(self.epoch)
            self.sampler.set_epoch(self.epoch, self.step_in_epoch * self.accum)
            batches = iter(
                DataLoader(
                    self.dataset,
                    batch_sampler=self.sampler,
                    num_workers=self.tc.num_workers,
                    collate_fn=task.collate_fn(),
                    pin_memory=env.device.type == "cuda",
                )
            )
            while self.step_in_epoch < self.steps_per_epoch and self.step < self.total_steps:
                stop = self._train_step(batches, preemption)
                epoch_done = self.step_in_epoch == self.steps_per_epoch
                if epoch_done:
                    self.epoch, self.step_in_epoch = self.epoch + 1, 0
                if self._eval_due(epoch_done):
                    self._evaluate()
                if stop or epoch_done or self._ckpt_due():
                    self._save()
                if stop:
                    self.progress.write(f"signal {preemption.signum}: checkpoint written at step {self.step}")
                    return None
                if epoch_done:
                    break
        if self.eval_step != self.step:
            self._evaluate()
        if self.ckpt_step != self.step:
            self._save()
        results = self._results()
        if env.is_main:
            atomic_write_json(self.run_dir / "results.json", results)
        barrier()
        return results

    def _grad_sync(self, enabled: bool) -> contextlib.AbstractContextManager[Any]:
        """Skip the gradient all-reduce on non-final micro-batches (DDP ``no_sync`` / FSDP2's switch)."""
        if enabled or not self.env.is_distributed:
            return contextlib.nullcontext()
        if self.fsdp:
            return _fsdp_no_sync(self.model)
        return self.wrapped.no_sync()

    def _train_step(self, batches: Iterator[Any], preemption: PreemptionHandler) -> bool:
        """One optimizer step over ``grad_accum`` micro-batches; returns whether to stop (signal)."""
        env, tc = self.env, self.tc
        t0 = time.time()
        lr = self.schedule(self.step)
        set_lr(self.optimizer, lr)
        loss_sum = torch.zeros((), device=env.device)
        task_logs: dict[str, float] = {}
        for micro in range(self.accum):
            batch = to_device(next(batches), env.device)
            seed_all(self.cfg.seed, self.step, micro, env.rank)
            with self._grad_sync(micro == self.accum - 1):
                with autocast(self.precision, env.device):
                    loss, logs = self.task.training_step(self.wrapped, batch)
                self.scaler.scale(loss / self.accum).backward()
            loss_sum += loss.detach().float()
            for k, v in logs.items():
                task_logs[k] = task_logs.get(k, 0.0) + float(v) / self.accum
        minutes = tc.ckpt_every_minutes
        time_due = minutes is not None and env.is_main and time.time() - self.last_ckpt_time >= 60 * minutes
        # One all-reduce per step: mean loss (NaN on any rank reaches all), signal and timer flags.
        flags = all_reduce_sum(
            torch.stack(
                [
                    loss_sum / self.accum,
                    torch.tensor(float(preemption.requested), device=env.device),
                    torch.tensor(float(time_due), device=env.device),
                ]
            )
        )
        loss_mean, stop, self.time_due = (flags / env.world_size)[0].item(), flags[1].item() > 0, flags[2].item() > 0
        if not math.isfinite(loss_mean):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss_mean}) at step {self.step + 1} (epoch {self.epoch}); stopped "
                f"before applying it. The last good checkpoint is "
                f"{ckpt.latest_checkpoint(self.ckpt_dir) or 'none'}; lower optim.lr, set trainer.clip_grad, "
                "or check the data"
            )
        self.scaler.unscale_(self.optimizer)
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), tc.clip_grad or math.inf)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.step_in_epoch += 1
        if self.ema is not None:
            self.ema.update(self.step)
        self.task.on_step_end(self.model, self.step)

        row = {"train/loss": loss_mean, "train/lr": lr}
        if self.step % tc.log_every_steps == 0 or self.step == self.total_steps:
            grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
            row.update(
                {
                    "train/grad_norm": grad_norm.item(),
                    "train/throughput": self.global_batch / max(time.time() - t0, 1e-9),
                    **{f"train/{k}": v for k, v in task_logs.items()},
                }
            )
            alpha = alpha_mean(self.model)
            if alpha is not None:
                row["dyt/alpha_mean"] = alpha
            self._log(row)
        self.progress.update(self.step, self.epoch, row)
        return stop

    def _eval_due(self, epoch_done: bool) -> bool:
        every_steps, every_epochs = self.tc.eval_every_steps, self.tc.eval_every_epochs
        return bool(
            (every_steps and self.step % every_steps == 0)
            or (epoch_done and every_epochs and self.epoch % every_epochs == 0)
        )

    def _ckpt_due(self) -> bool:
        every = self.tc.ckpt_every_steps
        return bool(self.time_due or (every and self.step % every == 0))

    def _evaluate(self) -> None:
        """``task.evaluate`` on the raw model and, with keys suffixed ``_ema``, on the EMA weights."""
        env = self.env
        self.model.eval()
        seed_all(self.cfg.seed, self.step, EVAL_STREAM, env.rank)
        with torch.no_grad(), autocast(self.precision, env.device):
            metrics = dict(self.task.evaluate(self.model, env.device))
            reshard(self.model)
            if self.ema is not None:
                with self.ema.swapped_in():
                    metrics.update({f"{k}_ema": v for k, v in self.task.evaluate(self.model, env.device).items()})
                    reshard(self.model)
        self.model.train()
        self.eval_metrics = {k: float(v) for k, v in metrics.items()}
        self.eval_step = self.step
        self._log(self.eval_metrics)
        self.progress.write(f"eval @ step {self.step}: " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

    def _log(self, row: dict[str, Any]) -> None:
        self.metrics.log(self.step, self.epoch, row)
        self.wandb.log(self.step, row)

    def _save(self) -> None:
        meta = {
            "format": 1,
            "step": self.step,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": ckpt.rng_state(),
            "wandb_id": self.wandb_id,
            "metrics_bytes": self.metrics.tell(),
            "eval_metrics": self.eval_metrics,
            "eval_step": self.eval_step,
            "wall_time": self._wall_time(),
            "world_size": self.env.world_size,
            "config": self.config,
        }
        keep = self.tc.keep_checkpoints
        if self.fsdp:
            ckpt.save_sharded_checkpoint(self._sharded_state(), meta, self.ckpt_dir, self.step, keep, self.env.is_main)
        else:
            if self.env.is_main:
                ckpt.save_checkpoint(
                    {
                        **meta,
                        "model": self.model.state_dict(),
                        "ema": self.ema.state_dict() if self.ema else None,
                        "optimizer": self.optimizer.state_dict(),
                    },
                    self.ckpt_dir,
                    self.step,
                    keep,
                )
            barrier()
        self.ckpt_step, self.last_ckpt_time = self.step, time.time()

    def _wall_time(self) -> float:
        return self.wall_before + time.time() - self.t_start

    def _results(self) -> dict[str, Any]:
        cfg = self.cfg
        return {
            **self.eval_metrics,
            "experiment": cfg.experiment_name,
            "model": cfg.model.get("name"),
            "norm": cfg.norm.get("tag") or cfg.norm.get("name"),
            "seed": cfg.seed,
            "steps": self.step,
            "epochs": round(self.step / self.steps_per_epoch, 4),
            "world_size": self.env.world_size,
            "global_batch": self.global_batch,
            "wall_time_s": round(self._wall_time(), 2),
        }

    def _release(self) -> None:
        """Close outputs and drop the model, optimizer and data before the process group goes."""
        for name in ("progress", "metrics"):
            if hasattr(self, name):
                getattr(self, name).close()
        if hasattr(self, "wandb"):
            self.wandb.finish()
        for name in ("wrapped", "model", "optimizer", "ema", "dataset", "sampler", "task"):
            self.__dict__.pop(name, None)


@contextlib.contextmanager
def _fsdp_no_sync(model: nn.Module) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)
