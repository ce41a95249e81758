"""The CPU mini-reproduction (scripts/reproduce_cpu.py): its plan, its job runner and its tables.

The reproduction itself takes about an hour; here the runner runs stand-in commands, the tables are
built from hand-written run dirs, and the recipes' stage chaining is checked on the composed configs.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("reproduce_cpu", ROOT / "scripts/reproduce_cpu.py")
reproduce = importlib.util.module_from_spec(spec)
sys.modules["reproduce_cpu"] = reproduce  # its dataclasses look their module up while being defined
spec.loader.exec_module(reproduce)

FAMILIES = {f.name: f for f in reproduce.FAMILIES}


def test_every_family_names_a_paper_row_and_existing_recipes():
    paper = yaml.safe_load((ROOT / "results/paper.yaml").read_text())
    for fam in reproduce.FAMILIES:
        row = paper[fam.table]["rows"][fam.row]
        assert fam.baseline in row[fam.paper_values] and "dyt" in row[fam.paper_values], fam.name
        for experiment in fam.stages:
            assert (ROOT / "configs/experiment" / f"{experiment}.yaml").exists(), experiment
    assert {f.table for f in reproduce.FAMILIES} == {f"table{i}" for i in range(1, 7)}  # every main table


def test_plan_chains_each_norm_and_seed_through_its_stages():
    jobs = reproduce.plan([FAMILIES["mae"], FAMILIES["dit"]], [0, 1], "local", [])
    by_name = {j.name: j for j in jobs}
    assert len(jobs) == 3 * 2 * 2 + 3 * 2 * 2  # MAE: 2 stages; DiT: train + eval; 3 norms x 2 seeds each
    finetune = by_name["cpu/mae_digits_finetune derf seed1"]
    assert [d.name for d in finetune.after] == ["cpu/mae_digits derf seed1"]
    assert "run_dir=runs/cpu/mae_digits_finetune/derf/seed1" in finetune.argv
    assert finetune.done_if == Path("runs/cpu/mae_digits_finetune/derf/seed1/results.json")
    fid = by_name["eval cpu/dit_digits layernorm seed0"]
    assert fid.argv[-2:] == ["run=runs/cpu/dit_digits/layernorm/seed0", "figures=false"]
    assert [d.name for d in fid.after] == ["cpu/dit_digits layernorm seed0"]
    slurm = reproduce.plan([FAMILIES["vit"]], [0], "slurm", ["trainer.max_steps=2"])
    assert slurm[0].argv[2:4] == ["-m", "hydra/launcher=slurm"] and slurm[0].argv[-1] == "trainer.max_steps=2"
    assert slurm[0].done_if is None  # overridden runs are never taken as done


def _compose(experiment: str, norm: str, seed: int):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        cfg = compose("train", overrides=[f"experiment={experiment}", f"norm={norm}", f"seed={seed}"])
    OmegaConf.resolve(cfg)
    return cfg


@pytest.mark.parametrize("name", [f.name for f in reproduce.FAMILIES if len(f.stages) > 1])
def test_second_stage_starts_from_the_run_dir_the_plan_gives_the_first(name):
    first, second = FAMILIES[name].stages
    cfg = _compose(second, "derf", 2)
    assert cfg.init_from.source == str(reproduce.run_dir(first, "derf", 2))
    assert cfg.experiment_name == second and _compose(first, "derf", 2).run_dir == str(
        reproduce.run_dir(first, "derf", 2)
    )


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_runner_keeps_order_skips_finished_runs_and_blocks_after_a_failure(tmp_path, capsys):
    Job = reproduce.Job
    order = tmp_path / "order.txt"

    def step(tag: str) -> list[str]:
        return _python(f"open({str(order)!r}, 'a').write({tag!r} + '\\n')")

    done = tmp_path / "done.json"
    done.write_text("{}")
    first = Job("first", step("first"), tmp_path / "logs/first.log")
    second = Job("second", step("second"), tmp_path / "logs/second.log", [first])
    finished = Job("finished", step("finished"), tmp_path / "logs/finished.log", done_if=done)
    broken = Job("broken", _python("import sys; print('boom'); sys.exit(3)"), tmp_path / "logs/broken.log")
    after_broken = Job("after broken", step("after"), tmp_path / "logs/after.log", [broken])
    after_that = Job("after that", step("later"), tmp_path / "logs/later.log", [after_broken])
    jobs = [second, after_that, after_broken, first, finished, broken]  # out of order on purpose
    reproduce.execute(jobs, workers=2, threads=1)
    assert order.read_text().split() == ["first", "second"]
    statuses = {j.name: j.status for j in jobs}
    assert statuses == {
        "first": "ok", "second": "ok", "finished": "skipped",
        "broken": "failed", "after broken": "blocked", "after that": "blocked",
    }  # fmt: skip
    assert "boom" in broken.log.read_text() and broken.log.read_text().startswith("$ ")
    out = capsys.readouterr().out
    assert "[6/6]" in out and "failed  broken" in out and str(broken.log) in out


def _fake_run(root: Path, experiment: str, norm: str, seed: int, results: dict) -> None:
    path = root / experiment / norm / f"seed{seed}"
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(
        yaml.safe_dump(
            {"experiment_name": experiment, "norm": {"name": norm, "tag": norm}, "seed": seed, "model": {"name": "m"}}
        )
    )
    (path / "results.json").write_text(json.dumps({"steps": 10, **results}))


def test_report_puts_seed_means_beside_the_paper_row(tmp_path):
    runs = tmp_path / "runs"
    for seed, (ln, dyt, derf) in enumerate([(80.0, 78.0, 81.0), (82.0, 80.0, 83.0)]):
        for norm, value in (("layernorm", ln), ("dyt", dyt), ("derf", derf)):
            _fake_run(runs, "cpu/vit_digits", norm, seed, {"val/top1": value, "headline_metric": "val/top1"})
    _fake_run(runs, "cpu/llama_stdlib", "rmsnorm", 0, {"val/loss": 5.0})
    _fake_run(runs, "cpu/llama_stdlib", "dyt", 0, {"val/loss": 5.25, "diverged_at_step": None})
    _fake_run(runs, "cpu/llama_stdlib", "derf", 0, {"val/loss": 9.0, "diverged_at_step": 7})  # left out
    out = tmp_path / "results"
    summary = reproduce.report(list(reproduce.FAMILIES), runs, out, "# header\n")  # families without runs: no row
    vit = next(line for line in summary.splitlines() if line.startswith("| ViT"))
    cells = [c.strip() for c in vit.split("|")[1:-1]]
    assert cells[2:7] == ["81.0 ± 1.4", "79.0 ± 1.4", "82.0 ± 1.4", "-2.0", "+1.0"]
    assert cells[7] == "ViT-B: layernorm 82.3 / 82.5 / 82.8" and cells[8] == "+0.2" and cells[9] == "2"
    llama = next(line for line in summary.splitlines() if line.startswith("| LLaMA"))
    cells = [c.strip() for c in llama.split("|")[1:-1]]
    assert cells[2:7] == ["5.000 (n=1)", "5.250 (n=1)", "–", "+0.250", "n/a"]
    assert cells[7] == "LLaMA 7B: rmsnorm 1.59 / 1.60 / –" and cells[8] == "+0.01"  # the paper's loss
    assert (out / "README.md").read_text().startswith("# header\n")
    table1 = (out / "table1.md").read_text()
    assert "| cpu/vit_digits | 10 | val/top1 | layernorm | 81.000 ± 1.414 | 79.000 ± 1.414 |" in table1
    assert (out / "table4.md").exists() and not (out / "table2.md").exists()
    assert len(summary.splitlines()) == 2 + 2


def test_bad_arguments_name_what_is_allowed(capsys):
    with pytest.raises(SystemExit):
        reproduce.main(["--only", "vit,bert"])
    assert "unknown family bert; choose from vit, convnext" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        reproduce.main(["--seeds", "0,one"])
    assert "--seeds takes comma-separated integers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        reproduce.main(["--norms", "dyt,tanhnorm"])
    assert "unknown norm tanhnorm; choose from " in capsys.readouterr().err


def test_cpu_recipes_keep_their_demos_settings_except_what_they_say():
    vit, quickstart = _compose("cpu/vit_digits", "dyt", 0), _compose("quickstart", "dyt", 0)
    assert (vit.model, vit.optim, vit.trainer) == (quickstart.model, quickstart.optim, quickstart.trainer)
    convnext = _compose("cpu/convnext_digits", "dyt", 0)
    assert (convnext.model.name, convnext.optim, convnext.trainer) == (
        "convnext_digits",
        quickstart.optim,
        quickstart.trainer,
    )
    dit, demo = _compose("cpu/dit_digits", "dyt", 0), _compose("dit_digits", "dyt", 0)
    assert (dit.trainer.epochs, demo.trainer.epochs) == (60, 110) and dit.task == demo.task
    llama = _compose("cpu/llama_stdlib", "rmsnorm", 0)
    assert (llama.model.name, llama.model.dim, llama.data.vocab_size, llama.data.seq_len) == (
        "llama_cpu",
        128,
        2048,
        128,
    )
    assert (llama.trainer.max_steps, llama.trainer.global_batch, llama.optim.schedule.warmup_steps) == (300, 16, 30)
    assert (llama.optim.lr, llama.optim.weight_decay, llama.trainer.clip_grad) == (1e-3, 0.1, 1.0)
    for cpu, original in [
        ("cpu/wav2vec2_speech", "wav2vec2_speech_demo"),
        ("cpu/caduceus_finetune", "dna_demo_caduceus_finetune"),
    ]:
        a, b = _compose(cpu, "dyt", 0), _compose(original, "dyt", 0)
        assert (a.model, a.optim, a.trainer, a.task) == (b.model, b.optim, b.trainer, b.task)


def test_every_invocation_is_recorded_and_listed_in_the_report(tmp_path, monkeypatch):
    """Two invocations (the second skips what the first finished) both appear in results/cpu/README.md,
    with their wall time; --report-only adds none. Stand-in training: a finished run is faked."""
    monkeypatch.chdir(tmp_path)
    invocations = []

    def fake_execute(jobs, workers, threads):
        invocations.append(len(jobs))
        for job in jobs:  # the first invocation trains everything, the second finds it finished
            job.status, job.seconds = ("ok", 30.0) if len(invocations) == 1 else ("skipped", 0.0)

    monkeypatch.setattr(reproduce, "execute", fake_execute)
    assert reproduce.main(["--only", "vit", "--seeds", "0", "--norms", "dyt"]) == 0
    assert reproduce.main(["--only", "vit", "--seeds", "0", "--norms", "dyt"]) == 0
    assert reproduce.main(["--report-only"]) == 0
    assert invocations == [2, 2]  # layernorm and dyt; --report-only runs nothing
    text = (tmp_path / "results/cpu/README.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("- `python scripts/reproduce_cpu.py --only vit")]
    assert len(lines) == 2
    assert "2 runs (1 run-minutes), 0 finished earlier, 0 failed" in lines[0]
    assert "0 runs (0 run-minutes), 2 finished earlier, 0 failed" in lines[1]
    assert "Machine: " in text and "CPU cores" in text


def test_protocols_run_in_their_own_roots_and_chain_their_own_stages(monkeypatch):
    calibrated = reproduce.protocol_variants("calibrated", [FAMILIES["hyena"]], reproduce.NORMS)
    assert len(calibrated) == 1 and calibrated[0]["norms"] == reproduce.NORMS  # no baseline runs: it is the paper's
    v = calibrated[0]
    jobs = reproduce.plan([FAMILIES["hyena"]], [1], "local", [], reproduce.NORMS, v["root"], v["norms"], v["overrides"])
    assert [j.name for j in jobs][:2] == [
        "cpu_calibrated_cpu/hyena_pretrain dyt seed1",
        "cpu_calibrated_cpu/hyena_finetune dyt seed1",
    ]
    finetune = jobs[1]
    assert "norm.alpha_init=calibrate" in finetune.argv
    assert "init_from.source=runs/cpu_calibrated/cpu/hyena_pretrain/dyt/seed1" in finetune.argv
    assert finetune.done_if == Path("runs/cpu_calibrated/cpu/hyena_finetune/dyt/seed1/results.json")
    monkeypatch.setattr(reproduce, "recipe_lr", lambda experiment: 2e-3)
    (grid,) = reproduce.protocol_variants("lr_grid", [FAMILIES["vit"]], reproduce.NORMS)  # x1 is the paper's runs
    assert grid["root"] == Path("runs/cpu_lr3") and grid["overrides"] == {"cpu/vit_digits": ["optim.lr=0.006"]}


def test_the_combined_table_takes_each_norms_best_grid_point_and_the_calibrated_runs(tmp_path):
    stat = lambda mean, n=2: {"values": None, "mean": mean, "std": 0.5, "n": n}  # noqa: E731
    reproduce.update_summary(tmp_path, "paper", {"vit": {"layernorm": stat(96.0, 3), "dyt": stat(89.0, 3)}})
    reproduce.update_summary(tmp_path, "lr3", {"vit": {"layernorm": stat(94.0), "dyt": stat(95.0)}})
    summary = reproduce.update_summary(tmp_path, "calibrated", {"vit": {"dyt": stat(90.0), "derf": stat(91.0, 1)}})
    assert set(summary) == {"paper", "lr3", "calibrated"}  # merged, not replaced
    paper = yaml.safe_load((ROOT / "results/paper.yaml").read_text())
    table = reproduce.combined_table(summary, paper, (FAMILIES["vit"],))
    rows = table.splitlines()[2:]
    assert "96.0 ± 0.5 | 89.0 ± 0.5 | – | -7.0 |" in rows[0]
    assert "96.0 ± 0.5 (×1) | 95.0 ± 0.5 (×3) | – | -1.0 |" in rows[1]  # each norm's own best point
    assert "96.0 ± 0.5 (as above) | 90.0 ± 0.5 | 91.0 (1 seed) | -6.0 | -5.0 |" in rows[2]  # one seed says so
    assert rows[3].startswith("| | | paper, full scale (ViT-B) | 82.3 | 82.5 | 82.8 | +0.2 |")


def test_cpu_recipe_headers_state_what_they_drop_and_it_is_so():
    """Each CPU recipe's header names what it departs from in the paper's recipe; the composed config
    departs in exactly that way (so a header cannot drift from the values)."""
    from hydra import compose, initialize_config_dir

    def cfg(name):
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
            return compose("train", overrides=[f"experiment=cpu/{name}", "norm=dyt"])

    def header(name):
        return (ROOT / "configs/experiment/cpu" / f"{name}.yaml").read_text().split("defaults:")[0]

    llama = cfg("llama_stdlib")
    assert llama.optim.schedule.warmup_combine == "sequential" and llama.task.decay_all_params is False
    assert "warmup_combine sequential" in header("llama_stdlib") and "decay_all_params false" in header("llama_stdlib")
    for name in ("vit_digits", "convnext_digits"):
        c = cfg(name)
        assert (c.task.mixup, c.task.cutmix, c.task.label_smoothing, c.trainer.ema_decay) == (0.0, 0.0, 0.0, None)
        assert c.model.drop_path_rate == 0.0 and c.data.name == "digits"  # digits: no augmentation pipeline
        for word in ("RandAug", "random erasing", "mixup", "cutmix", "label smoothing", "EMA", "drop path"):
            assert word in header(name), (name, word)
    for name in ("mae_digits_finetune", "dino_digits_finetune"):
        assert cfg(name).task.layer_decay == 0.75 and "0.75 (FINETUNE.md ViT-B: 0.65" in header(name)
