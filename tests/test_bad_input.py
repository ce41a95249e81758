"""Bad input fails at start-up with one line naming the key, the value and what is allowed, and writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from dyt.cli import evaluate, train

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")

BAD = [
    ("trainer.global_batch=0", "trainer.global_batch=0 is not allowed: it must be a positive whole number"),
    ("trainer.global_batch=-4", "trainer.global_batch=-4 is not allowed"),
    ("trainer.micro_batch=0", "trainer.micro_batch=0 is not allowed: it must be a positive whole number or null"),
    ("trainer.epochs=0", "trainer.epochs=0 is not allowed"),
    ("trainer.max_steps=-1", "trainer.max_steps=-1 is not allowed"),
    ("seed=abc", "seed='abc' is not allowed: it must be a whole number"),
    ("optim.lr=abc", "optim.lr='abc' is not allowed: it must be a positive number"),
    ("optim.lr=0", "optim.lr=0 is not allowed: it must be a positive number"),
    ("optim.weight_decay=-0.1", "optim.weight_decay=-0.1 is not allowed"),
    ("optim.betas=[0.9]", "optim.betas=[0.9] is not allowed: it must be two numbers in [0, 1)"),
    ("norm.alpha_init=abc", "norm.alpha_init='abc' is not allowed: it must be a positive number or 'calibrate'"),
    ("norm.alpha_init=-1", "norm.alpha_init=-1 is not allowed: it must be a positive number"),
    ("norm.calibrate_to=0", "norm.calibrate_to=0 is not allowed: it must be a positive number"),
    ("+norm.sites.attn.alpha_init=x", "norm.sites.attn.alpha_init='x' is not allowed"),
    ("trainer.ema_decay=1.5", "trainer.ema_decay=1.5 is not allowed: it must be a number in [0, 1) or null"),
]


def _compose(config: str, overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIGS, version_base=None):
        return compose(config, overrides=overrides)


@pytest.mark.parametrize(("override", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_values_fail_in_one_line_before_anything_is_written(override, message, tmp_path, capsys):
    cfg = _compose("train", ["norm=dyt", override, f"run_dir={tmp_path}/run"])
    with pytest.raises(SystemExit) as exit_info:
        train(cfg)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists(), "nothing is written for a run that cannot start"


def test_missing_data_and_missing_run_are_one_line_errors(tmp_path, capsys):
    cfg = _compose("train", ["data=imagenet", f"data.root={tmp_path}/nope", f"run_dir={tmp_path}/run"])
    with pytest.raises(SystemExit):
        train(cfg)
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "ImageFolder" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        evaluate(_compose("eval", [f"run={tmp_path}/nonexistent"]))
    err = capsys.readouterr().err
    assert err.startswith("error: no checkpoint at") and "Traceback" not in err


def test_debug_env_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("DYT_DEBUG", "1")
    with pytest.raises(ValueError, match="optim.lr"):
        train(_compose("train", ["optim.lr=abc", f"run_dir={tmp_path}/run"]))


def test_imagefolder_with_other_class_count_than_num_classes(tmp_path, capsys):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / "data" / split / cls / "a.png")
    cfg = _compose("train", ["data=imagenet", f"data.root={tmp_path}/data", f"run_dir={tmp_path}/run"])
    with pytest.raises(SystemExit):
        train(cfg)
    assert "data.num_classes=1000 but the training set has 2 classes (cat, dog); set data.num_classes=2" in (
        capsys.readouterr().err
    )
