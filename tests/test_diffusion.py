"""Gaussian diffusion: schedule, respacing, DiT's loss terms, sampling determinism and guidance, and the
diffusion task training on the tiny digits config."""

import math

import pytest
import torch
from hydra import compose, initialize_config_dir

from dyt.diffusion import create_diffusion, sample, space_timesteps
from dyt.diffusion.gaussian import normal_kl
from dyt.diffusion.sampling import guided_output
from dyt.engine.evaluation import evaluate_model
from dyt.engine.task import StepInfo
from dyt.tasks.diffusion import training_losses
from models.dit import dit_tiny

CONFIGS = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "configs")


def test_linear_schedule_and_respacing_keep_marginals():
    full = create_diffusion(1000)
    assert full.betas[0].item() == pytest.approx(1e-4) and full.betas[-1].item() == pytest.approx(0.02)
    kept = space_timesteps(1000, 250)
    assert len(kept) == 250 and kept[0] == 0 and kept[-1] == 999
    short = create_diffusion(1000, 250)
    assert short.num_timesteps == 250 and short.timestep_map.tolist() == kept
    # Respacing keeps q(x_t | x_0) at the kept steps (Nichol & Dhariwal Sec. 4).
    torch.testing.assert_close(short.alphas_cumprod, full.alphas_cumprod[kept], rtol=1e-12, atol=0)


def test_space_timesteps_matches_adm():
    assert space_timesteps(1000, 10) == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert space_timesteps(100, "2,3") == [0, 49, 50, 74, 99]
    with pytest.raises(ValueError, match="cannot keep"):
        space_timesteps(10, 11)


def test_vb_term_vanishes_for_the_true_posterior():
    """Eps equal to the true noise and v = -1 (log variance = posterior's) give KL 0 at t > 0."""
    d = create_diffusion(1000)
    x0, noise = torch.rand(4, 2, 4, 4, dtype=torch.float64) * 2 - 1, torch.randn(4, 2, 4, 4, dtype=torch.float64)
    t = torch.tensor([1, 10, 500, 999])
    xt = d.q_sample(x0, t, noise)
    out = torch.cat([noise, -torch.ones_like(noise)], dim=1)
    assert d.vb_terms_bpd(out, x0, xt, t).abs().max() < 1e-8
    wrong = torch.cat([noise, torch.ones_like(noise)], dim=1)  # v = +1: variance beta_t instead
    assert (d.vb_terms_bpd(wrong, x0, xt, t) > 0).all()


def test_normal_kl_matches_closed_form():
    m1, lv1, m2, lv2 = torch.tensor(0.3), torch.tensor(-1.0), torch.tensor(-0.2), torch.tensor(0.5)
    ref = math.log(math.exp(0.5 * 0.5) / math.exp(0.5 * -1.0)) + (math.exp(-1.0) + 0.25) / (2 * math.exp(0.5)) - 0.5
    assert normal_kl(m1, lv1, m2, lv2).item() == pytest.approx(ref, rel=1e-6)


def test_training_losses_terms():
    d = create_diffusion(1000)
    model = dit_tiny(norm="layernorm")
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    terms = training_losses(d, model, x0, torch.tensor([0, 5, 700]), torch.randn_like(x0), y=torch.tensor([1, 2, 3]))
    assert set(terms) == {"loss", "mse", "vb"} and terms["loss"].shape == (3,)
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])
    # adaLN-Zero: the model outputs eps = 0 at init, so the MSE is the noise's mean square.
    fixed = training_losses(
        d,
        dit_tiny(norm="layernorm", learn_sigma=False),
        x0,
        torch.tensor([0, 5, 700]),
        torch.ones_like(x0),
        y=torch.tensor([1, 2, 3]),
    )
    assert set(fixed) == {"loss", "mse"} and torch.allclose(fixed["mse"], torch.ones(3))


def _sample(seed, cfg_scale=1.0):
    torch.manual_seed(0)
    model = dit_tiny(norm="layernorm", zero_init_adaln=False).eval()
    return sample(
        model,
        create_diffusion(1000, 5),
        torch.tensor([1, 7]),
        (1, 8, 8),
        cfg_scale=cfg_scale,
        generator=torch.Generator().manual_seed(seed),
    )


def test_sampling_is_deterministic_for_a_seed():
    assert torch.equal(_sample(3), _sample(3))
    assert not torch.equal(_sample(3), _sample(4))
    assert torch.equal(_sample(3, cfg_scale=4.0), _sample(3, cfg_scale=4.0))
    assert not torch.equal(_sample(3, cfg_scale=4.0), _sample(3))


