"""FID of class-conditional samples: resumable, distributed sample generation, statistics and the
Frechet distance.

FID (Heusel et al. 2017) is ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` between Gaussians fitted
to feature sets. The paper's Table 3 uses the ADM evaluation suite with "the standard ImageNet
reference batch" (paper Sec. 5): pass its ``.npz`` (``mu``/``sigma`` keys) as ``task.fid.reference``.
Our features come from the same FID Inception weights run in PyTorch (``dyt.metrics.features``),
with images resized as TensorFlow 1.x's bilinear resize does inside ADM's graph (no half-pixel offset;
torch-fidelity resizes the same way), so the features match up to float rounding.

Samples are generated in chunks of ``chunk_size`` written atomically to ``<run_dir>/samples/``; chunk
``k`` always holds samples ``k * chunk_size ...`` with labels ``i % num_classes`` (class-balanced) and
noise seeded by ``(seed, k)``, so the set is the same for any number of ranks and an interrupted run
resumes at its first missing chunk. Rank ``r`` generates chunks ``k % world == r``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from dyt.io import atomic_write_json

# ---- the distance ------------------------------------------------------------------------------


def feature_statistics(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of (N, D) features, in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need at least two feature vectors of shape (N, D), got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    ``tr((S1 S2)^(1/2))`` is computed as the sum of square roots of the eigenvalues of the symmetric
    ``S1^(1/2) S2 S1^(1/2)`` (same spectrum as ``S1 S2``), which avoids a non-symmetric matrix square
    root and its spurious imaginary parts.
    """
    mu1, mu2 = (torch.as_tensor(np.asarray(m), dtype=torch.float64) for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(np.asarray(s), dtype=torch.float64) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(
            f"mismatched statistics: mu {tuple(mu1.shape)} vs {tuple(mu2.shape)}, "
            f"sigma {tuple(s1.shape)} vs {tuple(s2.shape)}"
        )
    evals, evecs = torch.linalg.eigh(s1)
    sqrt_s1 = (evecs * evals.clamp(min=0).sqrt()) @ evecs.T
    middle = sqrt_s1 @ s2 @ sqrt_s1
    tr_covmean = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    return float(((mu1 - mu2) ** 2).sum() + s1.trace() + s2.trace() - 2 * tr_covmean)


# ---- images and features -----------------------------------------------------------------------


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1] (N, C, H, W) -> uint8 (N, H, W, C), rounded as DiT's sample saving does."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def extract_features(
    extractor: nn.Module, images: np.ndarray, device: torch.device | str = "cpu", batch_size: int = 200
) -> np.ndarray:
    """Features (N, D) of uint8 images (N, H, W, C)."""
    extractor = extractor.to(device)
    out = [
        extractor(torch.from_numpy(images[i : i + batch_size]).permute(0, 3, 1, 2).to(device)).double().cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out).numpy()


