"""Image classification data: ImageNet-1K (ImageFolder tree or Hugging Face ``datasets``) and digits.

ImageNet uses timm's pipeline with the paper's augmentation (paper App. A, the ConvNeXt recipe):
RandAugment ``rand-m9-mstd0.5-inc1``, color jitter 0.4, random erasing 0.25, bicubic 224 px crops; the
evaluation transform resizes to 224 / crop_pct and center-crops. Mixup and CutMix act on whole
batches and live in the classification task.

The CPU quickstart uses scikit-learn's digits: 1,797 real 8x8 handwritten digits shipped inside
scikit-learn, so it needs no download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


# ---- digits -----------------------------------------------------------------------------------


DIGITS_NORMALIZE = ("standardize", "minus_one_one")


class DigitsDataset(Dataset):
    """scikit-learn's handwritten digits as (1, 8, 8) float tensors with a fixed split.

    The split is stratified and depends only on ``split_seed``, so every run of every norm sees the
    same train and test images. ``normalize``: ``standardize`` (the train split's mean and std; the
    classification quickstart) or ``minus_one_one`` (pixels 0..16 mapped linearly onto [-1, 1], the
    range a pixel-space diffusion model generates in).
    """

    draws_random = False  # no augmentation: the trainer need not seed the RNGs per item (SeededDataset)

    def __init__(
        self, split: str, test_fraction: float = 0.2, split_seed: int = 0, normalize: str = "standardize"
    ) -> None:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        if split not in ("train", "test"):
            raise ValueError(f"digits split must be 'train' or 'test', got {split!r}")
        if normalize not in DIGITS_NORMALIZE:
            raise ValueError(f"unknown data.normalize {normalize!r}; valid choices are: {', '.join(DIGITS_NORMALIZE)}")
        digits = load_digits()
        images = digits.images.astype(np.float32) / 16.0  # pixel values are 0..16
        train_idx, test_idx = train_test_split(
            np.arange(len(images)), test_size=test_fraction, random_state=split_seed, stratify=digits.target
        )
        idx = train_idx if split == "train" else test_idx
        x = torch.from_numpy(images[idx]).unsqueeze(1)
        if normalize == "minus_one_one":
            self.images = x * 2 - 1
        else:  # with the train split's statistics (the same numbers for both splits)
            train = torch.from_numpy(images[train_idx])
            self.images = (x - train.mean()) / train.std()
        self.labels = torch.from_numpy(digits.target[idx]).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]


# ---- ImageNet ---------------------------------------------------------------------------------


def imagenet_transform(cfg: Any, train: bool):
    """timm's train or eval transform with the recipe's augmentation settings from ``cfg`` (data config)."""
    from timm.data import create_transform

    if train:
        return create_transform(
            cfg.img_size,
            is_training=True,
            auto_augment=cfg.auto_augment,
            color_jitter=cfg.color_jitter,
            re_prob=cfg.reprob,
            re_mode="pixel",
            re_count=1,
            interpolation=cfg.interpolation,
        )
    return create_transform(cfg.img_size, is_training=False, interpolation=cfg.interpolation, crop_pct=cfg.crop_pct)


def check_imagefolder(root: str | Path, splits: tuple[str, ...] = ("train", "val")) -> None:
    """Fail early, saying what was expected, unless ``root/<split>/<class>/<image>`` exists for every split."""
    root = Path(root).expanduser()
    layout = (
        f"expected an ImageFolder tree: {root}/train/<class>/<image> and {root}/val/<class>/<image> "
        "(e.g. n01440764/ILSVRC2012_val_00000293.JPEG), with the same class folders in both"
    )
    if not root.is_dir():
        raise FileNotFoundError(f"data.root={str(root)!r} does not exist or is not a directory; {layout}")
    classes = {}
    for split in splits:
        split_dir = root / split
        if not split_dir.is_dir():
            raise FileNotFoundError(f"data.root has no {split!r} folder ({split_dir}); {layout}")
        dirs = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
        if not dirs:
            raise ValueError(f"{split_dir} has no class folders; {layout}")
        first = split_dir / dirs[0]
        if not any(f.suffix.lower() in IMAGE_SUFFIXES for f in first.iterdir()):
            raise ValueError(f"class folder {first} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); {layout}")
        classes[split] = dirs
    if len(set(map(tuple, classes.values()))) > 1:
        raise ValueError(f"the class folders differ between splits under {root}; {layout}")


class HFImageDataset(Dataset):
    """A Hugging Face ``datasets`` split with an image column and an integer label column."""

    def __init__(
        self, path: str, split: str, transform, image_key: str = "image", label_key: str = "label", **load_kwargs: Any
    ) -> None:
        import datasets

        self.ds = datasets.load_dataset(path, split=split, **load_kwargs)
        missing = {image_key, label_key} - set(self.ds.column_names)
        if missing:
            raise ValueError(
                f"dataset {path!r} split {split!r} lacks column(s) {sorted(missing)}; "
                f"its columns are {self.ds.column_names} (set data.image_key / data.label_key)"
            )
        self.transform, self.image_key, self.label_key = transform, image_key, label_key

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        row = self.ds[int(i)]
        return self.transform(row[self.image_key].convert("RGB")), int(row[self.label_key])


def build_image_dataset(cfg: Any, split: str, transform=None) -> Dataset:
    """The ``train`` or ``val`` split named by the data config (``data.name``: digits | imagenet).
    ``transform`` replaces the recipe's ImageNet transform (self-supervised views, dyt/data/ssl.py)."""
    train = split == "train"
    if cfg.name == "digits":
        return DigitsDataset(
            "train" if train else "test", cfg.test_fraction, cfg.split_seed, cfg.get("normalize", "standardize")
        )
    if cfg.name != "imagenet":
        raise ValueError(f"unknown image data {cfg.name!r}; valid: digits, imagenet")
    transform = transform or imagenet_transform(cfg, train)
    if cfg.get("hf_dataset"):
        hf_split = cfg.hf_train_split if train else cfg.hf_val_split
        return HFImageDataset(cfg.hf_dataset, hf_split, transform, cfg.image_key, cfg.label_key)
    if not cfg.get("root"):
        raise ValueError(
            "data=imagenet needs data.root=/path/to/imagenet (an ImageFolder tree with train/ and "
            "val/) or data.hf_dataset=<hub id or local parquet/imagefolder dir>"
        )
    check_imagefolder(cfg.root)
    from torchvision.datasets import ImageFolder

    return ImageFolder(str(Path(cfg.root).expanduser() / ("train" if train else "val")), transform=transform)
