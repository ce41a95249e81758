"""Run dirs -> paper-vs-ours tables and loss-curve figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dyt.results.plots import plot_curves
from dyt.results.runs import find_runs, mean_std
from dyt.results.tables import build_tables, load_paper, write_tables

PAPER = Path(__file__).resolve().parents[1] / "results" / "paper.yaml"


def _fake_run(
    root: Path,
    experiment: str,
    norm: str,
    seed: int,
    results: dict | None,
    paper_ref=None,
    losses=(2.0, 1.0),
    lr: float = 4e-3,
    dirname: str | None = None,
    extra_lines: tuple[dict, ...] = (),
) -> Path:
    run = root / (dirname or experiment) / norm / f"seed{seed}"
    run.mkdir(parents=True)
    cfg = {
        "experiment_name": experiment,
        "seed": seed,
        "model": {"name": "vit_b"},
        "norm": {"name": norm, "tag": norm},
        "paper_ref": paper_ref,
        "optim": {"lr": lr},
        "run_dir": str(run),
    }
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    lines = [json.dumps({"step": i, "train/loss": v}) for i, v in enumerate(losses)]
    lines += [json.dumps(line) for line in extra_lines]
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 9, "train/lo')  # torn last line
    if results is not None:
        (run / "results.json").write_text(json.dumps(results))
    # Hydra's own config copy must not be taken for a run.
    (run / "hydra" / ".hydra").mkdir(parents=True)
    (run / "hydra" / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run


def test_paper_yaml_has_every_main_table_with_its_numbers():
    paper = load_paper(PAPER)
    assert paper["table1"]["rows"]["vit_b"]["values"] == {"layernorm": 82.3, "dyt": 82.5, "derf": 82.8, "rmsnorm": 82.4}
    assert paper["table3"]["rows"]["dit_xl2"]["values"]["dyt"] == 20.83
    assert paper["table4"]["rows"]["llama2_7b"]["loss"] == {"rmsnorm": 1.59, "dyt": 1.60}
    assert paper["table10"]["rows"]["llama2_13b"]["attn"] == 0.6
    assert paper["table14"]["rows"]["dyt"]["training_model"] == 39.1
    for table in [f"table{i}" for i in (1, 2, 3, 4, 5, 6, 9, 12, 13, 14)]:
        assert paper[table]["rows"], table


def test_caduceus_files_its_869_under_rmsnorm_in_tables_6_12_and_13():
    """[P2] Table 6's "LN" column for Caduceus is its RMSNorm ([DERF] Tables 11, 25: LN 87.0, RMSNorm
    86.9); Tables 12 and 13 repeat that run, so they file it the same way."""
    paper = load_paper(PAPER)
    assert paper["table6"]["rows"]["caduceus"]["values"]["rmsnorm"] == 86.9
    assert paper["table6"]["rows"]["caduceus"]["values"]["layernorm"] == 87.0
    for table in ("table12", "table13"):
        row = paper[table]["rows"]["caduceus"]
        assert (row["baseline"], row["rmsnorm"], row["dyt"]) == ("rmsnorm", 86.9, 86.9), table
        assert "layernorm" not in row and "layernorm_tuned" not in row, table


def test_table_puts_ours_beside_the_paper_with_mean_std_and_difference(tmp_path):
    ref = {"table": "table1", "row": "vit_b"}
    _fake_run(tmp_path, "paper/vit_b_in1k", "layernorm", 0, {"val/top1": 82.0}, ref)
    _fake_run(tmp_path, "paper/vit_b_in1k", "layernorm", 1, {"val/top1": 82.2}, ref)
    _fake_run(tmp_path, "paper/vit_b_in1k", "dyt", 0, {"val/top1": 82.6}, ref)
    _fake_run(tmp_path, "paper/vit_b_in1k", "dyt", 1, None, ref)  # unfinished: left out
    _fake_run(tmp_path, "quickstart", "dyt", 0, {"val/top1": 97.5, "headline_metric": "val/top1", "steps": 660})
    runs = find_runs(tmp_path)
    assert len(runs) == 5, "hydra/.hydra/config.yaml copies are not runs"
    _fake_run(tmp_path, "dit_digits", "dyt", 0, {"fid": 9.4, "val/loss": 0.08, "headline_metric": "fid"})
    tables = build_tables(find_runs(tmp_path), load_paper(PAPER))
    assert set(tables) == {"table1", "experiments_val_top1", "experiments_fid"}, "one metric per table"
    row = next(line for line in tables["table1"].splitlines() if line.startswith("| ViT-B"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    header = [c.strip() for c in tables["table1"].splitlines()[4].strip("|").split("|")]
    got = dict(zip(header, cells))
    assert got["layernorm (ours)"] == "82.10 ± 0.14 (n=2)"
    assert got["layernorm (paper)"] == "82.30"
    assert got["dyt (ours)"] == "82.60" and got["dyt (paper)"] == "82.50"
    assert got["dyt − layernorm (ours / paper)"] == "+0.50 / +0.20"
    assert "| quickstart (vit_b) [660 steps] | 97.50 |" in tables["experiments_val_top1"]
    assert "paper" not in tables["experiments_val_top1"].split("\n")[4], "no paper columns where the paper has no row"
    written = write_tables(tables, tmp_path / "out")
    assert sorted(p.name for p in written) == ["experiments_fid.md", "experiments_val_top1.md", "table1.md"]
    assert "9.40" in tables["experiments_fid"] and "dit_digits" not in tables["experiments_val_top1"]


def test_curves_skip_torn_lines_and_plot_one_png_per_experiment(tmp_path):
    _fake_run(tmp_path, "quickstart", "dyt", 0, {"val/top1": 90.0}, losses=(2.0, 1.5, 1.0))
    _fake_run(tmp_path, "quickstart", "layernorm", 0, {"val/top1": 91.0})
    runs = find_runs(tmp_path)
    assert runs[0].curve("train/loss") == ([0, 1, 2], [2.0, 1.5, 1.0])
    paths = plot_curves(runs, tmp_path / "figures")
    assert [p.name for p in paths] == ["quickstart_curves.png"] and paths[0].stat().st_size > 1000


def test_mean_std():
    assert mean_std([1.0]) == (1.0, 0.0)
    assert mean_std([1.0, 3.0]) == pytest.approx((2.0, 2**0.5))


def test_runs_of_different_recipes_are_never_averaged_as_seeds(tmp_path):
    """Two seeds of the recipe, and one run with another lr (its own run dir): three rows' worth of
    evidence, not a mean over three seeds."""
    res = {"val/top1": 90.0, "headline_metric": "val/top1", "steps": 100}
    _fake_run(tmp_path, "quickstart", "dyt", 0, res)
    _fake_run(tmp_path, "quickstart", "dyt", 1, {**res, "val/top1": 92.0})
    _fake_run(tmp_path, "quickstart", "dyt", 0, {**res, "val/top1": 50.0}, lr=0.1, dirname="quickstart+optim.lr=0.1")
    table = build_tables(find_runs(tmp_path), load_paper(PAPER))["experiments_val_top1"]
    assert "| quickstart (vit_b) [100 steps] | 91.00 ± 1.41 (n=2) |" in table
    assert "| quickstart (vit_b) [100 steps; optim.lr=0.1] | 50.00 |" in table


def test_fine_tunes_from_each_norms_own_pretraining_share_a_row(tmp_path):
    res = {"val/acc": 80.0, "headline_metric": "val/acc", "steps": 10}
    for norm in ("layernorm", "dyt"):
        run = _fake_run(tmp_path, "gb", norm, 0, res)
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg["init_from"] = {"source": f"runs/pretrain/{norm}/seed0", "made_by": f"python train.py norm={norm}"}
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert {r.variant for r in find_runs(tmp_path)} == {""}


def test_table9_methods_are_columns_of_one_row_and_ln_with_sigma_reparam_is_a_variant(tmp_path):
    """norm=normfree/<method> sets a model option that its tag names (model.residual_init=fixup,
    model.sigma_reparam=true): that is the column, not another recipe. LayerNorm with sigma-Reparam on
    top keeps its tag, layernorm, so it gets a row of its own."""
    ref = {"table": "table9", "row": "vit_b"}

    def run(tag: str, top1: float, name: str = "identity", dirname: str | None = None, **model) -> None:
        res = {"val/top1": top1, "headline_metric": "val/top1"}
        path = _fake_run(tmp_path, "paper/vit_b_in1k_table9", tag, 0, res, paper_ref=ref, dirname=dirname)
        cfg = yaml.safe_load((path / "config.yaml").read_text())
        cfg["norm"]["name"] = name
        cfg["model"].update(model)
        (path / "config.yaml").write_text(yaml.safe_dump(cfg))

    run("layernorm", 82.0, name="layernorm")
    run("dyt", 83.0, name="dyt")
    run("fixup", 77.0, residual_init="fixup")
    run("skipinit", 74.0, residual_init="skipinit")
    run("sigma_reparam", 82.5, sigma_reparam=True)
    run("layernorm", 81.0, name="layernorm", dirname="ln_sigma", sigma_reparam=True)
    variants = {(r.norm, r.variant) for r in find_runs(tmp_path)}
    assert {v for _, v in variants} == {"", "model.sigma_reparam=True"}
    assert ("layernorm", "model.sigma_reparam=True") in variants
    cells = _cells(build_tables(find_runs(tmp_path), load_paper(PAPER))["table9"], "| ViT-B |")
    assert [cells[f"{tag} (ours)"] for tag in ("layernorm", "fixup", "skipinit", "sigma_reparam", "dyt")] == [
        "82.00",
        "77.00",
        "74.00",
        "82.50",
        "83.00",
    ]


def _cells(table: str, row_start: str) -> dict[str, str]:
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("| model"))
    row = next(line for line in lines if line.startswith(row_start))
    return dict(zip([c.strip() for c in header.strip("|").split("|")], [c.strip() for c in row.strip("|").split("|")]))


def test_diverged_runs_show_best_accuracy_before_failing_as_the_paper_does(tmp_path):
    ref = {"table": "table7", "row": "vit_s"}
    evals = ({"step": 10, "val/top1": 40.0}, {"step": 20, "val/top1": 58.0}, {"step": 30, "val/top1": 55.0})
    _fake_run(tmp_path, "paper/table7_vit_s", "dyt_identity", 0, {"val/top1": 55.0, "diverged_at_step": 31}, ref,
              extra_lines=evals)  # fmt: skip
    _fake_run(
        tmp_path, "paper/table7_vit_s", "dyt", 0, {"val/top1": 80.0, "val/top1_ema": 80.4}, ref, extra_lines=evals
    )
    table = build_tables(find_runs(tmp_path), load_paper(PAPER))["table7"]
    got = _cells(table, "| ViT-S")
    assert got["dyt_identity (ours)"] == "58.00 → failed (step 31)"
    assert got["dyt_identity (paper)"] == "58.50 → failed"
    assert got["dyt (ours)"] == "80.00 (EMA 80.40)", "EMA shown where it differs; best (58) is below final"
    assert "raw model at the final evaluation" in table


def test_best_epoch_is_shown_where_it_differs_from_the_final_one(tmp_path):
    evals = ({"step": 10, "val/top1": 91.5}, {"step": 20, "val/top1": 90.0})
    res = {"val/top1": 90.0, "headline_metric": "val/top1", "headline_mode": "max"}
    _fake_run(tmp_path, "quickstart", "dyt", 0, res, extra_lines=evals)
    evals = ({"step": 10, "fid": 9.0}, {"step": 20, "fid": 12.0})
    _fake_run(tmp_path, "dit_digits", "dyt", 0, {"fid": 10.0, "headline_metric": "fid", "headline_mode": "min"},
              extra_lines=evals)  # fmt: skip
    tables = build_tables(find_runs(tmp_path), load_paper(PAPER))
    assert "| 90.00 (best 91.50) |" in tables["experiments_val_top1"]
    assert "| 10.00 (best 9.00) |" in tables["experiments_fid"], "best of a lower-is-better metric is its minimum"


def test_table4_shows_score_with_three_decimals_and_final_training_loss(tmp_path):
    ref = {"table": "table4", "row": "llama2_7b"}
    _fake_run(tmp_path, "paper/llama2_7b", "rmsnorm", 0, {"lm_eval/score": 0.5131}, ref, losses=(3.0, 1.62))
    _fake_run(tmp_path, "paper/llama2_7b", "dyt", 0, {"lm_eval/score": 0.5292}, ref, losses=(3.0, 1.64))
    table = build_tables(find_runs(tmp_path), load_paper(PAPER))["table4"]
    score, loss = table.split("\n### ")
    got = _cells(score, "| LLaMA 7B")
    assert (got["rmsnorm (ours)"], got["rmsnorm (paper)"], got["dyt (ours)"]) == ("0.513", "0.513", "0.529")
    assert got["dyt − rmsnorm (ours / paper)"] == "+0.016 / –", "the paper writes an unchanged score as –"
    got = _cells(loss, "| LLaMA 7B")
    assert (got["rmsnorm (ours)"], got["rmsnorm (paper)"], got["dyt (ours)"]) == ("1.62", "1.59", "1.64")
    assert got["dyt − rmsnorm (ours / paper)"] == "+0.02 / +0.01" and "train/loss" in loss


def test_table6_caduceus_differences_are_against_rmsnorm_as_in_the_paper(tmp_path):
    for row in ("hyenadna", "caduceus"):
        _fake_run(tmp_path, f"paper/{row}", "dyt", 0, {"val/acc": 86.0}, {"table": "table6", "row": row})
    table = build_tables(find_runs(tmp_path), load_paper(PAPER))["table6"]
    assert _cells(table, "| Caduceus")["dyt − baseline (ours / paper)"] == "n/a / –"
    assert _cells(table, "| HyenaDNA (vs layernorm)")["dyt − baseline (ours / paper)"] == "n/a / –"
    assert "Caveat: Caduceus's DyT 86.9 cannot have come from the released DyT code" in table  # beside the row


def test_table8_is_filled_by_norm_tags_and_reuses_table7_vit_b_runs(tmp_path):
    for norm, acc in (("dyt_fixed_alpha", 81.0), ("dyt_hardtanh_fixed_alpha", 80.0)):
        _fake_run(tmp_path, "paper/table8_vit_b_fixed_alpha", norm, 0, {"val/top1": acc},
                  {"table": "table8", "row": "without_alpha"})  # fmt: skip
    _fake_run(tmp_path, "paper/table7_vit_b", "dyt", 0, {"val/top1": 82.0}, {"table": "table7", "row": "vit_b"})
    tables = build_tables(find_runs(tmp_path), load_paper(PAPER))
    without, with_alpha = _cells(tables["table8"], "| without alpha"), _cells(tables["table8"], "| with alpha")
    assert (without["tanh (ours)"], without["tanh (paper)"], without["hardtanh (ours)"]) == ("81.00", "81.10", "80.00")
    assert (without["sigmoid (ours)"], without["sigmoid (paper)"]) == ("–", "80.70")
    assert (with_alpha["tanh (ours)"], with_alpha["tanh (paper)"], with_alpha["sigmoid (paper)"]) == (
        "82.00",
        "82.50",
        "81.60",
    )
    assert "82.00" in _cells(tables["table7"], "| ViT-B")["dyt (ours)"]


def test_paper_tables_7_to_9_rows_are_reachable_from_recipes():
    """Every recipe's paper_ref names a row of paper.yaml, and Tables 7 and 8 have recipes."""
    recipes = Path(__file__).resolve().parents[1] / "configs" / "experiment" / "paper"
    paper, refs = load_paper(PAPER), set()
    for path in recipes.glob("*.yaml"):
        ref = yaml.safe_load(path.read_text()).get("paper_ref")
        if ref:
            assert ref["row"] in paper[ref["table"]]["rows"], f"{path.name}: {ref}"
            refs.add((ref["table"], ref["row"]))
    assert {("table7", "vit_s"), ("table7", "vit_b"), ("table8", "without_alpha")} <= refs