def test_classifier_free_guidance_formula():
    class Stub(torch.nn.Module):
        num_classes = 10

        def forward(self, x, t, y):  # output depends on the label: the null class (10) gives 0
            return x * (y != 10).float().view(-1, 1, 1, 1) * y.view(-1, 1, 1, 1).float()

    x, t, y = torch.ones(2, 4, 2, 2), torch.zeros(2, dtype=torch.long), torch.tensor([2, 3])
    out = guided_output(Stub(), x, t, y, cfg_scale=1.5, null_label=10)
    torch.testing.assert_close(out, 1.5 * x * y.view(-1, 1, 1, 1))
    partial = guided_output(Stub(), x, t, y, cfg_scale=1.5, null_label=10, guidance_channels=3)
    torch.testing.assert_close(partial[:, 3], x[:, 3] * y.view(-1, 1, 1))  # unguided 4th channel (DiT quirk)


def _digits_cfg(norm):
    with initialize_config_dir(config_dir=CONFIGS, version_base=None):
        return compose(
            "train",
            overrides=[
                "experiment=dit_digits",
                f"norm={norm}",
                "task.eval_max_samples=128",
                "task.eval_batch_size=128",
            ],
        )


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["layernorm", "dyt"])
def test_task_loss_decreases_on_tiny_config(norm):
    from dyt.tasks import build_task

    cfg = _digits_cfg(norm)
    if norm == "dyt":
        cfg.norm.impl = "eager"
    task = build_task(cfg)
    torch.manual_seed(0)
    model = task.build_model()
    data = task.train_data()
    assert data.images.min() == -1 and data.images.max() == 1 and data.images.shape[1:] == (1, 8, 8)
    before = evaluate_model(task.evaluate, model, torch.device("cpu"))
    assert before == evaluate_model(task.evaluate, model, torch.device("cpu"))  # fixed timesteps and noise
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        idx = torch.randint(0, len(data), (64,), generator=g)
        loss, logs = task.training_step(model, (data.images[idx], data.labels[idx]), StepInfo(0, 0, 1, 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert set(logs) == {"mse", "vb"}
    after = evaluate_model(task.evaluate, model, torch.device("cpu"))
    assert after["val/loss"] < 0.8 * before["val/loss"], (before, after)


def test_paper_recipes_compose():
    for name, model in (("dit_b4", "dit_b4"), ("dit_l4", "dit_l4"), ("dit_xl2", "dit_xl2")):
        with initialize_config_dir(config_dir=CONFIGS, version_base=None):
            cfg = compose("train", overrides=[f"experiment=paper/{name}", "norm=dyt", "data.latents_root=/x"])
        assert cfg.model.name == model and cfg.optim.lr == 4e-4 and cfg.optim.weight_decay == 0
        assert cfg.trainer.ema_decay == 0.9999 and cfg.task.sample_steps == 250 and cfg.model.num_classes == 1000
        assert cfg.optim.schedule.name == "constant" and cfg.trainer.epochs == 80


@pytest.mark.slow
def test_eval_extra_writes_samples_grid_and_fid(tmp_path):
    from dyt.tasks import build_task

    cfg = _digits_cfg("layernorm")
    cfg.task.sample_steps, cfg.task.fid.num_samples, cfg.task.fid.chunk_size = 2, 30, 10
    cfg.task.fid.batch_size, cfg.task.fid.grid_per_class = 10, 2
    task = build_task(cfg)
    torch.manual_seed(0)
    model = task.build_model()
    metrics = task.eval_extra(model, torch.device("cpu"), tmp_path)
    assert metrics["fid_num_samples"] == 30 and metrics["fid"] > 0
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [f"chunk_0000{k}.npy" for k in range(3)]
    assert (tmp_path / "samples_grid.png").is_file()
    assert model.training  # restored after sampling in eval mode


def test_cached_samples_are_remade_when_the_weights_they_came_from_change(tmp_path, capsys):
    """eval.py after training resumed from step 40 to 80 must not pair step-80 metrics with step-40 samples."""
    from dyt.metrics.fid import generate_samples

    def gen(value):
        return lambda labels, g: torch.full((len(labels), 1, 2, 2), value)

    args = (4, 2, tmp_path, torch.device("cpu"))
    first = generate_samples(gen(-1.0), *args, batch_size=2, chunk_size=2, provenance={"step": 40})
    same = generate_samples(gen(1.0), *args, batch_size=2, chunk_size=2, provenance={"step": 40})
    assert (same == first).all(), "same weights: the cache is reused"
    later = generate_samples(gen(1.0), *args, batch_size=2, chunk_size=2, provenance={"step": 80})
    assert (later == 255).all() and "came from step 40, not step 80" in capsys.readouterr().out
