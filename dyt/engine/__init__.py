"""The shared trainer engine: ``Trainer(cfg).fit(task)`` (see ``dyt/engine/trainer.py``)."""

from dyt.engine.checkpoint import CheckpointError, load_checkpoint, load_model_state
from dyt.engine.signals import PREEMPTED_EXIT_CODE, PreemptionHandler
from dyt.engine.trainer import NonFiniteLossError, Trainer

__all__ = [
    "CheckpointError",
    "NonFiniteLossError",
    "PREEMPTED_EXIT_CODE",
    "PreemptionHandler",
    "Trainer",
    "load_checkpoint",
    "load_model_state",
]
