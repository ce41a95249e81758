"""Models and batches to analyse: a run dir or checkpoint of this codebase (its checkpoints here; the
model with ``dyt.tasks.load_run``), or a timm model (optionally converted with ``dyt.convert``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import default_collate

from dyt.engine.checkpoint import list_checkpoints


def run_checkpoints(run_dir: str | Path) -> list[Path]:
    """Every checkpoint a run dir keeps, oldest first (``trainer.keep_checkpoints`` sets how many)."""
    return list_checkpoints(Path(run_dir) / "checkpoints")


def task_batch(task: Any, n: int = 64) -> Any:
    """The first ``n`` items of the task's validation set (else its training set), collated: one fixed
    mini-batch, the same for every checkpoint of a run."""
    data = task.eval_data() or task.train_data()
    items = [data[i] for i in range(min(n, len(data)))]
    return (task.collate_fn() or default_collate)(items)


def classifier_inputs(batch: Any) -> torch.Tensor:
    """The images of an ``(images, labels)`` batch (the classification task's), else the batch itself."""
    return batch[0] if isinstance(batch, list | tuple) else batch


def timm_model(name: str, to: str | None = None, seed: int = 0, **kwargs: Any) -> nn.Module:
    """timm model ``name`` with random weights (seeded; no download), converted to norm ``to`` with
    ``dyt.convert`` when given."""
    import timm

    from dyt.nn.convert import convert

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs)
    if to:
        convert(model, to=to)
    return model.eval()
