"""Model FLOPs utilisation (MFU, as torchtitan and fms-fsdp report it): the device's peak and the
per-device rates logged with every training line.

The model's training FLOPs per sample come from the task (:meth:`dyt.engine.task.Task.flops_per_sample`),
which asks the model (``flops_per_token`` / ``flops_per_image``, counted as torchtitan does: see
``models/flops.py``). MFU = achieved model FLOP/s per device / the device's peak.
"""

from __future__ import annotations

import torch

# Dense bf16 tensor-core peak per device, first match in the CUDA device name wins (torchtitan
# tools/utils.py get_peak_flops, from NVIDIA's H100 / H200 / A100 datasheets, without sparsity).
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("A100", 312e12),
)


def peak_flops(device: torch.device, override: float | None = None) -> float | None:
    """FLOP/s one device can do: ``override`` (``trainer.peak_flops``) when set, else the table's entry
    for this CUDA device; None on CPU and on devices the table lacks (then only the rate is logged)."""
    if override is not None:
        if isinstance(override, bool) or not isinstance(override, (int, float)) or not override > 0:
            raise ValueError(
                f"trainer.peak_flops={override!r} is not allowed: it must be a positive number of FLOP/s "
                "(e.g. 989e12), or null"
            )
        return float(override)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in name), None)


def throughput_metrics(
    samples_per_s: float,
    units_per_sample: float,
    unit: str,
    world_size: int,
    flops_per_sample: float | None,
    peak: float | None,
) -> dict[str, float]:
    """Per-device rates of one step: ``train/<unit>_per_device_per_s``, with a FLOPs count also
    ``train/tflop_per_device_per_s`` (model TFLOP/s) and, with a known peak, ``train/mfu`` (percent)."""
    per_device = samples_per_s / world_size
    row = {f"train/{unit}_per_device_per_s": per_device * units_per_sample}
    if flops_per_sample:
        rate = per_device * flops_per_sample
        row["train/tflop_per_device_per_s"] = rate / 1e12
        if peak:
            row["train/mfu"] = 100 * rate / peak
    return row
