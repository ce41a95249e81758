"""Views for self-supervised pretraining: MAE's single augmented view and DINO's multi-crop.

DINO (``DataAugmentationDINO`` in DINO main_dino.py) makes two global crops and ``local_crops``
small local crops of every image. On ImageNet every crop is random-resized (bicubic), flipped,
colour-jittered (p 0.8: brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1), turned grey (p 0.2),
Gaussian-blurred (radius 0.1-2; p 1.0 for the first global crop, 0.1 for the second, 0.5 for local
ones), solarized (second global crop only, p 0.2) and normalised with ImageNet's mean and std. The
8x8 grey digits of the CPU demo get the geometric part only (crops and flips): colour does not apply
and blur or solarization would erase an 8-pixel image.

MAE (main_pretrain.py) trains on one view: random-resized crop (scale 0.2-1, bicubic) and a flip.

Every random draw uses the global RNGs, which the trainer seeds per item from ``(seed, epoch, index)``,
so the views of a resumed run are the same as those of an uninterrupted one.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from dyt.data.images import build_image_dataset

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def to_normalized_tensor() -> list[Any]:
    """PIL image -> float tensor normalised with ImageNet's mean and std (DINO's and MAE's last steps)."""
    return [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


class RandomGaussianBlur:
    """PIL Gaussian blur with a radius drawn uniformly from [0.1, 2] with probability ``p`` (DINO)."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img):
        from PIL import ImageFilter

        if random.random() >= self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))


class MultiCrop:
    """An image -> ``[global_1, global_2, local_1, ..., local_n]`` (DINO's multi-crop views).

    Args:
        global_size, local_size: side of the crops (DINO: 224 and 96 px).
        global_scale, local_scale: area fractions of the random-resized crops (DINO's ViT-B
            recipes: (0.25, 1) and (0.05, 0.25)).
        local_crops: number of local crops (DINO: 10).
        photometric: DINO's colour, blur and solarization augmentations and ImageNet normalisation
            (PIL input); False: crops and flips only, on tensors (the digits demo).
    """

    def __init__(
        self,
        global_size: int,
        local_size: int,
        global_scale: Sequence[float],
        local_scale: Sequence[float],
        local_crops: int,
        photometric: bool = True,
    ) -> None:
        bicubic = v2.InterpolationMode.BICUBIC

        def view(size: int, scale: Sequence[float], blur: float, solarize: float) -> Callable:
            steps: list[Any] = [v2.RandomResizedCrop(size, scale=tuple(scale), interpolation=bicubic, antialias=True)]
            steps.append(v2.RandomHorizontalFlip(p=0.5))
            if photometric:
                jitter = v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)
                steps += [v2.RandomApply([jitter], p=0.8), v2.RandomGrayscale(p=0.2), RandomGaussianBlur(blur)]
                steps += [v2.RandomSolarize(128, p=solarize)] if solarize else []
                steps += [
                    v2.PILToTensor(),
                    v2.ToDtype(torch.float32, scale=True),
                    v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
                ]
            return v2.Compose(steps)

        self.globals = [view(global_size, global_scale, 1.0, 0.0), view(global_size, global_scale, 0.1, 0.2)]
        self.local = view(local_size, local_scale, 0.5, 0.0)
        self.local_crops = local_crops

    def __call__(self, img) -> list[torch.Tensor]:
        return [t(img) for t in self.globals] + [self.local(img) for _ in range(self.local_crops)]


def mae_transform(img_size: int, scale: Sequence[float] = (0.2, 1.0), photometric: bool = True) -> Callable:
    """MAE's pretraining view: random-resized crop (MAE: scale 0.2-1, bicubic), horizontal flip, and for
    ImageNet the tensor conversion and normalisation (MAE main_pretrain.py)."""
    bicubic = v2.InterpolationMode.BICUBIC
    steps: list[Any] = [
        v2.RandomResizedCrop(img_size, scale=tuple(scale), interpolation=bicubic, antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    return v2.Compose(steps + (to_normalized_tensor() if photometric else []))


class Views(Dataset):
    """``(transform(image), label)`` for every item of an ``(image, label)`` dataset."""

    def __init__(self, base: Dataset, transform: Callable) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        image, label = self.base[i]
        return self.transform(image), label


def build_view_dataset(data_cfg: Any, transform_for: Callable[[bool], Callable]) -> Dataset:
    """The training images of ``data_cfg`` (digits | imagenet) seen through ``transform_for(photometric)``:
    ImageNet images arrive as PIL images and get the full augmentation, the digits as standardised
    tensors and get the geometric part."""
    if data_cfg.name == "digits":
        return Views(build_image_dataset(data_cfg, "train"), transform_for(False))
    return build_image_dataset(data_cfg, "train", transform=transform_for(True))
