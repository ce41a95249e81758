"""Run identity: a run dir holds one training recipe, and a command that changes the recipe never
silently resumes, or overwrites, another run.

The recipe is the resolved config minus the keys in :data:`NON_TRAINING_KEYS` (where outputs go, how
often they are written, where and how fast the run executes, evaluation-only settings): changing those
resumes as before. :func:`check_run_identity` compares a new launch with the config a run dir was
trained with and raises :class:`RunIdentityError` naming every other key that differs, with both
values, and the two ways out: a run dir of its own (``run_dir=...`` or another ``seed``), or
``trainer.accept_changes=[key,...]`` to continue this run with the new values on purpose (extending a
finished run with a larger ``trainer.max_steps`` is such a change, and must be said).

Run-dir naming (which reads Hydra's command line) lives in the CLI package, ``dyt/cli/naming.py``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# Keys (fnmatch patterns on dotted paths) whose value does not change what is trained.
NON_TRAINING_KEYS: tuple[str, ...] = (
    "hydra",
    "hydra.*",
    "hydra/*",  # launcher and logging choices on the command line (hydra/launcher=submitit_slurm)
    "logger",
    "logger.*",
    "run_dir",
    "experiment_name",  # a label; the run dir is what identifies a run
    "paper_ref",
    "trainer.progress",
    "trainer.log_every_steps",
    "trainer.probe_every_steps",
    "trainer.ckpt_every_*",
    "trainer.keep_checkpoints",
    "trainer.async_checkpoint",
    "trainer.accept_changes",
    # where and how fast the same recipe executes (results do not depend on them beyond float rounding)
    "trainer.device",
    "trainer.num_workers",
    "trainer.compile",
    "trainer.peak_flops",
    "trainer.activation_checkpointing",
    "trainer.ac_every_n",
    "trainer.micro_batch",
    "trainer.distributed",
    "trainer.sharding",
    "trainer.shard_group_size",
    "data.root",  # the same data moved to another path
    # evaluation only (the tasks declare their own: declare_non_training_keys)
    "trainer.eval_every_*",
)
_DECLARED: list[str] = []  # evaluation-only keys the tasks declare (``dyt.tasks.EVAL_ONLY_KEYS``)
# Keys that make a run longer or shorter: changing them is extending (or cutting) the run.
LENGTH_KEYS: tuple[str, ...] = ("trainer.epochs", "trainer.max_steps")
ABSENT = "<absent>"


class RunIdentityError(RuntimeError):
    """A launch whose training recipe differs from the one its run dir was trained with."""


def declare_non_training_keys(patterns: Iterable[str]) -> None:
    """Add keys (fnmatch patterns) that do not change what is trained, e.g. a task's evaluation-only
    settings; the engine names no task's keys itself."""
    _DECLARED.extend(p for p in patterns if p not in _DECLARED)


def non_training_keys() -> tuple[str, ...]:
    """:data:`NON_TRAINING_KEYS` and the keys declared with :func:`declare_non_training_keys`."""
    return (*NON_TRAINING_KEYS, *_DECLARED)


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}``; lists stay whole values."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def config_diff(
    old: Mapping[str, Any], new: Mapping[str, Any], ignore: Sequence[str] | None = None
) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two resolved configs (plain dicts, e.g.
    ``OmegaConf.to_container(cfg, resolve=True)``), except keys matching ``ignore`` (default:
    :func:`non_training_keys`):
    ``{key: (old value, new value)}``, :data:`ABSENT` for a key one side lacks."""
    a, b = flatten(old), flatten(new)
    ignore = non_training_keys() if ignore is None else ignore
    return {
        k: (a.get(k, ABSENT), b.get(k, ABSENT))
        for k in sorted(set(a) | set(b))
        if not _matches(k, ignore) and a.get(k, ABSENT) != b.get(k, ABSENT)
    }


def same_recipe_but_seed(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """What differs between two runs besides their seed (empty: they are seeds of one recipe and may be
    averaged; ``eval.py`` groups runs with this)."""
    return config_diff(a, b, (*non_training_keys(), "seed"))


def check_run_identity(
    old: Mapping[str, Any], new: Mapping[str, Any], run_dir: str, accept: Iterable[str] = ()
) -> dict[str, tuple[Any, Any]]:
    """Raise :class:`RunIdentityError` if ``new`` (the launch) would train differently from ``old``
    (the config ``run_dir`` was trained with: its checkpoint's ``config``), apart from the keys in
    ``accept`` (``trainer.accept_changes``). Returns the accepted differences, for the caller to record."""
    accept = tuple(accept)
    diff = config_diff(old, new)
    refused = {k: v for k, v in diff.items() if not _matches(k, accept)}
    if refused:
        shown = "; ".join(f"{k}: {_show(o)} -> {_show(n)}" for k, (o, n) in refused.items())
        keys = ",".join(refused)
        length = [k for k in refused if k in LENGTH_KEYS]
        why = (
            f"to extend (or cut) the run on purpose, add trainer.accept_changes=[{','.join(length)}]"
            if length and len(length) == len(refused)
            else f"to continue this run with the new values on purpose, add trainer.accept_changes=[{keys}]"
        )
        raise RunIdentityError(
            f"run dir {run_dir} was trained with a different config ({shown}). To start a new run, give it "
            f"its own run_dir=... (or another seed=...); {why}"
        )
    return diff


def _show(v: Any) -> str:
    text = repr(v) if isinstance(v, str) and v != ABSENT else str(v)
    return text if len(text) <= 60 else text[:57] + "..."
