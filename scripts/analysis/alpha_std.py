"""Alpha against 1/std of each point-wise norm's input over training (paper Sec. 6.2, Fig. 8).

    python scripts/analysis/alpha_std.py runs/quickstart/dyt/seed0
    python scripts/analysis/alpha_std.py RUN --layers blocks.0.norm1,blocks.3.norm2 --out results/figures/analysis

The paper records alpha and the input std at the end of every epoch. Here they come from the run's
records: ``input_std/<layer>`` rows the trainer logged with ``dyt.analysis.InputStdProbe``, or, for a
run trained without it, every checkpoint the run kept (``trainer.keep_checkpoints``; one per epoch by
default) measured on one fixed validation mini-batch. The measurements go to
``<run>/analysis/alpha_std.jsonl`` (``python eval.py`` re-plots them). The figure, ``<name>.png`` in
--out, shows alpha and 1/std over training for the chosen layers (default: the first and the last) and
the final alpha of every layer against its final 1/std with Pearson's r, which is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dyt.analysis.figures import alpha_std_series, plot_alpha_std  # noqa: E402
from dyt.analysis.input_std import input_std  # noqa: E402
from dyt.analysis.sources import classifier_inputs, run_checkpoints, task_batch  # noqa: E402
from dyt.io import atomic_write_text  # noqa: E402
from dyt.nn.probes import alpha_stats  # noqa: E402
from dyt.results.runs import load_run  # noqa: E402
from dyt.tasks import load_run as load_trained  # noqa: E402

RECORDS = Path("analysis") / "alpha_std.jsonl"


def measure_checkpoints(run_dir: Path, batch_size: int) -> list[dict]:
    """One row per kept checkpoint: ``step``, ``alpha/<layer>`` and ``input_std/<layer>``."""
    rows, batch = [], None
    for ckpt_path in run_checkpoints(run_dir):
        model, task, ckpt = load_trained(ckpt_path)
        if batch is None:
            batch = classifier_inputs(task_batch(task, batch_size))
        rows.append({"step": ckpt["step"], **alpha_stats(model), **input_std(model, batch)})
        print(f"step {ckpt['step']}: {len(rows[-1]) - 2} layers measured", flush=True)
    return rows


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run dir of a model with point-wise norms (DyT, Derf)")
    p.add_argument("--layers", default=None, help="comma-separated layers for the left panel")
    p.add_argument("--batch", type=int, default=64, help="mini-batch size for checkpoint measurements")
    p.add_argument("--out", default="results/figures/analysis", help="figure directory")
    p.add_argument("--name", default=None, help="figure file stem (default alpha_std_<experiment>_<norm>)")
    args = p.parse_args(argv)
    run = load_run(args.run)
    series = alpha_std_series(run.metrics())
    if not series:
        rows = measure_checkpoints(run.path, args.batch)
        atomic_write_text(run.path / RECORDS, "".join(json.dumps(r) + "\n" for r in rows))
        print(f"wrote {run.path / RECORDS}")
        series = alpha_std_series(rows)
    name = args.name or f"alpha_std_{run.experiment}_{run.norm}".replace("/", "_")
    layers = args.layers.split(",") if args.layers else None
    path, r = plot_alpha_std(series, Path(args.out) / f"{name}.png", layers, title=f"{run.experiment} ({run.norm})")
    print(f"wrote {path}; final alpha vs 1/std over {len(series)} layers: Pearson r = {r:.3f}")
    return path


if __name__ == "__main__":
    main()
