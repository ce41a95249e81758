"""Process-group setup from torchrun's or SLURM's environment, and model wrapping (DDP / FSDP2).

Rank, world size and local rank come from torchrun (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/
``MASTER_ADDR``/``MASTER_PORT``) or, when those are absent, from SLURM (``SLURM_PROCID``/
``SLURM_NTASKS``/``SLURM_LOCALID``; the master is the first host of ``SLURM_JOB_NODELIST`` and the
port is derived from ``SLURM_JOB_ID``). Backend: NCCL on GPU, gloo on CPU. No process group is
created for a single process.
"""

from __future__ import annotations

import functools
import gc
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

DISTRIBUTED_MODES = ("ddp", "fsdp")
DEVICES = ("auto", "cpu", "cuda")
SHARDINGS = ("full", "hybrid")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: its rank among ``world_size`` and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that writes files."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list (``scontrol show hostnames`` when available, else a parse of
    forms such as ``gpu[003-005,9],cpu1`` -> ``gpu003``)."""
    if shutil.which("scontrol"):
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    m = re.match(r"([^\[,]+)(?:\[([^\]]+)\])?", nodelist)
    if not m:
        raise ValueError(f"cannot parse SLURM_JOB_NODELIST={nodelist!r}")
    first_range = (m.group(2) or "").split(",")[0]
    return m.group(1) + first_range.split("-")[0]


def _ranks_from_env() -> tuple[int, int, int]:
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", 1)) > 1:
        env.setdefault("MASTER_ADDR", first_slurm_host(env["SLURM_JOB_NODELIST"]))
        env.setdefault("MASTER_PORT", str(15000 + int(env.get("SLURM_JOB_ID", 0)) % 20000))
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    return 0, 1, 0


NO_CUDA = (
    "trainer.device=cuda but this machine has no CUDA GPU that PyTorch can see (torch.cuda.is_available() "
    "is False); use trainer.device=auto (the GPU when there is one, else the CPU) or trainer.device=cpu"
)


def setup_distributed(device: str = "auto") -> DistEnv:
    """Pick the device and, for more than one process, initialise the default process group."""
    if device not in DEVICES:
        raise ValueError(f"unknown trainer.device {device!r}; valid choices are: {', '.join(DEVICES)}")
    rank, world_size, local_rank = _ranks_from_env()
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda:
        if not torch.cuda.is_available():
            raise ValueError(NO_CUDA)
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            "nccl" if use_cuda else "gloo", rank=rank, world_size=world_size, **({"device_id": dev} if use_cuda else {})
        )
    return DistEnv(rank, world_size, local_rank, dev)


def teardown_distributed() -> None:
    """Destroy the process group after a garbage collection. Callers drop their references to models
    and optimizers first: destroying gloo while a DDP model lives crashes ~1 run in 5 with SIGABRT
    (gloo's teardown race, measured on CPU)."""
    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op in a single process)."""
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def block_units(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks (``model.wrap_units()``), or ``[]`` when it lists none."""
    units = getattr(model, "wrap_units", None)
    return list(units()) if callable(units) else []


