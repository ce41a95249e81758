"""Sweep tables and figures (dyt/results/sweeps.py) on synthetic run dirs, the sweep recipes, and a
2-point version of the small-width alpha_init study on real data."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dyt.results.runs import find_runs
from dyt.results.sweeps import (
    DIVERGED,
    OK,
    UNFINISHED,
    alpha_init,
    alpha_table,
    plot_alpha_grid,
    plot_width_alpha,
    status,
    sweep_figures,
)

ROOT = Path(__file__).resolve().parents[1]


def make_run(
    root: Path, name: str, norm: dict, *, width=64, lr=3e-3, seed=0, top1=None, losses=(2.0, 1.0), done=True
) -> Path:
    """A run dir as the trainer leaves it: config.yaml, metrics.jsonl, results.json when finished."""
    path = root / name / norm["tag"] / f"seed{seed}"
    path.mkdir(parents=True)
    config = {
        "experiment_name": "sweeps/demo",
        "model": {"name": "vit_digits", "embed_dim": width},
        "norm": {"sites": {}, **norm},
        "optim": {"lr": lr},
        "seed": seed,
    }
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [{"step": i + 1, "train/loss": loss} for i, loss in enumerate(losses)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if done:
        results = {"headline_metric": "val/top1", "val/top1": top1, "val/loss": losses[-1]}
        (path / "results.json").write_text(json.dumps(results))
    return path


def dyt(alpha, **sites):
    return {"name": "dyt", "tag": "dyt", "alpha_init": alpha, "sites": sites}


LN = {"name": "layernorm", "tag": "layernorm"}


@pytest.fixture
def sweep(tmp_path):
    """widths 32, 64 x alpha 0.5, 1.0 x 2 seeds, one diverged and one unfinished run, LN references."""
    for width in (32, 64):
        for alpha in (0.5, 1.0):
            for seed in (0, 1):
                top1 = width + 10 * alpha + seed  # 32: 37/38 at 0.5, 42/43 at 1.0
                make_run(tmp_path, f"w{width}a{alpha}", dyt(alpha), width=width, seed=seed, top1=top1)
        make_run(tmp_path, f"w{width}ln", LN, width=width, top1=width + 20.0)
    make_run(tmp_path, "w64a2", dyt(2.0), width=64, losses=(2.0, None), done=False)  # NaN logged as null
    make_run(tmp_path, "w64a3", dyt(3.0), width=64, done=False)
    return find_runs(tmp_path)


def test_status_and_alpha_of_runs(sweep):
    by_name = {r.path.parent.parent.name: r for r in sweep}
    assert [status(by_name[n]) for n in ("w64a0.5", "w64a2", "w64a3")] == [OK, DIVERGED, UNFINISHED]
    assert alpha_init(by_name["w64ln"]) is None and alpha_init(by_name["w64a1.0"]) == 1.0


def test_alpha_of_a_run_without_one_in_its_config_is_what_the_model_built(tmp_path):
    built = make_run(tmp_path, "model_default", dyt(None))  # e.g. a narrow ViT's width-dependent default
    records = [{"site": "attn", "alpha_init": 2.0}, {"site": "ffn", "alpha_init": 1.5}, {"site": "final"}]
    (built / "resolved.json").write_text(json.dumps({"norms": records}))
    make_run(tmp_path, "class_default", dyt(None))  # no resolved.json: the class default
    runs = {r.path.parent.parent.name: r for r in find_runs(tmp_path)}
    assert (alpha_init(runs["model_default"]), alpha_init(runs["model_default"], "ffn")) == (2.0, 1.5)
    assert alpha_init(runs["class_default"]) == 0.5


def test_alpha_table_means_seeds_and_marks_divergence(sweep):
    table = alpha_table(sweep)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in table.splitlines()[2:4]}
    assert rows["vit_digits@32"] == ["37.5 +- 0.7", "42.5 +- 0.7", "-", "52.0", "-9.5"]
    assert rows["vit_digits@64"][2] == "diverged" and rows["vit_digits@64"][4] == "-9.5"
    assert "alpha_init=3" not in table  # unfinished runs are left out
    assert "final val/top1" in table


def test_alpha_grid_reads_per_site_values(tmp_path):
    for attn in (0.5, 1.0):
        for other in (0.2, 0.5):
            sites = {"attn": {"alpha_init": attn}, "ffn": {"alpha_init": other}}
            make_run(tmp_path, f"a{attn}o{other}", dyt(None, **sites), losses=(3.0, attn + other))
    runs = find_runs(tmp_path)
    assert sorted((alpha_init(r, "attn"), alpha_init(r, "ffn")) for r in runs)[0] == (0.5, 0.2)
    out = plot_alpha_grid(runs, tmp_path / "grid.png")
    assert out.stat().st_size > 1000
    assert [p.name for p in sweep_figures(runs, tmp_path / "figs")] == ["sweeps_demo_alpha_grid.png"]


def test_width_alpha_gap_map(sweep, tmp_path):
    assert plot_width_alpha(sweep, tmp_path / "gap.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="no runs to plot"):
        plot_width_alpha([r for r in sweep if r.norm == "layernorm"], tmp_path / "none.png")


def test_sweep_figures_pick_the_figures_a_sweep_supports(sweep, tmp_path):
    assert [p.name for p in sweep_figures(sweep, tmp_path)] == ["sweeps_demo_alpha_curves.png"]
    make_run(tmp_path / "more", "lr", dyt(0.5), lr=1e-3, top1=30.0)
    runs = sweep + find_runs(tmp_path / "more")
    names = [p.name for p in sweep_figures(runs, tmp_path / "figs")]
    assert names == ["sweeps_demo_alpha_curves.png", "sweeps_demo_stability.png"]
    assert all((tmp_path / "figs" / n).stat().st_size > 1000 for n in names)


def _compose(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def recipe(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / "experiment" / f"{name}.yaml").read_text())


def test_table9_recipes():
    paper = yaml.safe_load((ROOT / "results" / "paper.yaml").read_text())["table9"]["rows"]
    for model in ("vit_b", "vit_l"):
        cfg = recipe(f"paper/{model}_in1k_table9")
        assert cfg["defaults"][0] == f"/experiment/paper/{model}_in1k"  # the Table 1 recipe underneath
        assert cfg["paper_ref"] == {"table": "table9", "row": model}
        params = cfg["hydra"]["sweeper"]["params"]
        assert params["norm"] == "layernorm,normfree/fixup,normfree/skipinit,normfree/sigma_reparam,dyt"
        assert [float(v) for v in params["optim.lr"].split(",")] == [6e-3, 4e-3, 2e-3, 1e-3, 5e-4]
        tags = {choice.split("/")[-1] for choice in params["norm"].split(",")}  # normfree/fixup's tag: fixup
        assert tags == set(paper[model]["values"])  # every column of the row
    fixup = _compose("experiment=paper/vit_b_in1k_table9", "norm=normfree/fixup")
    assert (fixup.norm.name, fixup.norm.tag, fixup.model.residual_init) == ("identity", "fixup", "fixup")
    assert fixup.optim.lr == 4e-3 and fixup.model.name == "vit_b"
    sigma = _compose("experiment=paper/vit_l_in1k_table9", "norm=normfree/sigma_reparam")
    assert sigma.model.sigma_reparam is True and sigma.norm.tag == "sigma_reparam"


MAE_TABLE9_GRID = [2e-4, 1.5e-4, 7.5e-5, 3.75e-5, 1.875e-5]  # MAE base lr: tuned 2e-4, original 1.5e-4, 8x lower


def _resolved(*overrides) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        return OmegaConf.to_container(compose("train", overrides=list(overrides)), resolve=True)


def test_mae_table9_recipes_search_the_pretraining_lr():
    paper = yaml.safe_load((ROOT / "results" / "paper.yaml").read_text())["table9"]["rows"]
    methods = "layernorm,normfree/fixup,normfree/skipinit,normfree/sigma_reparam,dyt"
    for model in ("vit_b", "vit_l"):
        pretrain, finetune = recipe(f"paper/mae_{model}_table9_pretrain"), recipe(f"paper/mae_{model}_table9_finetune")
        assert pretrain["defaults"][0] == f"/experiment/paper/mae_{model}_pretrain"  # Table 2's stages underneath
        assert finetune["defaults"][0] == f"/experiment/paper/mae_{model}_finetune"
        assert "paper_ref" not in pretrain and finetune["paper_ref"] == {"table": "table9", "row": f"mae_{model}"}
        swept, picked = pretrain["hydra"]["sweeper"]["params"], finetune["hydra"]["sweeper"]["params"]
        assert swept["norm"] == picked["norm"] == methods and set(swept) == {"norm", "optim.lr"}
        assert [float(v) for v in swept["optim.lr"].split(",")] == MAE_TABLE9_GRID
        assert [float(v) for v in picked["pretrain_lr"].split(",")] == MAE_TABLE9_GRID  # one fine-tune per stage-1 lr
        assert {choice.split("/")[-1] for choice in methods.split(",")} == set(paper[f"mae_{model}"]["values"])


@pytest.mark.parametrize("method", ["fixup", "sigma_reparam"])
def test_mae_table9_stages_are_table2s_plus_the_lr_lookup(method):
    """Each stage composes to Table 2's MAE ViT-B stage with the same overrides except for what Table 9
    adds; the fine-tune finds the pretraining run by norm, seed and lr, however the lr was spelt, and
    both stages get the method's model options."""
    from dyt.engine.identity import ABSENT, config_diff

    norm = f"norm=normfree/{method}"
    pretrain = _resolved("experiment=paper/mae_vit_b_table9_pretrain", norm, "seed=3", "optim.lr=2e-4")
    table2 = _resolved("experiment=paper/mae_vit_b_pretrain", norm, "seed=3", "optim.lr=2e-4")
    assert config_diff(table2, pretrain, ()) == {
        "experiment_name": ("paper/mae_vit_b_pretrain", "paper/mae_vit_b_table9_pretrain"),
        "run_dir": (table2["run_dir"], f"runs/paper/mae_vit_b_table9_pretrain+optim.lr=0.0002/{method}/seed3"),
    }
    assert pretrain == _resolved("experiment=paper/mae_vit_b_table9_pretrain", norm, "seed=3", "optim.lr=0.0002")

    finetune = _resolved("experiment=paper/mae_vit_b_table9_finetune", norm, "seed=3", "pretrain_lr=2e-4")
    table2 = _resolved("experiment=paper/mae_vit_b_finetune", norm, "seed=3")
    made_by = (
        f"python train.py experiment=paper/mae_vit_b_table9_pretrain norm={method} optim.lr=0.0002 seed=3 "
        f"data.root=/path/to/imagenet (norm=normfree/{method} for fixup, skipinit and sigma_reparam)"
    )
    assert config_diff(table2, finetune, ("run_dir",)) == {
        "experiment_name": ("paper/mae_vit_b_finetune", "paper/mae_vit_b_table9_finetune"),
        "paper_ref.table": ("table2", "table9"),  # the same row name, mae_vit_b, in both tables
        "pretrain_lr": (ABSENT, 2e-4),
        "init_from.source": (f"runs/paper/mae_vit_b_pretrain/{method}/seed3", pretrain["run_dir"]),
        "init_from.made_by": (table2["init_from"]["made_by"], made_by),
    }
    option = ("residual_init", "fixup") if method == "fixup" else ("sigma_reparam", True)
    assert pretrain["model"][option[0]] == finetune["model"][option[0]] == option[1]
    assert (pretrain["model"]["name"], finetune["model"]["name"]) == ("mae_vit_b", "vit_b")
    assert finetune["optim"]["lr"] == 5e-4  # FINETUNE.md's lr for every method: the search is in stage 1


