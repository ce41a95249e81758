"""Encode an ImageFolder once into SD-VAE latents for DiT training (``data=imagenet_latents``).

    python scripts/extract_latents.py --data /path/imagenet/train --out /path/latents/train
    python -m dyt.launch --nproc_per_node=8 scripts/extract_latents.py --data ... --out ...   # ranks split the chunks

Each image is centre-cropped to ``--image-size`` as in DiT and encoded with and without a horizontal
flip; the latents (posterior samples, seeded per chunk, times 0.18215) are stored as float16 chunks of
``--chunk-size`` images (see ``dyt.data.latents``). A rerun with the same arguments skips the chunks
already written, so an interrupted extraction resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dyt.data.latents import SD_VAE_SCALE, chunk_paths, encode, image_folder, load_vae, write_chunk  # noqa: E402


def extract(
    data: str,
    out: str,
    vae: str = "stabilityai/sd-vae-ft-ema",
    image_size: int = 256,
    batch_size: int = 64,
    chunk_size: int = 10000,
    seed: int = 0,
    device: str = "auto",
    num_workers: int = 4,
) -> Path:
    """Write the latents of every image under ``data`` to ``out`` (resumable); returns ``out``."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    out_dir = Path(out).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = image_folder(data, image_size, flip=False)
    num_chunks = -(-len(dataset) // chunk_size)
    model = load_vae(vae, dev)
    for k in range(rank, num_chunks, world):
        if chunk_paths(out_dir, k)[0].is_file():
            continue
        torch.manual_seed(seed * 1_000_003 + k)  # the posterior samples of chunk k do not depend on the ranks
        indices = range(k * chunk_size, min((k + 1) * chunk_size, len(dataset)))
        latents, labels = [], []
        for images, y in DataLoader(Subset(dataset, indices), batch_size=batch_size, num_workers=num_workers):
            images = images.to(dev)
            both = torch.stack([encode(model, images), encode(model, images.flip(-1))], dim=1)
            latents.append(both.half().cpu().numpy())
            labels.append(y.numpy())
        write_chunk(out_dir, k, np.concatenate(latents), np.concatenate(labels).astype(np.int64))
        print(f"rank {rank}: chunk {k + 1}/{num_chunks} written", flush=True)
    if rank == 0:
        meta = {
            "num_chunks": num_chunks,
            "num_images": len(dataset),
            "classes": dataset.classes,
            "vae": vae,
            "scale": SD_VAE_SCALE,
            "image_size": image_size,
            "chunk_size": chunk_size,
            "seed": seed,
        }
        (out_dir / "meta.json").write_text(json.dumps(meta))
    return out_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="ImageFolder split: <data>/<class>/<image>")
    p.add_argument("--out", required=True, help="output directory (data.latents_root/<split>)")
    p.add_argument("--vae", default="stabilityai/sd-vae-ft-ema", help="hub id or local AutoencoderKL directory")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--chunk-size", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--num-workers", type=int, default=4)
    a = p.parse_args()
    extract(a.data, a.out, a.vae, a.image_size, a.batch_size, a.chunk_size, a.seed, a.device, a.num_workers)


if __name__ == "__main__":
    main()
