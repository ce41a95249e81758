"""A CPU mini-reproduction of every table of the paper: each model family on small real data that
needs no download, with its baseline norm, DyT and Derf, 3 seeds each.

    python scripts/reproduce_cpu.py                       # everything, local processes (one per core)
    python scripts/reproduce_cpu.py --launcher slurm      # one SLURM job per run (hydra/launcher=slurm)
    python scripts/reproduce_cpu.py --only vit,llama --seeds 0
    python scripts/reproduce_cpu.py --report-only         # tables and figures from the runs already there
    python scripts/reproduce_cpu.py --protocol lr_grid    # the paper's Table 12 protocol at small scale
    python scripts/reproduce_cpu.py --protocol calibrated # DyT/Derf with norm.alpha_init=calibrate

Three protocols (``--protocol``), each in its own runs root:

- ``paper`` (``runs/cpu``): every norm at the recipe's hyperparameters, DyT at the paper's alpha_init.
- ``lr_grid`` (``runs/cpu_lr<m>``): the paper's Table 12 protocol (each norm at the best learning rate of a
  grid) at small scale. The grid, fixed before any run, multiplies every stage's recipe lr by
  ``LR_GRID`` = 1 and 3; the point 1 is the ``paper`` protocol's runs. Each norm reports its best point.
- ``calibrated`` (``runs/cpu_calibrated``): DyT and Derf at the baseline's hyperparameters with
  ``norm.alpha_init=calibrate`` (alpha per site from the input std on one training batch at init).

Runs go to ``<root>/<experiment>/<norm>/seed<k>`` (the recipes are ``configs/experiment/cpu/``), their
logs to ``runs/cpu/_logs/``. A run that finished before is not run again, so an interrupted
reproduction continues where it stopped. Two-stage families (MAE, DINO, HyenaDNA, Caduceus) fine-tune
each norm's and seed's own pretraining; a failed run skips what depends on it and is listed at the end.

Results: ``results/cpu/<protocol>/<table>.md`` per run set and paper table, ``results/cpu/summary.json`` and
``results/cpu/README.md`` with the three protocols side by side,
the commands, the machine and the wall time; curves in ``results/cpu/<protocol>/figures/``. Each row puts our
mean +- std over seeds beside the paper's number for the full-scale row it stands for, with DyT minus
the baseline on both sides. The CPU runs are minutes long on tiny models: they test that every family
trains with every norm and show the direction of the differences at this scale, not the paper's numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NORMS = ("dyt", "derf")  # beside each family's baseline
LR_GRID = (1.0, 3.0)  # lr_grid protocol: multiples of each recipe's lr, chosen before the runs
PROTOCOLS = ("paper", "lr_grid", "calibrated")


@dataclass(frozen=True)
class Family:
    """One row of the reproduction: the CPU recipes it runs, in order, and the paper row it stands for."""

    name: str
    label: str  # what runs, for the tables
    table: str  # results/paper.yaml table ...
    row: str  # ... and row
    baseline: str  # the norm the paper's differences are taken against
    stages: tuple[str, ...]  # experiment names; a later stage starts from the earlier one (init_from)
    metric: str  # of the last stage; the paper row's metric at full scale
    higher_is_better: bool
    paper_values: str = "values"  # the paper row's key that holds this metric (Table 4: "loss")
    eval_extra: bool = False  # run eval.py on the last stage (FID for DiT)
    digits: int = 1


FAMILIES = (
    Family("vit", "ViT, 4 blocks, width 64, digits 8x8", "table1", "vit_b", "layernorm",
           ("cpu/vit_digits",), "val/top1", True),
    Family("convnext", "ConvNeXt, 2 stages, digits 8x8", "table1", "convnext_b", "layernorm",
           ("cpu/convnext_digits",), "val/top1", True),
    Family("mae", "MAE pretrain + fine-tune, digits", "table2", "mae_vit_b", "layernorm",
           ("cpu/mae_digits", "cpu/mae_digits_finetune"), "val/top1", True),
    Family("dino", "DINO pretrain + fine-tune, digits", "table2", "dino_vit_b16", "layernorm",
           ("cpu/dino_digits", "cpu/dino_digits_finetune"), "val/top1", True),
    Family("dit", "DiT, pixel space, digits (FID on a digits feature net)", "table3", "dit_b4", "layernorm",
           ("cpu/dit_digits",), "fid", False, eval_extra=True, digits=2),
    Family("llama", "LLaMA, width 128, stdlib text (val loss)", "table4", "llama2_7b", "rmsnorm",
           ("cpu/llama_stdlib",), "val/loss", False, paper_values="loss", digits=3),
    Family("wav2vec2", "wav2vec 2.0, synthetic speech (val loss)", "table5", "w2v2_base", "layernorm",
           ("cpu/wav2vec2_speech",), "val/loss", False, digits=3),
    Family("hyena", "HyenaDNA pretrain + real-vs-shuffled DNA", "table6", "hyenadna", "layernorm",
           ("cpu/hyena_pretrain", "cpu/hyena_finetune"), "val/acc", True),
    Family("caduceus", "Caduceus pretrain + real-vs-shuffled DNA", "table6", "caduceus", "rmsnorm",
           ("cpu/caduceus_pretrain", "cpu/caduceus_finetune"), "val/acc", True),
)  # fmt: skip


# ---- running ------------------------------------------------------------------------------------------


@dataclass
class Job:
    """One command; it starts when every job in ``after`` has succeeded."""

    name: str
    argv: list[str]
    log: Path
    after: list[Job] = field(default_factory=list)
    done_if: Path | None = None  # skip when this file exists (a finished run)
    status: str = "pending"  # pending | running | ok | skipped | failed | blocked
    seconds: float = 0.0


def runs_root(protocol: str, lr_mult: float = 1.0) -> Path:
    """Where one protocol's runs live; the recipes' own run dirs (``runs/cpu/...``) for the paper's."""
    if protocol == "calibrated":
        return Path("runs/cpu_calibrated")
    if protocol == "lr_grid" and lr_mult != 1.0:
        return Path(f"runs/cpu_lr{lr_mult:g}")
    return Path("runs")


