"""``norm.alpha_init=calibrate`` and the scale probes: alpha x input std equals the target at every
calibrated layer (measured independently with forward hooks), on several families, across two processes,
and in the trainer only on a fresh start."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import models
from dyt.engine import Trainer, load_checkpoint
from dyt.nn import build_norm_factory
from dyt.nn.calibrate import calibrate_alpha, calibration_targets
from dyt.nn.factory import CALIBRATE_TO
from dyt.nn.probes import LOW, ScaleProbe, pointwise_norms, scale_message
from tests.engine_helpers import DigitsTask, make_cfg


def measured_scales(model: torch.nn.Module, inputs: tuple) -> dict[str, float]:
    """alpha x std of each point-wise norm's input on one forward pass, read with plain forward hooks."""
    seen: dict[str, float] = {}

    def hook(name: str):
        def record(module, args, out) -> None:
            seen.setdefault(name, (module.alpha.abs() * args[0].std()).item())

        return record

    hooks = [m.register_forward_hook(hook(name)) for name, m in pointwise_norms(model)]
    torch.manual_seed(1)  # the same random masks as the calibration pass (wav2vec 2.0 masks in any mode)
    with torch.no_grad():
        model(*inputs)
    for h in hooks:
        h.remove()
    return seen


FAMILIES = [
    ("vit_test", {}),
    ("convnext_test", {}),
    ("dit_tiny", {}),
    ("llama_tiny", {}),
    ("hyenadna_cpu", {}),
    ("caduceus_cpu", {}),
    ("wav2vec2_tiny", {}),
]


