"""The shared trainer: ``Trainer(cfg).fit(task)`` trains any :class:`~dyt.engine.task.Task`.

One run, in order: set up devices and the process group (torchrun or SLURM env); split the recipe's
global batch into per-device micro-batches and gradient accumulation (:func:`~dyt.engine.sampler.plan_batch`);
build the model with identical initial weights on every rank; wrap it (DDP, or FSDP2 with
``trainer.distributed=fsdp``); build AdamW or SGD, the schedules (lr, optimizer hyperparameters, task scalars),
the gradient scaler and the EMA; resume from ``<run_dir>/checkpoints`` when a checkpoint exists
(:class:`~dyt.engine.state.TrainState` holds everything a checkpoint holds); train; evaluate the raw and
the EMA model; checkpoint; write ``results.json``. The order of one optimizer step and its task hooks is
in ``dyt/engine/task.py``.

Determinism: the data order is a function of ``(seed, epoch)`` (:mod:`dyt.engine.sampler`), every
item is produced with RNGs seeded from ``(seed, epoch, index)``, and every micro-batch's
``training_step`` runs with RNGs seeded from ``(seed, step, micro_batch, rank)``; every schedule is a
function of the step. With the train state restored from a checkpoint, a resumed CPU run therefore
ends with the same bits as an uninterrupted one.

Non-finite steps: a non-finite loss or gradient norm is caught before the optimizer step. The step is
skipped (no update, logged as ``train/skipped``) while fewer than ``trainer.nonfinite_skips`` steps of
the run were skipped; then :class:`NonFiniteLossError` stops the run naming the last finite checkpoint
(a non-finite state is never checkpointed); SIGTERM / SIGUSR1 / SIGUSR2 write a checkpoint at the next
step boundary and hand over to :class:`~dyt.engine.signals.PreemptionHandler` (exit status
:data:`~dyt.engine.signals.PREEMPTED_EXIT_CODE` unless a previous handler, e.g. submitit's, takes over).
"""

from __future__ import annotations

import contextlib
import math
import sys
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
from dyt.engine import weights
from dyt.engine.distributed import (
    DistEnv,
    all_reduce_sum,
    apply_activation_checkpointing,
    barrier,
    broadcast_object,
    reshard,
    setup_distributed,
    shard_group_size,
    teardown_distributed,
    wrap_model,
)
from dyt.engine.ema import ModelEMA
from dyt.engine.evaluation import evaluate_model, to_device
from dyt.engine.flops import peak_flops, throughput_metrics
from dyt.engine.logging import MetricsLog, Progress, WandbRun, new_wandb_id
from dyt.engine.precision import autocast, grad_scaler, resolve_precision
from dyt.engine.runlock import RunLockedError, acquire_run_lock
from dyt.engine.sampler import SeededDataset, ShardedBatchSampler, plan_batch, seed_all
from dyt.engine.schedule import build_hyper_schedules, build_lr_schedule, build_optimizer, scaled_lr, set_hyper
from dyt.engine.signals import PreemptionHandler, ignore_preemption_signals
from dyt.engine.state import TrainState
from dyt.engine.task import StepInfo
from dyt.io import atomic_write_json, atomic_write_text
from dyt.nn import norm_tag
from dyt.nn.calibrate import calibrate_alpha, calibration_targets
from dyt.nn.probes import ScaleProbe, alpha_stats, pointwise_norms, scale_message