def run_dir(experiment: str, norm: str, seed: int, root: Path = Path("runs")) -> Path:
    """Every run's dir, given to train.py. Under ``runs/`` it is where a CPU recipe puts its run with no
    other override, and where the fine-tuning recipes look for their pretraining (``init_from``)."""
    return root / experiment / norm / f"seed{seed}"


def recipe_lr(experiment: str) -> float:
    """The ``optim.lr`` of a recipe, as composed (the lr grid multiplies it)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return float(compose("train", overrides=[f"experiment={experiment}"]).optim.lr)


def protocol_variants(protocol: str, families: list[Family], norms: tuple[str, ...]) -> list[dict]:
    """The run sets a protocol adds: ``root``, the ``norms`` it runs, and ``overrides`` per experiment."""
    if protocol == "paper":
        return [{"root": runs_root("paper"), "norms": None, "overrides": {}}]
    if protocol == "calibrated":
        return [{"root": runs_root("calibrated"), "norms": norms, "overrides": {"*": ["norm.alpha_init=calibrate"]}}]
    variants = []
    for mult in LR_GRID:
        if mult == 1.0:
            continue  # the paper protocol's runs
        lrs = {e: recipe_lr(e) * mult for f in families for e in f.stages}
        overrides = {e: [f"optim.lr={lr:.6g}"] for e, lr in lrs.items()}
        variants.append({"root": runs_root("lr_grid", mult), "norms": None, "overrides": overrides})
    return variants


def plan(
    families: list[Family],
    seeds: list[int],
    launcher: str,
    overrides: list[str],
    norms: tuple[str, ...] = NORMS,
    root: Path = Path("runs"),
    only_norms: tuple[str, ...] | None = None,
    stage_overrides: dict[str, list[str]] | None = None,
) -> list[Job]:
    """Every job of the reproduction (each family's baseline and ``norms``, or ``only_norms``), each stage
    after the one it starts from, in ``root``; ``stage_overrides`` adds overrides per experiment (``*``:
    every experiment)."""
    stage_overrides = stage_overrides or {}
    train = [sys.executable, str(ROOT / "train.py")]
    if launcher == "slurm":  # a one-run multirun: submitit submits it and waits for it (requeues included)
        train += ["-m", "hydra/launcher=slurm"]
    logs = Path("runs/cpu/_logs")
    tag = "" if root == Path("runs") else f"{root.name}_"
    jobs = []
    for fam in families:
        for norm in only_norms or dict.fromkeys((fam.baseline, *norms)):
            for seed in seeds:
                before: list[Job] = []
                previous: Path | None = None  # the earlier stage's run dir
                for experiment in fam.stages:
                    name = f"{tag}{experiment} {norm} seed{seed}"
                    stem = f"{tag}{experiment.replace('/', '_')}_{norm}_seed{seed}"
                    where = run_dir(experiment, norm, seed, root)
                    # Outside runs/ a fine-tune names its own protocol's pretraining (the recipes name runs/).
                    chained = [f"init_from.source={previous}"] if previous and root != Path("runs") else []
                    argv = [
                        *train,
                        f"experiment={experiment}",
                        f"norm={norm}",
                        f"seed={seed}",
                        f"run_dir={where}",
                        *chained,
                        *stage_overrides.get("*", []),
                        *stage_overrides.get(experiment, []),
                        *overrides,
                    ]
                    done = None if overrides else where / "results.json"
                    job = Job(name, argv, logs / f"{stem}.log", list(before), done)
                    jobs.append(job)
                    before, previous = [job], where
                if fam.eval_extra:
                    target = run_dir(fam.stages[-1], norm, seed, root)
                    argv = [sys.executable, str(ROOT / "eval.py"), f"run={target}", "figures=false"]
                    jobs.append(Job(f"eval {name}", argv, logs / f"{stem}_eval.log", list(before)))
    return jobs


def execute(jobs: list[Job], workers: int, threads: int) -> None:
    """Run ``jobs`` with ``workers`` at a time, each with ``threads`` CPU threads, in dependency order;
    a failed job blocks the jobs after it. Prints one line per finished job."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    pending = list(jobs)
    running: dict[Future, Job] = {}
    finished = 0

    def start(job: Job) -> None:
        job.log.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        with open(job.log, "w") as log:
            log.write("$ " + shlex.join(job.argv) + "\n\n")
            log.flush()
            rc = subprocess.run(job.argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=Path.cwd()).returncode
        job.seconds = time.time() - t0
        job.status = "ok" if rc == 0 else "failed"

    with ThreadPoolExecutor(max_workers=workers) as pool:
        while pending or running:
            for job in list(pending):
                if any(dep.status in ("failed", "blocked") for dep in job.after):
                    job.status = "blocked"
                elif all(dep.status in ("ok", "skipped") for dep in job.after):
                    if job.done_if is not None and job.done_if.exists():
                        job.status = "skipped"
                    elif len(running) < workers:
                        job.status = "running"
                        running[pool.submit(start, job)] = job
                    else:
                        continue
                else:
                    continue
                pending.remove(job)
                if job.status in ("skipped", "blocked"):
                    finished += 1
                    print(f"[{finished}/{len(jobs)}] {job.status:7s} {job.name}", flush=True)
            if not running:
                continue
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                future.result()  # re-raise a bug in start()
                finished += 1
                where = "" if job.status == "ok" else f"  (log: {job.log})"
                print(f"[{finished}/{len(jobs)}] {job.status:7s} {job.name} ({job.seconds:.0f} s){where}", flush=True)


# ---- reporting -----------------------------------------------------------------------------------------


def final_values(experiment: str, norm: str, metric: str, runs_root: Path) -> list[float]:
    """The final ``metric`` of every finished seed of one CPU recipe and norm (``results.json``)."""
    from dyt.results.runs import find_runs

    runs = [r for r in find_runs(runs_root / experiment) if r.experiment == experiment and r.norm == norm]
    return [float(r.results[metric]) for r in runs if metric in r.results and r.results.get("diverged_at_step") is None]


def fmt(values: list[float], digits: int) -> str:
    from dyt.results.runs import mean_std

    if not values:
        return "–"
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f} (n=1)"