def test_table12_13_recipes():
    for model in ("vit_b", "vit_l", "convnext_b", "convnext_l"):
        lr = recipe(f"paper/{model}_in1k_table12")
        assert lr["paper_ref"] == {"table": "table12", "row": model}
        assert lr["hydra"]["sweeper"]["params"] == {"norm": "layernorm,dyt", "optim.lr": "2e-3,4e-3,6e-3"}
        alpha = recipe(f"paper/{model}_in1k_table13")
        assert alpha["paper_ref"] == {"table": "table13", "row": model}
        assert alpha["hydra"]["sweeper"]["params"] == {"norm.alpha_init": "0.3,0.5,0.8,1.0,1.2"}
        assert alpha["defaults"][:2] == [f"/experiment/paper/{model}_in1k", {"override /norm": "dyt"}]
    cfg = _compose("experiment=paper/vit_l_in1k_table13")
    assert cfg.norm.name == "dyt" and cfg.model.name == "vit_l" and cfg.paper_ref.table == "table13"


def test_llama_alpha_grid_ties_final_to_ffn():
    cfg = _compose("experiment=sweeps/llama_alpha_grid", "norm.sites.ffn.alpha_init=0.3")
    assert (cfg.norm.sites.attn.alpha_init, cfg.norm.sites.final.alpha_init) == (1.0, 0.3)
    assert set(cfg.hydra.sweeper.params) == {"norm.sites.attn.alpha_init", "norm.sites.ffn.alpha_init"}