EVAL_STREAM = 1 << 20  # seeds evaluation apart from any training micro-batch


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; training stopped before applying that step."""


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
            self._lock(env)
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
    def _lock(self, env: DistEnv) -> None:
        """One process trains in a run dir at a time: rank 0 holds ``run.lock`` until the run ends."""
        self.run_lock, error = None, None
        if env.is_main:
            try:
                self.run_lock = acquire_run_lock(self.run_dir)
            except RunLockedError as e:
                error = str(e)
        error = broadcast_object(error)
        if error:
            raise RunLockedError(error)

    def _build(self, task: Any, env: DistEnv) -> None:
        cfg, tc = self.cfg, self.tc
        self.env, self.task = env, task
        self.precision = resolve_precision(tc.precision, env.device, tc.get("tf32", True))
        config = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
        self.plan = plan_batch(tc.global_batch, tc.get("micro_batch"), env.world_size)
        self.accum = self.plan.grad_accum
        # Rank 0 finds (and verifies) the checkpoint to resume from; every rank uses its answer.
        if env.is_main:
            ckpt.remove_partial(self.ckpt_dir)
        self.resume_from = broadcast_object(ckpt.latest_checkpoint(self.ckpt_dir) if env.is_main else None)
        seed_all(cfg.seed)  # identical initial weights on every rank
        self.fsdp = tc.distributed == "fsdp" and env.is_distributed
        self.shard_size = shard_group_size(tc.distributed, tc.sharding, tc.get("shard_group_size"), env.world_size)
        model = self._new_model(task, env)
        self.model = model  # unwrapped; FSDP2 shards it in place
        # Walked once, not every step (~0.3 ms for a small ViT); FSDP2 re-registers its parameters
        # (sharded / unsharded), so there the model is asked every time.
        self.params = None if self.fsdp else list(model.parameters())
        if tc.compile:
            model.compile()  # in place: state_dict keys stay free of "_orig_mod."

        data = task.train_data()
        self.dataset = SeededDataset(data, cfg.seed)
        args = (self.plan.micro_batch, env.rank, env.world_size, cfg.seed)
        self.sampler = task.batch_sampler(data, *args) or ShardedBatchSampler(len(data), *args)
        self.steps_per_epoch = self.sampler.batches_per_epoch // self.accum
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"an epoch has {self.sampler.batches_per_epoch} micro-batches per process, fewer than the "
                f"{self.accum} one optimizer step needs (global batch {self.plan.global_batch}); lower "
                "trainer.global_batch or use a larger training set"
            )
        self.total_steps = int(tc.max_steps) if tc.max_steps else int(tc.epochs) * self.steps_per_epoch
        peak_lr = scaled_lr(cfg.optim, self.plan.global_batch)
        optimizer = build_optimizer(cfg.optim, task, model, peak_lr)
        self.lr_schedule = build_lr_schedule(cfg.optim, peak_lr, self.total_steps, self.steps_per_epoch)
        self.hyper_schedules = build_hyper_schedules(cfg.optim, self.total_steps, self.steps_per_epoch)
        self.task_schedules = task.schedules(self.total_steps, self.steps_per_epoch)
        scaler = grad_scaler(self.precision, env.device)
        ema = ModelEMA(model, tc.ema_decay, tc.get("ema_every", 1)) if tc.ema_decay else None
        self.state = TrainState(
            model, optimizer, scaler, ema, task, config, env.world_size, self.plan.global_batch, sharded=self.fsdp
        )
        self.flops_per_sample = task.flops_per_sample(model)
        self.peak_flops = peak_flops(env.device, tc.get("peak_flops"))
        self.ckpt_step, self.pending = -1, None
        self.async_ckpt = bool(tc.get("async_checkpoint")) and self.fsdp
        if tc.get("async_checkpoint") and tc.distributed != "fsdp":
            raise ValueError(
                "trainer.async_checkpoint=true needs trainer.distributed=fsdp (sharded DCP checkpoints); DDP and "
                "single-process checkpoints are one file written by rank 0: set trainer.async_checkpoint=false"
            )
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", env.is_main)
        # Input scale of the point-wise norms (paper Fig. 8's 1/std, alpha x std, saturation): every
        # trainer.probe_every_steps steps (null: at the logging cadence; 0: never).
        every = tc.get("probe_every_steps")
        self.probe_every = tc.log_every_steps if every is None else int(every)
        self.probe = ScaleProbe(model) if self.probe_every and pointwise_norms(model) else None

    def _new_model(self, task: Any, env: DistEnv) -> nn.Module:
        """The task's model on this rank's device, wrapped for DDP / FSDP2 (``self.wrapped``), started
        from ``init_from`` weights on a fresh run.

        Under FSDP2 a model with ``reset_parameters()`` (the model protocol) is built on the meta device,
        sharded, and only then materialised and initialised shard by shard: no rank ever holds the whole
        model (LLaMA-2 70B is ~276 GB in fp32). Other models, and models started from ``init_from``
        weights, are built whole, then sharded."""
        tc = self.tc
        init = weights.parse_init_from(self.cfg.get("init_from"))
        if init is not None and self.resume_from is not None:
            init = None  # resuming: the checkpoint holds the weights
        self.init_from = init
        model = None
        if self.fsdp and init is None:
            with torch.device("meta"):
                model = task.build_model()
            if not hasattr(model, "reset_parameters"):
                model = None
        if model is None:
            model = task.build_model()
            if init is not None:
                report = weights.load_init_weights(model, init)  # every rank reads the same weights
                if env.is_main:
                    weights.record_init(report, self.run_dir)
                    print(report, flush=True)
            model.to(env.device)
        if tc.activation_checkpointing is not False:
            apply_activation_checkpointing(model, tc.activation_checkpointing, tc.get("ac_every_n", 1))
        self.wrapped = wrap_model(model, env, tc.distributed, self.shard_size)
        if any(p.is_meta for p in model.parameters()):
            model.to_empty(device=env.device)
            with torch.no_grad():
                model.reset_parameters()
        return model

    def _resume(self) -> None:
        """Restore the train state from the newest checkpoint, or start afresh when there is none."""
        path = self.resume_from
        if path is None:
            self.metrics.truncate(0)  # lines of an attempt killed before its first checkpoint
            wandb_id = new_wandb_id() if self.cfg.logger.wandb and self.env.is_main else None
            self.state.wandb_id = broadcast_object(wandb_id)
            return
        accepted = self.state.load(path, accept=self.tc.get("accept_changes") or ())
        if accepted and self.env.is_main:
            changes = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in accepted.items())
            print(f"{self.run_dir}: continuing with changed settings (trainer.accept_changes): {changes}", flush=True)
        self.ckpt_step = self.state.step
        self.metrics.truncate(self.state.metrics_bytes)

    # ---- the run --------------------------------------------------------------------------------
    def _fit(self, task: Any, env: DistEnv, preemption: PreemptionHandler) -> dict[str, Any] | None:
        """The whole run; None when a preemption signal stopped it after a checkpoint."""
        self._build(task, env)
        self._resume()
        st = self.state
        self.wall_before, self.t_start = st.wall_time, time.time()
        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.yaml", OmegaConf.to_yaml(st.config))
        self.wandb = WandbRun(self.cfg, st.config, st.wandb_id, env.is_main and bool(self.cfg.logger.wandb))
        self.progress = Progress(
            self.tc.progress,
            self.total_steps,
            st.step,
            self.tc.log_every_steps,
            env.is_main,
            throughput_unit=task.throughput_unit,
            world_size=env.world_size,
        )
        self.last_ckpt_time = time.time()
        if self.resume_from is None:
            self._startup_scale()
        while st.step < self.total_steps:
            self.dataset.set_epoch(st.epoch)
            self.sampler.set_epoch(st.epoch, st.step_in_epoch * self.accum)
            loader = DataLoader(
                self.dataset,
                batch_sampler=self.sampler,
                num_workers=self.tc.num_workers,
                collate_fn=task.collate_fn(),
                pin_memory=env.device.type == "cuda",
                worker_init_fn=ignore_preemption_signals,
            )
            batches = iter(loader)
            while st.step_in_epoch < self.steps_per_epoch and st.step < self.total_steps:
                stop = self._train_step(batches, preemption)
                epoch_done = st.step_in_epoch == self.steps_per_epoch
                if epoch_done:
                    st.epoch, st.step_in_epoch = st.epoch + 1, 0
                if self._eval_due(epoch_done):
                    self._evaluate()
                if stop or epoch_done or self._ckpt_due():
                    self._save()
                self._publish_pending(wait=stop)
                if stop:
                    self.progress.write(f"signal {preemption.signum}: checkpoint written at step {st.step}")
                    return None
                if epoch_done:
                    break
        if st.eval_step != st.step:
            self._evaluate()
        if self.ckpt_step != st.step:
            self._save()
        self._publish_pending(wait=True)
        results = self._results()
        if env.is_main:
            atomic_write_json(self.run_dir / "results.json", results)
        barrier()
        return results

    def _startup_scale(self) -> None:
        """On a fresh start: calibrate the alphas (``norm.alpha_init=calibrate``; not with ``init_from``,
        whose weights hold them), print the input scale of every point-wise norm on the first training
        micro-batch with a warning when it is far from order 1, and write ``resolved.json``: what the
        recipe resolved to, the calibrated alphas and the probes at init (``scale_at_init``)."""
        env, model = self.env, self.model
        resolved = model.resolved_options() if callable(getattr(model, "resolved_options", None)) else {}
        targets = calibration_targets(model)
        calibrate = bool(targets) and self.init_from is None
        if targets and not calibrate:
            self.progress.write("norm.alpha_init=calibrate: skipped, the alphas come with the init_from weights")
        if calibrate and self.fsdp:
            raise ValueError(
                "norm.alpha_init=calibrate does not support trainer.distributed=fsdp yet (a sharded alpha cannot be "
                "set inside the forward pass); use trainer.distributed=ddp, or give alpha_init numbers per site"
            )
        if pointwise_norms(model):
            self.dataset.set_epoch(0)
            self.sampler.set_epoch(0, 0)
            loader = DataLoader(self.dataset, batch_sampler=self.sampler, collate_fn=self.task.collate_fn())
            batch = to_device(next(iter(loader)), env.device)
            probe = ScaleProbe(model)
            scalars = {k: float(f(0)) for k, f in self.task_schedules.items()}
            seed_all(self.cfg.seed, 0, EVAL_STREAM + 1, env.rank)

            def forward() -> None:
                with torch.no_grad(), autocast(self.precision, env.device), probe.recording():
                    self.task.probe_forward(model, batch, self._info(scalars=scalars))

            if calibrate:
                resolved["calibrated_alpha"] = calibrate_alpha(model, forward)
                self.task.after_calibration(model)
                if self.state.ema is not None:
                    self.state.ema.reset()
            else:
                forward()
            row = probe.collect()
            sensitive = getattr(model, "norm_scale_sensitive", True)
            line, warning = scale_message(row, calibrate, sensitive, pretrained=self.init_from is not None)
            self.progress.write(line)
            if warning and env.is_main:
                print(f"warning: {warning}", file=sys.stderr, flush=True)
            resolved["scale_at_init"] = {**row, **alpha_stats(model)}  # step 0 of the probes' curves
        if env.is_main and resolved:
            atomic_write_json(self.run_dir / "resolved.json", resolved)

    def _grad_sync(self, enabled: bool) -> contextlib.AbstractContextManager[Any]:
        """Skip the gradient all-reduce on non-final micro-batches (DDP ``no_sync`` / FSDP2's switch)."""
        if enabled or not self.env.is_distributed:
            return contextlib.nullcontext()
        if self.fsdp:
            return _fsdp_no_sync(self.model)
        return self.wrapped.no_sync()

    def _info(self, micro: int = 0, scalars: dict[str, float] | None = None) -> StepInfo:
        st = self.state
        return StepInfo(st.step, st.epoch, self.total_steps, self.steps_per_epoch, micro, scalars or {})

    def _forward_backward(self, batches: Iterator[Any], scalars: dict[str, float]) -> tuple[torch.Tensor, dict]:
        """``grad_accum`` micro-batches of forward and backward; the summed loss and each task log's values
        (read on the host by :meth:`_task_means` at log steps only: no device sync on other steps)."""
        env, st = self.env, self.state
        loss_sum = torch.zeros((), device=env.device)
        task_logs: dict[str, list[Any]] = {}
        for micro in range(self.accum):
            batch = to_device(next(batches), env.device)
            seed_all(self.cfg.seed, st.step, micro, env.rank, cuda=env.device.type == "cuda")
            with self._grad_sync(micro == self.accum - 1):
                with autocast(self.precision, env.device):
                    loss, logs = self.task.training_step(self.wrapped, batch, self._info(micro, scalars))
                st.scaler.scale(loss / self.accum).backward()
            loss_sum += loss.detach().float()
            for k, v in logs.items():
                task_logs.setdefault(k, []).append(v.detach() if isinstance(v, torch.Tensor) else v)
        return loss_sum, task_logs

    def _task_means(self, task_logs: dict[str, list[Any]]) -> dict[str, float]:
        """The mean of each task log over the step's ``grad_accum`` micro-batches (host floats)."""
        return {k: sum(float(v) / self.accum for v in values) for k, values in task_logs.items()}

    def _train_step(self, batches: Iterator[Any], preemption: PreemptionHandler) -> bool:
        """One optimizer step over ``grad_accum`` micro-batches; returns whether to stop (signal)."""
        env, tc, st = self.env, self.tc, self.state
        t0 = time.time()
        lr = self.lr_schedule(st.step)
        set_hyper(st.optimizer, "lr", lr)
        sched = {}
        for key, fn in self.hyper_schedules.items():
            sched[f"sched/{key}"] = fn(st.step)
            set_hyper(st.optimizer, key, sched[f"sched/{key}"])
        scalars = {k: float(f(st.step)) for k, f in self.task_schedules.items()}
        sched.update({f"sched/{k}": v for k, v in scalars.items()})

        probing = self.probe is not None and (st.step + 1) % self.probe_every == 0
        with self.probe.recording(probing) if self.probe is not None else contextlib.nullcontext():
            loss_sum, task_logs = self._forward_backward(batches, scalars)
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
        st.scaler.unscale_(st.optimizer)
        # The norm the non-finite guard and the log read; clipping computes it anyway, and without
        # clipping only the norm is taken (clip_grad_norm_ to inf would also rescale every gradient by 1).
        params = self.params or list(self.model.parameters())
        if tc.clip_grad:
            grad_norm = nn.utils.clip_grad_norm_(params, tc.clip_grad)
        else:
            grad_norm = nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        # One host read per step, not two (float64 holds the fp32 values and any norm's dtype exactly).
        # Gradients are synchronised: every rank sees the same norm.
        norm = grad_norm.detach().to(flags.device, torch.float64).reshape(1)
        host = torch.cat([(flags / env.world_size).double(), norm]).tolist()
        loss_mean, stop, time_due, grad_norm = host
        stop, self.time_due = stop > 0, time_due > 0
        bad = self._nonfinite(loss_mean, grad_norm)
        info = self._info(scalars=scalars)
        if bad:
            st.nonfinite_skips += 1
            self.progress.write(
                f"step {st.step + 1}: {bad}; step skipped ({st.nonfinite_skips} of "
                f"trainer.nonfinite_skips={tc.nonfinite_skips})"
            )
        else:
            self.task.before_optimizer_step(self.model, info)
            st.scaler.step(st.optimizer)
            st.scaler.update()
        st.optimizer.zero_grad(set_to_none=True)
        st.step += 1
        st.step_in_epoch += 1
        if not bad:
            if st.ema is not None:
                st.ema.update(st.step)
            self.task.after_optimizer_step(self.model, info)

        row = {"train/loss": loss_mean, "train/lr": lr, **({"train/skipped": 1} if bad else {})}
        probed = self.probe.collect() if probing else {}
        if st.step % tc.log_every_steps == 0 or st.step == self.total_steps or bad:
            task, unit = self.task, self.task.throughput_unit
            samples_per_s = self.plan.global_batch / max(time.time() - t0, 1e-9)
            rates = throughput_metrics(
                samples_per_s, task.units_per_sample, unit, env.world_size, self.flops_per_sample, self.peak_flops
            )
            logs = {f"train/{k}": v for k, v in self._task_means(task_logs).items()}
            rate = {f"train/{unit}_per_s": samples_per_s * task.units_per_sample, **rates}
            row.update({"train/grad_norm": grad_norm, **rate, **sched, **logs, **probed})
            row.update(alpha_stats(self.model))  # collective under FSDP2: every rank calls it
            self._log(row)
        elif probed:
            self._log({**probed, **alpha_stats(self.model)})
        per_layer = ("alpha/", *(f"{key}/" for key in ScaleProbe.KEYS))
        shown = {k: v for k, v in row.items() if k == "alpha/mean" or not k.startswith(per_layer)}
        self.progress.update(st.step, st.epoch, shown)
        return stop

    def _nonfinite(self, loss: float, grad_norm: float) -> str | None:
        """What is non-finite in this step (None when all is well), or raise when no skip is left.
        Under fp16 the gradient scaler skips steps with overflowing gradients itself."""
        if math.isfinite(loss) and (math.isfinite(grad_norm) or self.precision == "fp16"):
            return None
        if not math.isfinite(loss):
            what = f"non-finite training loss ({loss})"
        else:
            what = f"non-finite gradient norm ({grad_norm}; loss {loss:.4g})"
        st = self.state
        if st.nonfinite_skips < int(self.tc.nonfinite_skips):
            return what
        if self.env.is_main:  # a diverged run is a result too (paper Table 7: "58.5% -> failed")
            atomic_write_json(self.run_dir / "results.json", {**self._results(), "diverged_at_step": st.step + 1})
        raise NonFiniteLossError(
            f"{what} at step {st.step + 1} (epoch {st.epoch}); stopped before applying it. The last finite "
            f"checkpoint is {ckpt.latest_finite_checkpoint(self.ckpt_dir) or 'none'}; lower optim.lr, set "
            "trainer.clip_grad, check the data, or let trainer.nonfinite_skips=N skip such steps"
        )

    def _eval_due(self, epoch_done: bool) -> bool:
        every_steps, every_epochs, st = self.tc.eval_every_steps, self.tc.eval_every_epochs, self.state
        return bool(
            (every_steps and st.step % every_steps == 0)
            or (epoch_done and every_epochs and st.epoch % every_epochs == 0)
        )

    def _ckpt_due(self) -> bool:
        every = self.tc.ckpt_every_steps
        return bool(self.time_due or (every and self.state.step % every == 0))

    def _evaluate(self) -> None:
        """``task.evaluate`` on the raw model and, with keys suffixed ``_ema``, on the EMA weights."""
        env, st = self.env, self.state
        seed_all(self.cfg.seed, st.step, EVAL_STREAM, env.rank)
        with autocast(self.precision, env.device):
            ema = st.ema.swapped_in if st.ema else None
            metrics = evaluate_model(self.task.evaluate, self.model, env.device, ema, after_forward=reshard)
        st.eval_metrics, st.eval_step = metrics, st.step
        self._log(metrics)
        self.progress.write(f"eval @ step {st.step}: " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

    def _log(self, row: dict[str, Any]) -> None:
        self.metrics.log(self.state.step, self.state.epoch, row)
        self.wandb.log(self.state.step, row)

    def _save(self) -> None:
        """Checkpoint this step; with ``trainer.async_checkpoint`` (sharded checkpoints) the tensors are
        written in the background and the checkpoint is published by :meth:`_publish_pending`."""
        st = self.state
        self._publish_pending(wait=True)  # one background write at a time
        st.wall_time, st.metrics_bytes = self._wall_time(), self.metrics.tell()
        self.pending = st.save(self.ckpt_dir, self.tc.keep_checkpoints, self.env.is_main, self.async_ckpt)
        if self.pending is None:
            barrier()
        self.ckpt_step, self.last_ckpt_time = st.step, time.time()

    def _publish_pending(self, wait: bool) -> None:
        """Publish the checkpoint being written in the background once its write has ended (``wait``:
        wait for it). Until then ``last`` names the previous checkpoint."""
        if self.pending is not None and (wait or self.pending.done()):
            self.pending, pending = None, self.pending
            pending.finish()

    def _wall_time(self) -> float:
        return self.wall_before + time.time() - self.t_start

    def _results(self) -> dict[str, Any]:
        cfg, st = self.cfg, self.state
        return {
            **st.eval_metrics,
            "experiment": cfg.experiment_name,
            "model": cfg.model.get("name"),
            "norm": norm_tag(cfg.norm),
            "seed": cfg.seed,
            "steps": st.step,
            "epochs": round(st.step / self.steps_per_epoch, 4),
            "world_size": self.env.world_size,
            "global_batch": self.plan.global_batch,
            "grad_accum": self.accum,
            "headline_metric": self.task.headline_metric,
            "headline_mode": self.task.headline_mode,
            "wall_time_s": round(self._wall_time(), 2),
        }

    def _release(self) -> None:
        """Close outputs and drop the model, optimizer and data before the process group goes."""
        for name in ("progress", "metrics"):
            if hasattr(self, name):
                getattr(self, name).close()
        if hasattr(self, "wandb"):
            self.wandb.finish()
        if getattr(self, "run_lock", None) is not None:
            self.run_lock.release()
        for name in ("wrapped", "model", "params", "state", "dataset", "sampler", "task"):
            self.__dict__.pop(name, None)


@contextlib.contextmanager
def _fsdp_no_sync(model: nn.Module) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)
