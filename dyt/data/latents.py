"""Latent-space data for DiT: the Stable Diffusion VAE, ImageNet at 256 px, and pre-extracted latents.

DiT trains on 32x32x4 latents of 256x256 ImageNet images encoded by the Stable Diffusion VAE
(``stabilityai/sd-vae-ft-ema``), scaled by 0.18215 so that they have roughly unit variance (DiT
``train.py``; paper App. A). Two ways to feed them:

- ``format: images``: an ImageFolder tree; the task encodes every batch with the VAE on the device,
  as DiT's ``train.py`` does.
- ``format: latents``: latents extracted once to disk by ``scripts/extract_latents.py`` (as fast-DiT
  does), for the image and its horizontal flip, so that training keeps DiT's random-flip augmentation
  without the VAE. Chunks are ``.npy`` files read through memory maps.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

# DiT train.py / sample.py: latents are multiplied by this before diffusion, divided before decoding.
SD_VAE_SCALE = 0.18215


def load_vae(name_or_path: str, device: torch.device | str = "cpu"):
    """The frozen ``AutoencoderKL`` from a hub id (``stabilityai/sd-vae-ft-ema``) or a local directory."""
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_pretrained(name_or_path)
    except OSError as err:
        raise OSError(
            f"could not load the VAE {name_or_path!r}: give a local directory holding config.json and "
            "the weights, or a hub id with network access (HF_HUB_OFFLINE is "
            f"{os.environ.get('HF_HUB_OFFLINE', 'unset')})"
        ) from err
    return vae.to(device).eval().requires_grad_(False)


@torch.no_grad()
def encode(vae, images: torch.Tensor, scale: float = SD_VAE_SCALE, sample: bool = True) -> torch.Tensor:
    """Images in [-1, 1] (N, 3, H, W) -> scaled latents (N, 4, H/8, W/8). ``sample`` draws from the
    posterior with the global torch RNG (DiT's ``.sample()``); ``False`` takes its mean."""
    dist = vae.encode(images.to(vae.dtype)).latent_dist
    return (dist.sample() if sample else dist.mean).float() * scale


@torch.no_grad()
def decode(vae, latents: torch.Tensor, scale: float = SD_VAE_SCALE) -> torch.Tensor:
    """Scaled latents -> images in [-1, 1] (clamped)."""
    return vae.decode((latents / scale).to(vae.dtype)).sample.float().clamp(-1, 1)


def center_crop_arr(image: Image.Image, size: int) -> Image.Image:
    """ADM/DiT's ImageNet preprocessing: halve with a box filter while the short side is at least twice
    ``size``, resize the short side to ``size`` (bicubic), then crop the centre square."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    ratio = size / min(image.size)
    image = image.resize(tuple(round(s * ratio) for s in image.size), resample=Image.BICUBIC)
    left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def image_transform(size: int, flip: bool):
    """PIL image -> (3, size, size) tensor in [-1, 1], centre-cropped as in DiT, randomly flipped if ``flip``."""
    from torchvision import transforms

    steps = [transforms.Lambda(lambda im: center_crop_arr(im.convert("RGB"), size))]
    if flip:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)]
    return transforms.Compose(steps)


def image_folder(root: str | Path, size: int, flip: bool) -> Dataset:
    """An ImageFolder tree ``root/<class>/<image>`` as (image in [-1, 1], label) pairs."""
    from torchvision.datasets import ImageFolder

    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"image folder {str(root)!r} does not exist; expected {root}/<class>/<image> "
            "(e.g. the ImageNet train split)"
        )
    return ImageFolder(str(root), transform=image_transform(size, flip))


# ---- pre-extracted latents --------------------------------------------------------------------


def chunk_paths(out_dir: Path, k: int) -> tuple[Path, Path]:
    """Latent and label files of chunk ``k``."""
    return out_dir / f"chunk_{k:05d}.npy", out_dir / f"chunk_{k:05d}_labels.npy"


def write_chunk(out_dir: Path, k: int, latents: np.ndarray, labels: np.ndarray) -> None:
    """Write chunk ``k`` atomically (temporary name, then rename: a killed job leaves no half chunk)."""
    for path, array in zip(chunk_paths(out_dir, k), (latents, labels)):
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, array)
        os.replace(tmp, path)


class LatentDataset(Dataset):
    """Pre-extracted latents: ``root/meta.json`` and chunks of shape (n, 2, C, H, W) float16 (the image's
    latent, then its flip's) with int64 labels. Item ``i`` is one of the two, chosen with the global
    torch RNG (seeded per item by the trainer), as a float32 tensor with its label."""

    def __init__(self, root: str | Path, flip: bool = True) -> None:
        root = Path(root).expanduser()
        meta_path = root / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{meta_path} not found: extract latents first with "
                f"`python scripts/extract_latents.py --data <imagefolder> --out {root}`"
            )
        self.meta = json.loads(meta_path.read_text())
        self.flip = flip
        self.chunks, self.labels = [], []
        for k in range(self.meta["num_chunks"]):
            latent_path, label_path = chunk_paths(root, k)
            if not latent_path.is_file():
                raise FileNotFoundError(
                    f"{latent_path} is missing: the extraction did not finish; rerun "
                    "scripts/extract_latents.py with the same arguments to resume it"
                )
            self.chunks.append(np.load(latent_path, mmap_mode="r"))
            self.labels.append(np.load(label_path))
        self.offsets = np.cumsum([0] + [len(c) for c in self.chunks])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        j = i - self.offsets[k]
        view = int(torch.rand(()) < 0.5) if self.flip else 0
        return torch.from_numpy(np.array(self.chunks[k][j, view], dtype=np.float32)), torch.tensor(
            int(self.labels[k][j])
        )