@pytest.mark.slow
def test_two_point_alpha_init_study(tmp_path):
    """The study's command on real digits, 2 points (alpha_init 0.5 and 2.0 at width 32, a few steps):
    both runs finish and the table and figure come out."""
    cmd = [
        sys.executable, str(ROOT / "train.py"), "-m", "experiment=sweeps/alpha_init_small_width", "norm=dyt",
        "model.embed_dim=32", "+model.depth=1", "norm.alpha_init=0.5,2.0", "norm.impl=eager", "trainer.epochs=1",
        "trainer.max_steps=2", "trainer.log_every_steps=1",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    subprocess.run(cmd, cwd=tmp_path, env=env, check=True, capture_output=True, timeout=300)  # runs/ in tmp_path
    runs = find_runs(tmp_path / "runs")
    assert {alpha_init(r) for r in runs} >= {0.5, 2.0}
    assert all(status(r) == OK and math.isfinite(r.results["val/loss"]) for r in runs)
    assert "alpha_init=0.5" in alpha_table(runs)


@pytest.mark.slow
def test_two_point_llama_study_through_the_script(tmp_path):
    """scripts/analysis/alpha_init_study.sh for the LLaMA study on real stdlib text, 2 DyT points and
    the RMSNorm reference at width 32, two steps each: the runs land in the calling directory and the
    loss table and the width x alpha_init map come out, RMSNorm being the reference."""
    env = {
        **os.environ, "STUDY": "llama", "WIDTHS": "32", "ALPHAS": "0.5,2.0", "SEEDS": "0", "LAUNCHER": "basic",
        "OUT": str(tmp_path / "study"), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
    }  # fmt: skip
    overrides = ["trainer.max_steps=2", "trainer.eval_every_steps=2", "task.eval_max_sequences=4"]
    script = ROOT / "scripts/analysis/alpha_init_study.sh"
    subprocess.run(
        ["bash", str(script), *overrides], cwd=tmp_path, env=env, check=True, capture_output=True, timeout=300
    )
    runs = find_runs(tmp_path / "runs")
    assert sorted((r.norm, alpha_init(r)) for r in runs) == [("dyt", 0.5), ("dyt", 2.0), ("rmsnorm", None)]
    table = (tmp_path / "study.md").read_text()
    assert "| llama_cpu@32 |" in table and "rmsnorm" in table and "best DyT - rmsnorm" in table
    assert (tmp_path / "study_gap.png").exists() and (tmp_path / "study_curves_lr0.001.png").exists()


def test_alpha_report_family_table_compares_the_two_alpha_inits(tmp_path, monkeypatch):
    """scripts/analysis/alpha_init_report.py's ViT-family table: per recipe, LN and each norm at
    alpha_init 0.5 (runs/cpu) and 2.0 (runs/cpu_alpha2.0), mean +- std over the seeds present."""
    spec = importlib.util.spec_from_file_location("alpha_init_report", ROOT / "scripts/analysis/alpha_init_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    monkeypatch.chdir(tmp_path)
    for root, norm, values in [
        ("cpu", "layernorm", (96.0, 98.0)),
        ("cpu", "dyt", (89.0,)),
        ("cpu_alpha2.0", "dyt", (95.0, 96.0)),
    ]:
        for seed, value in enumerate(values):
            path = tmp_path / "runs" / root / "vit_digits" / norm / f"seed{seed}"
            path.mkdir(parents=True)
            (path / "results.json").write_text(json.dumps({"val/top1": value}))
    row = next(line for line in report.family_table().splitlines() if line.startswith("| ViT, supervised"))
    assert [c.strip() for c in row.split("|")[3:-1]] == [
        "97.0 +- 1.4 (n=2)", "89.0 +- 0.0 (n=1)", "95.5 +- 0.7 (n=2)", "-", "-",
    ]  # fmt: skip
