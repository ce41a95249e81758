"""Image data options (dyt/data/images.py): digits normalized for classification or in [-1, 1] for
pixel-space diffusion, chosen by the data config, not by the task."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from dyt.data.images import DigitsDataset
from dyt.tasks.diffusion import DiffusionTask

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")


def test_digits_minus_one_one_maps_pixels_0_to_16_onto_minus_one_to_one():
    data = DigitsDataset("test", normalize="minus_one_one")
    assert data.images.min() == -1 and data.images.max() == 1
    assert torch.equal((data.images + 1) * 8, ((data.images + 1) * 8).round())  # the 17 grey levels, exactly


def test_digits_standardize_is_the_default_and_uses_train_statistics():
    train = DigitsDataset("train")
    assert abs(train.images.mean().item()) < 1e-5 and train.images.std().item() == pytest.approx(1, abs=1e-4)
    assert torch.equal(DigitsDataset("train", normalize="standardize").images, train.images)
    with pytest.raises(ValueError, match="valid choices are: standardize, minus_one_one"):
        DigitsDataset("train", normalize="0_1")


def test_diffusion_takes_digits_in_minus_one_one_from_the_data_config():
    with initialize_config_dir(config_dir=CONFIGS, version_base=None):
        cfg = compose("train", overrides=["experiment=dit_digits"])
        plain = compose("train", overrides=["experiment=dit_digits", "data.normalize=standardize"])
    data = DiffusionTask(cfg).train_data()
    assert torch.equal(data.images, DigitsDataset("train", normalize="minus_one_one").images)
    with pytest.raises(ValueError, match="set data.normalize=minus_one_one"):
        DiffusionTask(plain).train_data()
