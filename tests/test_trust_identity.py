"""Run identity: a re-launch that changes training is refused with the keys named; run-dir names of
direct commands follow what they train."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dyt.cli.naming import default_run_dir
from dyt.engine.identity import (
    RunIdentityError,
    check_run_identity,
    config_diff,
    same_recipe_but_seed,
)

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")


@pytest.fixture(scope="module")
def composed():
    """The resolved quickstart config of train.py for a list of overrides (as a plain dict)."""
    with initialize_config_dir(config_dir=CONFIGS, version_base=None):

        def make(*overrides: str) -> dict:
            return OmegaConf.to_container(compose("train", list(overrides)), resolve=True)

        yield make


def test_changed_lr_relaunch_is_refused_naming_the_keys(composed):
    old = composed()
    new = composed("optim.lr=0.1", "model.drop_path_rate=0.5")
    with pytest.raises(RunIdentityError) as info:
        check_run_identity(old, new, "runs/quickstart/dyt/seed0")
    message = str(info.value)
    assert "\n" not in message
    assert "run dir runs/quickstart/dyt/seed0 was trained with a different config" in message
    assert f"optim.lr: {old['optim']['lr']} -> 0.1" in message
    assert f"model.drop_path_rate: {old['model']['drop_path_rate']} -> 0.5" in message
    assert "run_dir=..." in message and "seed=" in message
    assert "trainer.accept_changes=[model.drop_path_rate,optim.lr]" in message
    accepted = check_run_identity(old, new, "run", accept=["optim.lr", "model.drop_path_rate"])
    assert set(accepted) == {"optim.lr", "model.drop_path_rate"}


def test_extending_a_run_must_be_said(composed):
    old, new = composed("trainer.max_steps=20"), composed("trainer.max_steps=40")
    with pytest.raises(
        RunIdentityError, match=r"trainer.max_steps: 20 -> 40.*extend .*accept_changes=\[trainer.max_steps\]"
    ):
        check_run_identity(old, new, "run")
    assert check_run_identity(old, new, "run", accept=["trainer.max_steps"]) == {"trainer.max_steps": (20, 40)}


def test_keys_that_do_not_change_training_resume(composed):
    old = composed()
    new = composed(
        "logger=wandb",
        "trainer.num_workers=4",
        "trainer.progress=log",
        "trainer.keep_checkpoints=3",
        "trainer.ckpt_every_minutes=5",
        "trainer.device=cpu",
        "trainer.eval_every_epochs=5",
        "task.eval_batch_size=7",
    )
    assert config_diff(old, new) == {}
    assert check_run_identity(old, new, "run") == {}


def test_seeds_of_one_recipe_are_averaged_other_differences_are_not(composed):
    assert same_recipe_but_seed(composed("seed=0"), composed("seed=1")) == {}
    assert same_recipe_but_seed(composed("trainer.max_steps=20"), composed("trainer.max_steps=40", "seed=1")) == {
        "trainer.max_steps": (20, 40)
    }


NAMES = {"experiment_name": "quickstart", "model": "vit_b", "data": "imagenet", "norm": "dyt", "seed": 0}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], "runs/quickstart/dyt/seed0"),  # python train.py: the quickstart
        (["experiment=quickstart", "norm=dyt"], "runs/quickstart/dyt/seed0"),
        (["model=vit_b", "norm=dyt", "data=imagenet", "data.root=/data/in1k"], "runs/vit_b_imagenet/dyt/seed0"),
        (
            ["model=vit_b", "data=imagenet", "trainer.num_workers=8", "logger=wandb", "hydra/launcher=submitit_slurm"],
            "runs/vit_b_imagenet/dyt/seed0",
        ),
        (
            ["model=vit_b", "data=imagenet", "optim.lr=1e-3", "model.drop_path_rate=0.1"],
            "runs/vit_b_imagenet+model.drop_path_rate=0.1,optim.lr=1e-3/dyt/seed0",
        ),
        (["experiment=quickstart", "+trainer.max_steps=5"], "runs/quickstart+trainer.max_steps=5/dyt/seed0"),
    ],
)
def test_default_run_dir_is_named_after_what_the_command_trains(overrides, expected):
    assert default_run_dir(overrides, **NAMES) == expected


def test_long_run_dir_names_stay_distinct():
    a = default_run_dir(["model=vit_b", *(f"x.k{i}={i}" for i in range(30))], **NAMES)
    b = default_run_dir(["model=vit_b", *(f"x.k{i}={i + 1}" for i in range(30))], **NAMES)
    assert a != b and max(len(p) for p in a.split("/")) <= 80