def test_standard_figures_show_validation_and_alpha_and_replot_recorded_analyses(tmp_path):
    rows = ({"step": 1, "val/top1": 50.0}, {"step": 1, "alpha/mean": 0.5, "alpha/blocks.0.norm1": 0.5})
    run = _fake_run(
        tmp_path, "quickstart", "dyt", 0, {"val/top1": 50.0, "headline_metric": "val/top1"}, extra_lines=rows
    )
    (run / "analysis").mkdir()
    lines = [
        {"step": s, "alpha/a": 0.5 + s, "input_std/a": 1.0 + s, "alpha/b": 1.0, "input_std/b": 2.0} for s in (0, 1)
    ]
    (run / "analysis" / "alpha_std.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    runs = find_runs(tmp_path)
    assert runs[0].best("val/top1") == (50.0, 1)
    paths = plot_curves(runs, tmp_path / "figures")
    assert [p.name for p in paths] == ["quickstart_curves.png", "quickstart_dyt_seed0_alpha_std.png"]


def test_every_non_baseline_norm_gets_a_difference_column(tmp_path):
    for norm, acc in (("layernorm", 80.0), ("rmsnorm", 81.0), ("dyt", 79.0)):
        _fake_run(tmp_path, "demo", norm, 0, {"val/acc": acc, "headline_metric": "val/acc"})
    table = build_tables(find_runs(tmp_path), load_paper(PAPER))["experiments_val_acc"]
    assert "| model | layernorm | rmsnorm | dyt | rmsnorm − layernorm | dyt − layernorm |" in table
    assert "| +1.00 | -1.00 |" in table