@pytest.mark.parametrize("norm", ["dyt", "derf"])
@pytest.mark.parametrize("name,options", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_calibration_sets_alpha_times_input_std_to_the_target_at_every_layer(name, options, norm):
    torch.manual_seed(0)
    factory = build_norm_factory({"name": norm, "alpha_init": "calibrate", "impl": "eager"})
    model = models.create_model(name, norm=factory, **options).eval()  # eval: no dropout between passes
    inputs = model.example_inputs(2)
    layers = [n for n, _ in pointwise_norms(model)]
    assert layers and calibration_targets(model) == dict.fromkeys(layers, CALIBRATE_TO)
    torch.manual_seed(1)
    result = calibrate_alpha(model, lambda: model(*inputs))
    assert list(result) == list(measured_scales(model, inputs))  # every layer reached, in forward order
    for layer, scale in measured_scales(model, inputs).items():
        assert scale == pytest.approx(CALIBRATE_TO, rel=1e-4), layer
        assert result[layer]["alpha"] * result[layer]["input_std"] == pytest.approx(CALIBRATE_TO, rel=1e-9)


def test_per_site_values_win_and_the_placeholder_is_what_the_layer_would_have_had():
    norm = {"name": "dyt", "alpha_init": "calibrate", "calibrate_to": 0.5, "sites": {"final": {"alpha_init": 0.2}}}
    model = models.create_model("llama_tiny", norm=build_norm_factory(norm))
    targets = calibration_targets(model)
    assert "norm" not in targets and set(targets.values()) == {0.5}  # the final norm keeps its number
    assert model.norm.alpha.item() == pytest.approx(0.2)
    # Before calibration each layer holds LLaMA's own width-dependent alpha (paper Table 11), not 0.5.
    assert {round(m.alpha.item(), 3) for n, m in pointwise_norms(model) if n in targets} == {1.0}
    record = [r for r in model.resolved_options()["norms"] if r["site"] == "attn"][0]
    assert record["alpha_init"] == "calibrate" and record["calibrate_to"] == 0.5
    site_target = build_norm_factory({"name": "dyt", "sites": {"attn": {"alpha_init": "calibrate", "calibrate_to": 1}}})
    model = models.create_model("llama_tiny", norm=site_target)
    assert set(calibration_targets(model).values()) == {1.0} and "layers.0.ffn_norm" not in calibration_targets(model)


@pytest.mark.parametrize(
    "norm,message",
    [
        ({"name": "dyt", "alpha_init": -1}, "alpha_init=-1: give a positive number"),
        ({"name": "dyt", "alpha_init": "calibrated"}, "or 'calibrate'"),
        ({"name": "dyt", "alpha_init": "calibrate", "calibrate_to": 0}, "norm.calibrate_to=0: give a positive"),
        ({"name": "layernorm", "calibrate_to": 0.3}, "has no alpha to calibrate"),
    ],
)
def test_bad_calibration_options_are_refused(norm, message):
    with pytest.raises(ValueError, match=message):
        build_norm_factory(norm)


def test_a_constant_input_cannot_be_calibrated_and_the_error_names_the_layer():
    model = models.create_model("vit_test", norm=build_norm_factory({"name": "dyt", "alpha_init": "calibrate"}))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    with pytest.raises(ValueError, match=r"the input of blocks\.0\.norm1 has std 0"):
        calibrate_alpha(model, lambda: model(*model.example_inputs(2)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _calibrate_on_rank(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = models.create_model("hyenadna_cpu", norm={"name": "dyt", "alpha_init": "calibrate"}).eval()
        batch = model.example_inputs(4)[0]
        half = batch[2 * rank : 2 * rank + 2]  # each rank sees its own half of one batch
        result = calibrate_alpha(model, lambda: model(half))
        torch.save({k: v["alpha"] for k, v in result.items()}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_processes_calibrate_on_their_joint_batch_and_agree(tmp_path):
    out = str(tmp_path / "alpha")
    mp.spawn(_calibrate_on_rank, args=(_free_port(), out), nprocs=2)
    rank0, rank1 = torch.load(f"{out}.0"), torch.load(f"{out}.1")
    assert rank0 == rank1  # bit for bit: the statistics were summed over both ranks
    torch.manual_seed(0)
    model = models.create_model("hyenadna_cpu", norm={"name": "dyt", "alpha_init": "calibrate"}).eval()
    batch = model.example_inputs(4)[0]
    single = {k: v["alpha"] for k, v in calibrate_alpha(model, lambda: model(batch)).items()}
    assert single.keys() == rank0.keys()
    assert all(single[k] == pytest.approx(rank0[k], rel=1e-5) for k in single)


def fit(run, *overrides):
    cfg = make_cfg(run, list(overrides))
    return Trainer(cfg).fit(DigitsTask(cfg))


def test_the_trainer_calibrates_a_fresh_start_only_and_records_it(tmp_path, capsys):
    run = tmp_path / "run"
    fit(run, "norm.alpha_init=calibrate", "trainer.max_steps=2", "trainer.ema_decay=0.5", "trainer.progress=log")
    resolved = json.loads((run / "resolved.json").read_text())
    calibrated = resolved["calibrated_alpha"]
    assert list(calibrated) == ["blocks.0.norm", "blocks.1.norm"]
    init = resolved["scale_at_init"]
    assert all(init[f"scale/{k}"] == pytest.approx(CALIBRATE_TO, rel=1e-4) for k in calibrated)
    assert "[norm.alpha_init=calibrate]" in capsys.readouterr().out
    # The EMA started from the calibrated weights: after 2 updates at decay 0.5 it sits between them.
    state = load_checkpoint(run)
    first = calibrated["blocks.0.norm"]["alpha"]
    assert state["ema"]["blocks.0.norm.alpha"].item() == pytest.approx(first, abs=0.05)
    # Resumed (extended): no second calibration, the alphas continue from the checkpoint.
    before = state["model"]["blocks.0.norm.alpha"].item()
    fit(
        run,
        "norm.alpha_init=calibrate",
        "trainer.max_steps=3",
        "trainer.ema_decay=0.5",
        "trainer.accept_changes=[trainer.max_steps]",
    )
    assert json.loads((run / "resolved.json").read_text()) == resolved
    assert abs(load_checkpoint(run)["model"]["blocks.0.norm.alpha"].item() - before) < 0.01
    # init_from: the weights (alphas included) come from the source run.
    tuned = tmp_path / "tuned"
    fit(tuned, "norm.alpha_init=calibrate", "trainer.max_steps=1", f"init_from={run}")
    assert "calibrated_alpha" not in json.loads((tuned / "resolved.json").read_text())


def test_a_scale_starved_model_warns_once_at_start_up_and_a_healthy_one_does_not(tmp_path, capsys):
    fit(tmp_path / "low", "norm.alpha_init=0.001", "trainer.max_steps=1")
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "blocks.0.norm" in warnings[0] and "norm.alpha_init=calibrate" in warnings[0]
    fit(tmp_path / "ok", "trainer.max_steps=1")
    assert "warning:" not in capsys.readouterr().err


def test_scale_probe_reports_std_scale_and_saturation():
    norm = build_norm_factory({"name": "dyt", "alpha_init": 4.0})
    layer = norm(8, site="final")
    x = torch.linspace(-1, 1, 80).reshape(10, 8)
    probe = ScaleProbe(layer)
    with probe.recording():
        layer(x)
        layer(2 * x)
    row = probe.collect()
    assert row["input_std/"] == pytest.approx(1.5 * x.std().item(), rel=1e-6)
    assert row["scale/"] == pytest.approx(4.0 * row["input_std/"], rel=1e-6)
    assert row["saturated/"] == pytest.approx(((4 * x).abs() > 2).float().mean().item() / 2 + 0.75 / 2, abs=0.02)
    assert probe.collect() == {}
    line, warning = scale_message({"scale/a": LOW / 2, "input_std/a": 1.0, "saturated/a": 0.0})
    assert "min 0.01 (a)" in line and warning and "100x weaker" in warning
    assert scale_message({"scale/a": LOW / 2, "input_std/a": 1.0, "saturated/a": 0.0}, sensitive=False)[1] is None
    saturated = {"scale/a": 50.0, "input_std/a": 5.0, "saturated/a": 1.0}
    assert "norm.alpha_init=calibrate" in scale_message(saturated)[1]
    assert "come from init_from" in scale_message(saturated, pretrained=True)[1]  # calibration cannot help


def test_log_alpha_learns_relative_steps_and_keeps_the_paper_form_by_default():
    from dyt.nn import Derf, DyT

    assert [n for n, _ in DyT(4).named_parameters()] == ["weight", "bias", "alpha"]  # the official names
    layer = DyT(4, alpha_init=25.0, alpha_param="log", alpha_gain=10.0, impl="eager")
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias", "log_alpha"]
    assert layer.alpha.item() == pytest.approx(25.0)
    x = torch.randn(3, 4)
    layer(x).sum().backward()
    # d out / d log_alpha = gain * alpha * d out / d alpha
    reference = DyT(4, alpha_init=25.0, impl="eager")
    reference(x).sum().backward()
    assert layer.log_alpha.grad.item() == pytest.approx(10.0 * 25.0 * reference.alpha.grad.item(), rel=1e-5)
    # One Adam step moves log_alpha by about lr, so alpha by a factor exp(gain * lr), at any size.
    opt = torch.optim.Adam([layer.log_alpha], lr=1e-3)
    opt.step()
    assert layer.alpha.item() / 25.0 == pytest.approx(torch.tensor(-10e-3).exp().item(), rel=1e-3)
    layer.set_alpha(0.5)
    assert layer.alpha.item() == pytest.approx(0.5) and Derf(4, alpha_param="log").alpha.item() == pytest.approx(0.5)
    model = models.create_model(
        "hyenadna_cpu", norm={"name": "dyt", "alpha_init": "calibrate", "alpha_param": "log", "alpha_gain": 10}
    ).eval()
    inputs = model.example_inputs(2)
    calibrate_alpha(model, lambda: model(*inputs))
    assert all(s == pytest.approx(CALIBRATE_TO, rel=1e-4) for s in measured_scales(model, inputs).values())
    with pytest.raises(ValueError, match="needs a learned alpha"):
        DyT(4, alpha_param="log", learn_alpha=False)
    with pytest.raises(ValueError, match="valid choices are: linear, log"):
        DyT(4, alpha_param="exp")
