"""The CLI package: what the entry points (train.py, eval.py) do once Hydra has composed the config,
with start-up validation (``dyt.engine.validate``) and run-dir naming (:mod:`dyt.cli.naming`). Importing it
registers the config resolvers ``configs/train.yaml`` uses."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dyt.cli.naming import command_line, experiment_name_resolver, is_direct_command, run_dir_resolver
from dyt.tasks import build_task, load_run

# configs/train.yaml names the run dir with it (the config is composed after this module is imported).
OmegaConf.register_new_resolver("dyt_run_dir", run_dir_resolver, replace=True)
OmegaConf.register_new_resolver("dyt_experiment_name", experiment_name_resolver, replace=True)


DEBUG_ENV = "DYT_DEBUG"  # set to 1 for full tracebacks instead of one-line errors


def one_line_errors(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; a known failure (bad config, data or checkpoint, a non-finite run...) prints one line,
    ``error: <what was wrong and how to fix it>``, on rank 0 and exits with status 2. Set ``DYT_DEBUG=1``
    for the traceback."""
    from dyt.engine import CheckpointError, NonFiniteLossError
    from dyt.engine.identity import RunIdentityError
    from dyt.engine.logging import LoggerError
    from dyt.engine.runlock import RunLockedError
    from dyt.engine.weights import InitFromError

    known = (
        CheckpointError,
        NonFiniteLossError,
        InitFromError,
        RunIdentityError,
        RunLockedError,
        LoggerError,
        FileNotFoundError,
        ValueError,
        OSError,
    )
    from dyt.preflight import exit_with_error

    try:
        return fn()
    except known as e:
        if os.environ.get(DEBUG_ENV):
            raise
        exit_with_error(f"error: {e}\n(set {DEBUG_ENV}=1 to see the traceback)")


def train(cfg: DictConfig) -> float | None:
    """Train (or resume) the configured run; print and return its final metrics' headline number."""
    from dyt.preflight import leave_nothing_on_failure

    with leave_nothing_on_failure(cfg.get("run_dir")):
        return one_line_errors(lambda: _train(cfg))


def _train(cfg: DictConfig) -> float | None:
    from dyt.engine import Trainer
    from dyt.engine.validate import validate_config

    validate_config(cfg)
    if is_direct_command(command_line()) and os.environ.get("RANK", "0") == "0":
        t = cfg.trainer
        print(
            f"note: without experiment=, {cfg.model.name} on {cfg.data.name} trains with the default experiment's "
            f"settings ({t.epochs} epochs, global batch {t.global_batch}, lr {cfg.optim.lr}); for a paper recipe "
            "use experiment=paper/<row> (configs/experiment/paper/)",
            flush=True,
        )
    trainer = Trainer(cfg)
    metrics = trainer.fit(build_task(cfg))
    if metrics and trainer.env.is_main:
        print(f"final metrics ({cfg.run_dir}): {json.dumps(metrics, sort_keys=True)}", flush=True)
    return _headline(metrics)


def _headline(metrics: dict[str, Any] | None) -> float | None:
    """The number a Hydra sweeper would optimise: the task's headline metric, when the run has it."""
    key = (metrics or {}).get("headline_metric")
    return float(metrics[key]) if key in (metrics or {}) else None


def evaluate(cfg: DictConfig) -> dict[str, float] | None:
    """eval.py: re-evaluate one run (``run=``), or build the tables and figures from ``runs_root``."""
    return one_line_errors(lambda: _evaluate(cfg))


def _evaluate(cfg: DictConfig) -> dict[str, float] | None:
    if cfg.run:
        metrics = evaluate_run(cfg.run, device=cfg.device, extra=cfg.extra, overrides=list(cfg.overrides))
        print(json.dumps(metrics, indent=2, sort_keys=True), flush=True)
        return metrics
    from pathlib import Path

    from dyt.results.plots import plot_curves
    from dyt.results.runs import find_runs
    from dyt.results.tables import build_tables, load_paper, write_tables

    runs = find_runs(cfg.runs_root)
    if not runs:
        print(
            f"no run dirs under {cfg.runs_root!r}: train something first (python train.py), "
            "or point runs_root= at your runs",
            flush=True,
        )
        return None
    unfinished = [str(r.path) for r in runs if not r.finished]
    if unfinished:
        print(f"skipping {len(unfinished)} unfinished run(s) (no results.json): {', '.join(unfinished)}")
    tables = build_tables(runs, load_paper(cfg.paper))
    for text in tables.values():
        print(text)
    for path in write_tables(tables, cfg.out_dir):
        print(f"wrote {path}")
    if cfg.figures:
        from dyt.results.sweeps import sweep_figures

        figures = Path(cfg.out_dir) / "figures"
        for path in [*plot_curves(runs, figures), *sweep_figures(runs, figures)]:  # curves; Figs. 9-11 of sweeps
            print(f"wrote {path}")
    return None


def evaluate_run(
    path: str, device: str = "auto", extra: bool = True, overrides: list[str] | None = None
) -> dict[str, float]:
    """Evaluate the newest checkpoint of a run dir (or a checkpoint file) with the config it was trained
    with: the task's metrics for the raw and the EMA model (suffix ``_ema``), and with ``extra`` its costly
    metrics on the EMA model (raw if none). The metrics are merged into the run dir's ``results.json``."""
    from pathlib import Path

    import torch

    from dyt.engine.evaluation import evaluate_model, weights_swapped_in
    from dyt.io import atomic_write_json

    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    model, task, ckpt = load_run(path, weights="raw", overrides=overrides or ())
    run_cfg = task.cfg
    model.to(dev)
    ema = ckpt.get("ema")
    swap = (lambda: weights_swapped_in(model, ema, f"{ckpt['path']} (EMA)")) if ema else None
    metrics = evaluate_model(task.evaluate, model, dev, ema_weights=swap)
    run_dir = Path(ckpt["path"]).parent.parent
    if extra:
        # Costly metrics once, on the model papers report: the EMA model where there is one (DiT's FID).
        config_json = json.dumps(OmegaConf.to_container(run_cfg, resolve=True), sort_keys=True, default=str)
        source = {
            "checkpoint": Path(ckpt["path"]).name,
            "step": ckpt["step"],
            "weights": "ema" if ema else "raw",
            "config_sha256": hashlib.sha256(config_json.encode()).hexdigest(),
        }
        model.eval()
        try:
            with swap() if swap else contextlib.nullcontext():
                metrics.update(task.eval_extra(model, dev, run_dir, source))
        except Exception as e:  # the cheap metrics above are kept
            if os.environ.get(DEBUG_ENV):
                raise
            print(
                f"warning: the costly metrics of {type(task).__name__} failed ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); the other metrics are kept. `extra=false` skips "
                "them; offline, point them at local files (e.g. task.lm_eval.include_path, "
                "task.fid.reference)",
                file=sys.stderr,
                flush=True,
            )
    results_file = run_dir / "results.json"
    if (run_dir / "config.yaml").exists():
        results = json.loads(results_file.read_text()) if results_file.exists() else {}
        results.update(metrics)
        atomic_write_json(results_file, results)
    return metrics