def load_images(folder: str | Path) -> np.ndarray:
    """Every image file under ``folder`` (sorted), as uint8 RGB (N, H, W, 3); all must share one size."""
    from PIL import Image

    suffixes = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
    paths = sorted(p for p in Path(folder).expanduser().rglob("*") if p.suffix.lower() in suffixes)
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(sorted(suffixes))}) under {str(folder)!r}")
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def reference_statistics(
    reference: str | Path, extractor: nn.Module, device: torch.device | str, cache: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Reference ``(mu, sigma)``: from an ``.npz`` with ``mu``/``sigma`` (ADM's reference batches) or with
    images ``arr_0`` (N, H, W, 3), or from a folder of images (cached in ``cache`` when given)."""
    path = Path(reference).expanduser()
    if cache is not None and cache.is_file():
        path = cache
    if path.suffix == ".npz":
        with np.load(path) as f:
            if "mu" in f and "sigma" in f:
                return f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
            if "arr_0" not in f:
                raise ValueError(f"{path} holds neither 'mu'/'sigma' statistics nor 'arr_0' images; keys: {list(f)}")
            images = f["arr_0"]
    elif path.is_dir():
        images = load_images(path)
    else:
        raise FileNotFoundError(f"FID reference {str(reference)!r} is neither an .npz file nor a folder of images")
    mu, sigma = feature_statistics(extract_features(extractor, images, device))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, mu=mu, sigma=sigma)
    return mu, sigma


def save_grid(images: np.ndarray, path: str | Path, nrow: int = 8, scale: int = 1) -> Path:
    """uint8 images (N, H, W, C) as one PNG grid of ``nrow`` columns, each pixel ``scale`` x ``scale``."""
    from PIL import Image

    n, h, w, c = images.shape
    rows = -(-n // nrow)
    grid = np.full((rows * (h + 2) + 2, nrow * (w + 2) + 2, c), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        r, k = divmod(i, nrow)
        grid[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + k * (w + 2) : 2 + k * (w + 2) + w] = im
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[..., 0] if c == 1 else grid).save(path)
    return path


def class_grid(samples: np.ndarray, num_classes: int, per_class: int, max_classes: int = 10) -> np.ndarray:
    """Of class-balanced samples (sample ``i`` has label ``i % num_classes``), ``per_class`` of each of the
    first ``max_classes`` classes, class by class: with ``nrow=per_class``, one grid row per class."""
    k = num_classes
    shown = [c + j * k for c in range(min(k, max_classes)) for j in range(per_class) if c + j * k < len(samples)]
    return samples[shown]


# ---- sample generation -------------------------------------------------------------------------


def class_balanced_labels(start: int, stop: int, num_classes: int) -> torch.Tensor:
    """Labels of samples ``start..stop-1``: ``i % num_classes``, so any prefix of whole rounds is balanced."""
    return torch.arange(start, stop) % num_classes


def _refresh_cache(out_dir: Path, provenance: dict[str, Any]) -> None:
    """Empty ``out_dir`` of sample chunks unless they were made from ``provenance``; record it."""
    stamp = out_dir / "provenance.json"
    wanted = json.loads(json.dumps(provenance, default=str))
    old = json.loads(stamp.read_text()) if stamp.is_file() else None
    chunks = sorted(out_dir.glob("chunk_*.npy"))
    if old != wanted and chunks:
        what = f"step {old.get('step')}" if isinstance(old, dict) else "unknown weights"
        print(
            f"{out_dir}: {len(chunks)} sample chunks came from {what}, not step {wanted.get('step')} "
            "with these settings: made again",
            flush=True,
        )
        for chunk in chunks:
            chunk.unlink()
    if old != wanted:
        atomic_write_json(stamp, wanted)


def generate_samples(
    generate: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    num_samples: int,
    num_classes: int,
    out_dir: str | Path,
    device: torch.device,
    batch_size: int = 125,
    chunk_size: int = 1000,
    seed: int = 0,
    provenance: dict[str, Any] | None = None,
) -> np.ndarray:
    """Generate ``num_samples`` class-balanced samples into ``out_dir`` (resumable, see the module
    docstring) and return them all as uint8 (N, H, W, C) on every rank.

    ``generate(labels, generator)`` returns images in [-1, 1] for labels on ``device``. ``provenance``
    (the checkpoint step, weights and config the samples come from) is kept in ``out_dir/provenance.json``:
    chunks made from anything else (a run trained further since, other sampling settings) are discarded
    and made again, never mixed with new ones.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if rank == 0 and provenance is not None:
        _refresh_cache(out_dir, {**provenance, "num_samples": num_samples, "chunk_size": chunk_size, "seed": seed})
    if dist.is_initialized():
        dist.barrier()
    num_chunks = -(-num_samples // chunk_size)
    paths = [out_dir / f"chunk_{k:05d}.npy" for k in range(num_chunks)]
    for k in range(rank, num_chunks, world):
        if paths[k].is_file():
            continue
        start, stop = k * chunk_size, min((k + 1) * chunk_size, num_samples)
        generator = torch.Generator(device).manual_seed(seed * 1_000_003 + k)
        chunk = [
            to_uint8(generate(class_balanced_labels(i, min(i + batch_size, stop), num_classes).to(device), generator))
            for i in range(start, stop, batch_size)
        ]
        tmp = paths[k].with_suffix(".tmp.npy")
        np.save(tmp, np.concatenate(chunk))
        os.replace(tmp, paths[k])
    if dist.is_initialized():
        dist.barrier()
    return np.concatenate([np.load(p) for p in paths])