def diff(a: list[float], b: list[float], digits: int) -> str:
    if not a or not b:
        return "n/a"
    d = sum(a) / len(a) - sum(b) / len(b)
    return "–" if round(d, digits) == 0 else f"{d:+.{digits}f}"


def family_rows(fam: Family, paper: dict, runs_root: Path) -> tuple[str, list[str]]:
    """(the family's row of the summary table, the rows of its per-stage table)."""
    from dyt.results.runs import find_runs
    from dyt.results.tables import headline_metric

    norms = (fam.baseline, *NORMS)
    ours = {n: final_values(fam.stages[-1], n, fam.metric, runs_root) for n in norms}
    row = paper[fam.table]["rows"][fam.row]
    published = row.get(fam.paper_values, {})
    pd = fam.digits if fam.paper_values == "values" else 2  # Table 4's losses have 2 decimals

    def p(norm: str) -> list[float]:
        return [published[norm]] if norm in published else []

    better = "higher" if fam.higher_is_better else "lower"
    cells = [
        fam.label,
        f"{fam.metric} ({better} is better)",
        *(fmt(ours[n], fam.digits) for n in norms),
        *(diff(ours[n], ours[fam.baseline], fam.digits) for n in NORMS),
        f"{row['label']}: {fam.baseline} " + " / ".join(fmt(p(n), pd).replace(" (n=1)", "") for n in norms),
        diff(p("dyt"), p(fam.baseline), pd),
        str(max(len(v) for v in ours.values())),
    ]
    stage_rows = []
    for experiment in fam.stages:
        runs = [r for r in find_runs(runs_root / experiment) if r.experiment == experiment]
        metric = fam.metric if experiment == fam.stages[-1] else headline_metric(runs)
        if metric is None:
            continue
        values = [final_values(experiment, n, metric, runs_root) for n in norms]
        steps = sorted({int(r.results["steps"]) for r in runs if "steps" in r.results})
        stage_rows.append(
            f"| {experiment} | {'/'.join(map(str, steps)) or '–'} | {metric} | {fam.baseline} | "
            + " | ".join(fmt(v, 3) for v in values)
            + f" | {diff(values[1], values[0], 3)} | {diff(values[2], values[0], 3)} |"
        )
    return "| " + " | ".join(cells) + " |", stage_rows