def checkpointed_blocks(num_blocks: int, every_n: int) -> list[int]:
    """Indices of the blocks selective activation checkpointing wraps: one in every ``every_n``, the
    middle one of each group of ``every_n`` (fms-fsdp ``policies/ac_handler.py``, p = 1/every_n:
    p = 1/2 wraps blocks 0, 2, 4, ...)."""
    return [i for i in range(num_blocks) if i % every_n == (every_n - 1) // 2]


def apply_activation_checkpointing(model: nn.Module, mode: bool | str = True, every_n: int = 1) -> None:
    """Recompute activations in backward. ``mode=True``: through the model's own
    ``set_grad_checkpointing(True)`` (timm convention) when it has one, else around each block of
    ``model.wrap_units()``; ``mode="every_n"``: around one block in every ``every_n`` of
    ``model.wrap_units()`` (:func:`checkpointed_blocks`; fms-fsdp's ``selective_checkpointing``).
    State-dict keys do not change."""
    if not (mode is True or mode == "every_n"):
        raise ValueError(f"trainer.activation_checkpointing={mode!r} is not allowed: it must be false, true or every_n")
    if mode == "every_n" and (isinstance(every_n, bool) or not isinstance(every_n, int) or every_n < 1):
        raise ValueError(f"trainer.ac_every_n={every_n!r} is not allowed: it must be a positive whole number")
    if mode is True and callable(getattr(model, "set_grad_checkpointing", None)):
        model.set_grad_checkpointing(True)
        return
    units = block_units(model)
    if not units:
        need = "set_grad_checkpointing() or wrap_units()" if mode is True else "wrap_units()"
        raise ValueError(
            f"trainer.activation_checkpointing={mode} needs a model with {need}, which {type(model).__name__} "
            "lacks; add it, or set trainer.activation_checkpointing=false"
        )
    for i in checkpointed_blocks(len(units), every_n if mode == "every_n" else 1):
        units[i].forward = functools.partial(checkpoint, units[i].forward, use_reentrant=False)


def reshard(model: nn.Module) -> None:
    """Return every FSDP2 module of ``model`` to its sharded state. Forward without backward leaves
    the root's parameters gathered, and in-place writes to the shards (EMA swap, loading) would then
    not reach the gathered copies the next forward uses. No-op for other models."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def _processes_per_node() -> int | None:
    """Processes on this node: torchrun's ``LOCAL_WORLD_SIZE``, else SLURM's ``SLURM_NTASKS_PER_NODE``
    (``8`` or ``8(x16)``); None when neither is set."""
    if "LOCAL_WORLD_SIZE" in os.environ:
        return int(os.environ["LOCAL_WORLD_SIZE"])
    m = re.match(r"\d+", os.environ.get("SLURM_NTASKS_PER_NODE", ""))
    return int(m.group()) if m else None


def shard_group_size(mode: str, sharding: str, group_size: int | None, world_size: int) -> int:
    """How many processes shard one copy of the model: the world for ``full``; for ``hybrid`` (HSDP:
    shard within a group, replicate across groups) ``group_size``, else the processes of one node.
    Refuses a setting that cannot be run, with the fix."""
    if sharding not in SHARDINGS:
        raise ValueError(f"unknown trainer.sharding {sharding!r}; valid choices are: {', '.join(SHARDINGS)}")
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1):
        raise ValueError(f"trainer.shard_group_size={group_size!r} is not allowed: it must be a positive whole number")
    if sharding == "full":
        if group_size is not None:
            raise ValueError(
                f"trainer.shard_group_size={group_size} needs trainer.sharding=hybrid (full sharding shards over "
                "every process)"
            )
        return world_size
    if mode != "fsdp":
        raise ValueError(
            f"trainer.sharding=hybrid needs trainer.distributed=fsdp (it is {mode!r}); set trainer.distributed=fsdp "
            "or trainer.sharding=full"
        )
    if world_size == 1:
        return 1
    size = group_size or _processes_per_node()
    if size is None:
        raise ValueError(
            "trainer.sharding=hybrid: cannot tell how many processes run per node (neither LOCAL_WORLD_SIZE nor "
            "SLURM_NTASKS_PER_NODE is set); set trainer.shard_group_size"
        )
    if world_size % size:
        raise ValueError(
            f"trainer.sharding=hybrid: {world_size} processes do not split into shard groups of {size}; set "
            f"trainer.shard_group_size to a divisor of {world_size}"
        )
    return size


def wrap_model(model: nn.Module, env: DistEnv, mode: str, shard_size: int | None = None) -> nn.Module:
    """DDP (default) or FSDP2: ``fully_shard`` on each ``model.wrap_units()`` block, then the root
    (in place; the returned module is ``model`` itself for FSDP). With ``shard_size`` below the world
    size, FSDP2 shards over a 2-D device mesh (replicate x shard: HSDP, torchtitan's
    ``data_parallel_replicate_degree``): parameters are sharded within each group of ``shard_size``
    consecutive ranks (one node) and replicated across groups, gradients reduce-scattered within a
    group and all-reduced across groups. Identity for one process."""
    if mode not in DISTRIBUTED_MODES:
        raise ValueError(f"unknown trainer.distributed {mode!r}; valid choices are: {', '.join(DISTRIBUTED_MODES)}")
    if not env.is_distributed:
        return model
    if mode == "ddp":
        ids = [env.device.index] if env.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    shard = shard_size or env.world_size
    mesh = (
        init_device_mesh(env.device.type, (env.world_size // shard, shard), mesh_dim_names=("replicate", "shard"))
        if shard < env.world_size
        else None
    )
    for unit in block_units(model):
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model
