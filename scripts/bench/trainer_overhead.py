"""Trainer overhead: ``Trainer(cfg).fit(task)`` against a bare PyTorch loop on the same model, data,
optimizer and batch, in steps per second, and where the difference goes.

Per-step time of the trainer is measured from the outside, through its public API only: two runs of
``fit`` that differ only in ``trainer.max_steps`` (``--steps`` = N1 and N2), each in a fresh run dir;
``(T(N2) - T(N1)) / (N2 - N1)`` cancels the fixed costs (building the model and data, the final
evaluation and checkpoint) and keeps everything paid per step or per epoch (data loading, logging,
seeding, epoch-end checkpoints). The bare loop (``torch.utils.data.DataLoader`` with shuffling,
``task.training_step`` and its optimizer-step hooks, ``loss.backward()``, clipping where the recipe
clips, ``AdamW.step()``) is timed
the same way inside one run. Runs alternate bare / trainer for ``--rounds`` rounds; medians are reported.

Attribution (``--attribute``, the quickstart only): the trainer again with logging on every step, with
an EMA, with a checkpoint every step; and, timed directly, what it pays every step that a bare loop does
not: the per-micro-batch and per-item seeding and the gradient-norm pass made even without clipping.

    python scripts/bench/trainer_overhead.py                       # quickstart and LLaMA-20M, ~3 min on CPU
    python scripts/bench/trainer_overhead.py --setups quickstart --attribute

Evaluation is switched off during training in every run (``eval_every_*=null``): it is work, not
overhead, and the bare loop does none. Never asserted in tests: timings on shared machines are noisy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import dyt.cli  # noqa: E402, F401  (registers the config resolvers that configs/train.yaml uses)
from dyt.engine import Trainer  # noqa: E402
from dyt.engine.task import StepInfo  # noqa: E402
from dyt.tasks import build_task  # noqa: E402
from scripts.bench.common import add_timing_options, apply_timing_options  # noqa: E402

# name -> (overrides, per-step batch, steps N1 and N2)
SETUPS = {
    "quickstart": ([], 64, (5, 45)),
    "llama_20m": (["experiment=llama_20m_stdlib"], 8, (2, 8)),
}
COMMON = [
    "trainer.device=cpu",
    "trainer.progress=off",
    "trainer.eval_every_epochs=null",
    "trainer.eval_every_steps=null",
    "trainer.ckpt_every_steps=null",
    "trainer.ckpt_every_minutes=null",
    "logger=jsonl",
]
# What the trainer is asked to do differently in the attribution runs (quickstart).
clock = time.perf_counter  # set by main (--clock)
ATTRIBUTION = {
    "log every step": ["trainer.log_every_steps=1"],
    "EMA (decay 0.9999)": ["trainer.ema_decay=0.9999"],
    "checkpoint every step": ["trainer.ckpt_every_steps=1"],
}


def batch_overrides(batch: int) -> list[str]:
    """The config keys that set the per-step batch on one process (the one line to change if they do)."""
    return [f"trainer.global_batch={batch}", "trainer.micro_batch=null"]


def make_cfg(overrides: list[str], run_dir: str, max_steps: int):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return compose("train", [*overrides, *COMMON, f"run_dir={run_dir}", f"trainer.max_steps={max_steps}"])


def trainer_seconds(overrides: list[str], max_steps: int) -> float:
    """Wall time of one whole ``fit`` in a fresh run dir."""
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = make_cfg(overrides, run_dir, max_steps)
        start = clock()
        Trainer(cfg).fit(build_task(cfg))
        return clock() - start


def trainer_step_ms(overrides: list[str], steps: tuple[int, int]) -> float:
    n1, n2 = steps
    return (trainer_seconds(overrides, n2) - trainer_seconds(overrides, n1)) / (n2 - n1) * 1e3


def bare_step_ms(overrides: list[str], batch: int, steps: tuple[int, int]) -> float:
    """The same work in a plain loop: ms per step between step N1 and step N2."""
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = make_cfg(overrides, run_dir, steps[1])
    torch.manual_seed(cfg.seed)
    task = build_task(cfg)
    model = task.build_model().train()
    optim = cfg.optim
    optimizer = torch.optim.AdamW(
        [g for g in task.param_groups(model, float(optim.weight_decay)) if g["params"]],
        lr=float(optim.lr),
        betas=tuple(float(b) for b in optim.betas),
        eps=float(optim.eps),
    )
    loader = torch.utils.data.DataLoader(
        task.train_data(), batch_size=batch, shuffle=True, drop_last=True, collate_fn=task.collate_fn()
    )
    clip = cfg.trainer.clip_grad
    schedules = task.schedules(steps[1], len(loader))
    step, marks = 0, {}
    while step < steps[1]:
        for batch_data in loader:
            scalars = {name: fn(step) for name, fn in schedules.items()}
            info = StepInfo(step, step // len(loader), steps[1], len(loader), scalars=scalars)
            loss, _ = task.training_step(model, batch_data, info)
            loss.backward()
            task.before_optimizer_step(model, info)
            if clip:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            task.after_optimizer_step(model, info)
            loss.item()  # the trainer reads the loss every step (NaN guard); so does any real loop
            step += 1
            if step in steps:
                marks[step] = clock()
            if step == steps[1]:
                break
    return (marks[steps[1]] - marks[steps[0]]) / (steps[1] - steps[0]) * 1e3


def _per_call_us(fn, calls: int) -> float:
    start = clock()
    for i in range(calls):
        fn(i)
    return (clock() - start) / calls * 1e6


def micro_costs(overrides: list[str], batch: int) -> dict[str, float]:
    """Microseconds of what the trainer adds per step that a bare loop does not do, one call each:
    the per-micro-batch seeding (torch on CPU, numpy, random), the per-item seeding of every sample
    (SeededDataset, seeds derived a block at a time; times the batch for a step) and the gradient-norm
    pass the non-finite guard reads (the norm alone when the recipe does not clip)."""
    from dyt.engine.sampler import SeededDataset, seed_all

    with tempfile.TemporaryDirectory() as run_dir:
        cfg = make_cfg(overrides, run_dir, 1)
    task = build_task(cfg)
    model = task.build_model().train()
    batch_data = next(iter(torch.utils.data.DataLoader(task.train_data(), batch_size=batch)))
    task.training_step(model, batch_data, StepInfo(0, 0, 1, 1))[0].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    items = SeededDataset(list(range(4096)), cfg.seed)
    return {
        "seed_all per micro-batch": _per_call_us(lambda i: seed_all(0, i, 0, 0, cuda=False), 2000),
        "per-item seeding x batch": _per_call_us(lambda i: items[i % 4096], 4096) * batch,
        "grad-norm pass (clip_grad=null)": _per_call_us(lambda i: nn.utils.get_total_norm(grads), 200),
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setups", nargs="+", choices=list(SETUPS), default=list(SETUPS))
    parser.add_argument("--rounds", type=int, default=3, help="interleaved bare / trainer rounds; medians reported")
    parser.add_argument("--attribute", action="store_true", help="quickstart: cost of logging, EMA, checkpoints")
    parser.add_argument("--steps", nargs=2, type=int, metavar=("N1", "N2"), help="override the setups' step counts")
    add_timing_options(parser)
    args = parser.parse_args(argv)
    global clock
    clock = apply_timing_options(args)
    print(
        f"# trainer overhead: cpu, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock, "
        f"median of {args.rounds} interleaved rounds",
        flush=True,
    )
    print("| setup | batch | bare ms/step | trainer ms/step | steps/s ratio (trainer / bare) |")
    print("|---|---:|---:|---:|---:|")
    results = {}
    for name in args.setups:
        overrides, batch, steps = SETUPS[name]
        steps = tuple(args.steps) if args.steps else steps
        overrides = [*overrides, *batch_overrides(batch)]
        bare, trainer = [], []
        for _ in range(args.rounds):
            bare.append(bare_step_ms(overrides, batch, steps))
            trainer.append(trainer_step_ms(overrides, steps))
        row = {"bare_ms": statistics.median(bare), "trainer_ms": statistics.median(trainer)}
        row["ratio"] = row["bare_ms"] / row["trainer_ms"]
        results[name] = row
        print(f"| {name} | {batch} | {row['bare_ms']:.1f} | {row['trainer_ms']:.1f} | {row['ratio']:.3f} |", flush=True)
    if args.attribute:
        overrides, batch, steps = SETUPS["quickstart"]
        overrides = [*overrides, *batch_overrides(batch)]
        steps = tuple(args.steps) if args.steps else steps
        print("\n| quickstart trainer variant | ms/step | + ms/step over the default trainer |")
        print("|---|---:|---:|")
        base = results.get("quickstart", {}).get("trainer_ms") or trainer_step_ms(overrides, steps)
        for label, extra in ATTRIBUTION.items():
            ms = statistics.median(trainer_step_ms([*overrides, *extra], steps) for _ in range(args.rounds))
            results[label] = {"trainer_ms": ms, "extra_ms": ms - base}
            print(f"| {label} | {ms:.1f} | {ms - base:+.1f} |", flush=True)
        print(f"\n| quickstart, paid every step | ms/step (of {base:.1f}) |")
        print("|---|---:|")
        for label, us in micro_costs(overrides, batch).items():
            results[label] = {"extra_ms": us / 1e3}
            print(f"| {label} | {us / 1e3:.2f} |", flush=True)
    return results


if __name__ == "__main__":
    main()