SUMMARY_HEAD = (
    "| CPU run | metric | baseline | DyT | Derf | DyT − baseline | Derf − baseline "
    "| paper row (full scale): baseline / DyT / Derf | paper DyT − baseline | seeds |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)
STAGE_HEAD = (
    "| experiment | steps | metric | baseline | baseline value | DyT | Derf | DyT − baseline | Derf − baseline |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def report(families: list[Family], runs_root: Path, out: Path, header: str) -> str:
    """Write ``out/<table>.md`` per paper table, ``out/README.md`` and the curves; return the summary."""
    from dyt.results.plots import plot_curves
    from dyt.results.runs import find_runs
    from dyt.results.tables import load_paper

    paper = load_paper(ROOT / "results/paper.yaml")
    out.mkdir(parents=True, exist_ok=True)
    summary = []
    families = [f for f in families if any((runs_root / stage).exists() for stage in f.stages)]
    by_table: dict[str, list[Family]] = {}
    for fam in families:
        by_table.setdefault(fam.table, []).append(fam)
    for table, fams in by_table.items():
        rows, stage_rows = [], []
        for fam in fams:
            row, stages = family_rows(fam, paper, runs_root)
            rows.append(row)
            stage_rows += stages
        summary += rows
        source = paper[table].get("source", "")
        text = (
            f"# CPU reproduction of {table.replace('table', 'Table ')}: {paper[table]['title']}\n\n"
            f"Paper numbers: {source}. Ours: final value of each run (results.json), mean ± std over seeds.\n\n"
            + (f"Caveat: {paper[table]['caveat']}.\n\n" if paper[table].get("caveat") else "")
            + f"{SUMMARY_HEAD}\n"
            + "\n".join(rows)
            + "\n\n## Every stage\n\n"
            + f"{STAGE_HEAD}\n"
            + "\n".join(stage_rows)
            + "\n"
        )
        (out / f"{table}.md").write_text(text)
        runs = [r for fam in fams for stage in fam.stages for r in find_runs(runs_root / stage)]
        plot_curves([r for r in runs if r.experiment in {s for f in fams for s in f.stages}], out / "figures")
    table = f"{SUMMARY_HEAD}\n" + "\n".join(summary) + "\n"
    (out / "README.md").write_text(header + "\n" + table)
    return table


SUMMARY_JSON = "summary.json"  # <out>/summary.json: every protocol's final values, per family and norm


def protocol_key(protocol: str, lr_mult: float = 1.0) -> str:
    """The key of one set of runs in ``summary.json``: ``paper``, ``lr3`` (a grid point), ``calibrated``."""
    return f"lr{lr_mult:g}" if protocol == "lr_grid" else protocol


def collect(families: list[Family], root: Path, norms: tuple[str, ...] = NORMS) -> dict:
    """``{family: {norm: {"values", "mean", "std", "n"}}}`` of the last stage of every family with runs
    under ``root``."""
    from dyt.results.runs import mean_std

    out: dict = {}
    for fam in families:
        for norm in (fam.baseline, *norms):
            values = final_values(fam.stages[-1], norm, fam.metric, root)
            if values:
                mean, std = mean_std(values)
                out.setdefault(fam.name, {})[norm] = {"values": values, "mean": mean, "std": std, "n": len(values)}
    return out


def update_summary(out: Path, key: str, values: dict) -> dict:
    """Merge one protocol's values into ``<out>/summary.json`` (families without runs here keep what an
    earlier run of the reproduction recorded there); return the whole summary."""
    from dyt.io import atomic_write_json

    path = out / SUMMARY_JSON
    summary = json.loads(path.read_text()) if path.exists() else {}
    summary.setdefault(key, {}).update(values)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, summary)
    return summary


def gap(entries: dict, norm: str, baseline: str, digits: int) -> str:
    """The difference of two mean values in ``entries`` (``–`` when either is missing)."""
    a, b = entries.get(norm), entries.get(baseline)
    return "–" if not a or not b else f"{a['mean'] - b['mean']:+.{digits}f}"


def cell(entry: dict | None, digits: int, note: str = "", seeds: bool = True) -> str:
    """``mean ± std``, or the one value with ``1 seed`` (unless ``seeds`` is off, as for the paper's row),
    then any note, in one pair of brackets."""
    if not entry:
        return "–"
    one = entry["n"] == 1
    text = f"{entry['mean']:.{digits}f}" + ("" if one else f" ± {entry['std']:.{digits}f}")
    notes = [note] if note else []
    if one and seeds:
        notes.append("1 seed")
    return text + (f" ({', '.join(notes)})" if notes else "")


def best_of_grid(summary: dict, fam: Family, norm: str) -> tuple[dict | None, float | None]:
    """The lr-grid point with the best mean final value for one family and norm, and its multiplier."""
    points = [(m, e) for m in LR_GRID if (e := best_point(summary, fam, norm, m))]
    if not points:
        return None, None
    m, entry = (max if fam.higher_is_better else min)(points, key=lambda p: p[1]["mean"])
    return entry, m


def grid_note(summary: dict, fam: Family, norm: str, chosen: float) -> str:
    """``×m`` for the chosen grid point, naming the points that were not run."""
    missing = [m for m in LR_GRID if not best_point(summary, fam, norm, m)]
    return f"×{chosen:g}" + (f"; ×{'/'.join(f'{m:g}' for m in missing)} not run" if missing else "")


def best_point(summary: dict, fam: Family, norm: str, mult: float) -> dict | None:
    """One lr-grid point's entry for a family and norm (×1 is the paper's protocol)."""
    return summary.get("paper" if mult == 1.0 else protocol_key("lr_grid", mult), {}).get(fam.name, {}).get(norm)


COMBINED_HEAD = (
    "| CPU run | metric | protocol | baseline | DyT | Derf | DyT − baseline | Derf − baseline |\n"
    "|---|---|---|---|---|---|---|---|"
)


def combined_table(summary: dict, paper: dict, families: tuple[Family, ...] = FAMILIES) -> str:
    """Three protocols side by side with the paper's row, one block of rows per family."""
    lines = [COMBINED_HEAD]
    for fam in families:
        d = fam.digits
        norms = (fam.baseline, *NORMS)
        paper_protocol = {n: summary.get("paper", {}).get(fam.name, {}).get(n) for n in norms}
        grid = {n: best_of_grid(summary, fam, n) for n in norms}
        calibrated = {n: summary.get("calibrated", {}).get(fam.name, {}).get(n) for n in NORMS}
        calibrated[fam.baseline] = paper_protocol[fam.baseline]  # the baseline's hyperparameters
        row = paper[fam.table]["rows"][fam.row]
        published = row.get(fam.paper_values, {})
        pd = fam.digits if fam.paper_values == "values" else 2

        better = "higher" if fam.higher_is_better else "lower"
        blocks = [
            ("paper's protocol (recipe lr, paper alpha_init)", paper_protocol, {}),
            (
                "best of lr grid ×" + "/".join(f"{m:g}" for m in LR_GRID),
                {n: e for n, (e, _) in grid.items()},
                {n: grid_note(summary, fam, n, m) for n, (_, m) in grid.items() if m is not None},
            ),
            ("calibrated (norm.alpha_init=calibrate)", calibrated, {fam.baseline: "as above"}),
        ]
        for i, (label, entries, notes) in enumerate(blocks):
            first = i == 0
            lines.append(
                f"| {fam.label if first else ''} | {f'{fam.metric} ({better} is better)' if first else ''} | {label} | "
                + " | ".join(cell(entries.get(n), d, notes.get(n, "")) for n in norms)
                + f" | {gap(entries, 'dyt', fam.baseline, d)} | {gap(entries, 'derf', fam.baseline, d)} |"
            )
        values = {n: {"mean": published[n], "std": 0.0, "n": 1} for n in norms if n in published}
        lines.append(
            f"| | | paper, full scale ({row['label']}) | "
            + " | ".join(cell(values.get(n), pd, seeds=False) for n in norms)
            + f" | {gap(values, 'dyt', fam.baseline, pd)} | {gap(values, 'derf', fam.baseline, pd)} |"
        )
    return "\n".join(lines) + "\n"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        names = [
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    versions = f"Python {platform.python_version()}, torch {torch.__version__}"
    return f"{os.cpu_count()} CPU cores ({cpu}), {versions}, no GPU used"


INVOCATIONS = "invocations.jsonl"  # <out>/invocations.jsonl: one line per reproduction run (what, when, how long)


def header(out: Path, title: str = "CPU mini-reproduction of every table") -> str:
    """A report's preamble: the machine and every invocation recorded in ``<out>/invocations.jsonl``."""
    path = out / INVOCATIONS
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    history = "\n".join(
        f"- `{r['command']}`: finished {r['finished']}, {r['wall_min']} min wall, {r['runs']} runs "
        f"({r['run_min']} run-minutes), {r['skipped']} finished earlier, {r['failed']} failed"
        + (f"; {r['note']}" if r.get("note") else "")  # e.g. what else the machine ran (added by hand)
        for r in lines
    )
    return (
        f"# {title}\n\n"
        f"Machine: {machine()}\n\n"
        f"Invocations that produced these runs:\n\n{history or '- none recorded'}\n\n"
        "Ours: the final value of each run, mean ± std over seeds, on minutes-long CPU runs of tiny models; "
        "the paper's: the full-scale row each CPU run stands for.\n"
    )


PROTOCOLS_TEXT = """Three protocols, each run set in a folder beside this file with its per-stage tables:

- **paper's protocol** (`paper/`): every norm at the recipe's hyperparameters, DyT and Derf at the paper's
  alpha_init (0.5; LLaMA by width, paper Table 11), 3 seeds: what the paper's recipes prescribe.
- **best of lr grid** (`lr_grid/`): the paper's Table 12 protocol at small scale. The grid, fixed before any
  run, multiplies every stage's recipe lr by 1 and 3; each norm gets the point with its best mean. Point
  ×1 is the paper's protocol; point ×3 was cut to fit the budget: 3 seeds for wav2vec 2.0, 2 seeds (0, 1)
  for ViT, ConvNeXt, MAE, DINO, DiT and LLaMA, seed 0 for HyenaDNA and Caduceus, and no Derf runs for DiT
  and LLaMA. Cells from one seed, or whose other point was not run, say so.
- **calibrated** (`calibrated/`): DyT and Derf at the baseline's hyperparameters with
  `norm.alpha_init=calibrate` (each layer's alpha set so that alpha x input std = 0.3 on the first training
  batch), 3 seeds for MAE, DINO and wav2vec 2.0, 2 seeds (0, 1) for the rest; the baseline is the paper's
  protocol's. The scale probes of seed 0 over training: `calibrated/scale/`.

What the gaps mean, and what remains unexplained: docs/analysis.md, "DyT below the paper's scale".
"""


def run_sets() -> list[tuple[str, Path, str]]:
    """(summary key, runs root, report folder) of every protocol's run set."""
    grid = [(protocol_key("lr_grid", m), runs_root("lr_grid", m), f"lr_grid/x{m:g}") for m in LR_GRID if m != 1.0]
    return [("paper", runs_root("paper"), "paper"), *grid, ("calibrated", runs_root("calibrated"), "calibrated")]


def write_reports(out: Path) -> str:
    """Per-protocol tables for every run set present here, ``<out>/summary.json`` and the combined
    ``<out>/README.md``; return the combined table."""
    from dyt.results.tables import load_paper

    for key, root, folder in run_sets():
        if any((root / stage).exists() for fam in FAMILIES for stage in fam.stages):
            report(FAMILIES, root, out / folder, header(out, f"CPU reproduction, {key} run set"))
            update_summary(out, key, collect(list(FAMILIES), root))
    path = out / SUMMARY_JSON
    summary = json.loads(path.read_text()) if path.exists() else {}
    table = combined_table(summary, load_paper(ROOT / "results/paper.yaml"))
    (out / "README.md").write_text(header(out) + "\n" + PROTOCOLS_TEXT + "\n" + table)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", default="", help=f"comma-separated families (default: all of {', '.join(f.name for f in FAMILIES)})"
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--norms", default=",".join(NORMS), help="norms beside each baseline (default dyt,derf)")
    parser.add_argument(
        "--protocol", choices=PROTOCOLS, default="paper", help="which protocol's runs to make (module doc)"
    )
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local")
    parser.add_argument(
        "--jobs", type=int, default=None, help="runs at once (default: the CPU count locally, 64 on SLURM)"
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per local run (default 1)")
    parser.add_argument("--out", default="results/cpu", help="where the tables go (default results/cpu)")
    parser.add_argument("--report-only", action="store_true", help="only write the tables from existing runs")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="Hydra overrides for every run, e.g. trainer.max_steps=2 for a smoke test in a fresh directory "
        "(runs are then never skipped, and an earlier run with other settings is refused)",
    )
    args = parser.parse_args(argv)

    known = {f.name: f for f in FAMILIES}
    names = [n for n in args.only.split(",") if n] or list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown family {', '.join(unknown)}; choose from {', '.join(known)}")
    norms = tuple(n for n in args.norms.split(",") if n)
    available = sorted(p.stem for p in (ROOT / "configs/norm").glob("*.yaml"))
    if not set(norms) <= set(available):
        parser.error(
            f"unknown norm {', '.join(sorted(set(norms) - set(available)))}; choose from {', '.join(available)}"
        )
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds takes comma-separated integers, e.g. 0,1,2; got {args.seeds!r}")
    families = [known[n] for n in names]
    command = shlex.join(["python", "scripts/reproduce_cpu.py", *(argv if argv is not None else sys.argv[1:])])

    start = time.time()
    failed: list[Job] = []
    if not args.report_only:
        jobs = [
            job
            for v in protocol_variants(args.protocol, families, norms)
            for job in plan(
                families, seeds, args.launcher, args.overrides, norms, v["root"], v["norms"], v["overrides"]
            )
        ]
        workers = args.jobs or (64 if args.launcher == "slurm" else os.cpu_count() or 1)
        print(f"{len(jobs)} jobs, {workers} at a time; logs in runs/cpu/_logs/", flush=True)
        execute(jobs, workers, args.threads)
        failed = [j for j in jobs if j.status in ("failed", "blocked")]
        ran = [j for j in jobs if j.status in ("ok", "failed")]
        record = {
            "command": command,
            "finished": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            "wall_min": round((time.time() - start) / 60, 1),
            "runs": len(ran),
            "run_min": round(sum(j.seconds for j in ran) / 60),
            "skipped": sum(j.status == "skipped" for j in jobs),
            "failed": len(failed),
        }
        Path(args.out).mkdir(parents=True, exist_ok=True)
        with open(Path(args.out) / INVOCATIONS, "a") as f:
            f.write(json.dumps(record) + "\n")
    print(write_reports(Path(args.out)))  # every run set and family with runs, not only --only
    if failed:
        print(f"{len(failed)} of {len(jobs)} jobs did not finish:", file=sys.stderr)
        for job in failed:
            print(f"  {job.status}: {job.name}  (log: {job.log})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
