"""Run identity: a run dir holds one training recipe, and a command that changes the recipe never
silently resumes, or overwrites, another run.

The recipe is the resolved config minus the keys in :data:`NON_TRAINING_KEYS` (where outputs go, how
often they are written, where and how fast the run executes, evaluation-only settings): changing those
resumes as before. :func:`check_run_identity` compares a new launch with the config a run dir was
trained with and raises :class:`RunIdentityError` naming every other key that differs, with both
values, and the two ways out: a run dir of its own (``run_dir=...`` or another ``seed``), or
``trainer.accept_changes=[key,...]`` to continue this run with the new values on purpose (extending a
finished run with a larger ``trainer.max_steps`` is such a change, and must be said).

:func:`default_run_dir` names the run dir of a direct ``model=... data=...`` command after what it
trains, so that two different commands land in two different run dirs.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
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
    # evaluation only
    "trainer.eval_every_*",
    "task.eval_*",
    "task.fid",
    "task.fid.*",
    "task.lm_eval",
    "task.lm_eval.*",
    "task.sample_steps",
    "task.cfg_scale",
    "task.guidance_channels",
)
# Keys that make a run longer or shorter: changing them is extending (or cutting) the run.
LENGTH_KEYS: tuple[str, ...] = ("trainer.epochs", "trainer.max_steps")
# Keys that name the run dir itself (see default_run_dir).
NAMING_KEYS: tuple[str, ...] = ("experiment", "model", "data", "norm", "seed")
ABSENT = "<absent>"


class RunIdentityError(RuntimeError):
    """A launch whose training recipe differs from the one its run dir was trained with."""


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
    old: Mapping[str, Any], new: Mapping[str, Any], ignore: Sequence[str] = NON_TRAINING_KEYS
) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two resolved configs (plain dicts, e.g.
    ``OmegaConf.to_container(cfg, resolve=True)``), except keys matching ``ignore``:
    ``{key: (old value, new value)}``, :data:`ABSENT` for a key one side lacks."""
    a, b = flatten(old), flatten(new)
    return {
        k: (a.get(k, ABSENT), b.get(k, ABSENT))
        for k in sorted(set(a) | set(b))
        if not _matches(k, ignore) and a.get(k, ABSENT) != b.get(k, ABSENT)
    }


def same_recipe_but_seed(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """What differs between two runs besides their seed (empty: they are seeds of one recipe and may be
    averaged; ``eval.py`` groups runs with this)."""
    return config_diff(a, b, (*NON_TRAINING_KEYS, "seed"))


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


# ---- run-dir names --------------------------------------------------------------------------------
def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """Hydra command-line overrides (``model=vit_b``, ``+x=1``, ``++y=2``, ``~z``) -> ``{key: value}``
    (a deletion ``~z`` maps to ``"~"``)."""
    out: dict[str, str] = {}
    for item in overrides:
        if item.startswith("~"):
            out[item[1:].split("=", 1)[0]] = "~"
            continue
        key, _, value = item.lstrip("+").partition("=")
        out[key] = value
    return out


def _slug(text: str, limit: int = 80) -> str:
    """A path component: unsafe characters become ``_``; too long a name keeps a hash of the whole."""
    safe = re.sub(r"[^A-Za-z0-9._=,+-]", "_", text.replace("/", "-"))
    if len(safe) <= limit:
        return safe
    return safe[: limit - 9] + "-" + hashlib.sha1(text.encode()).hexdigest()[:8]


def default_run_dir(
    overrides: Iterable[str], *, experiment_name: str, model: str, data: str, norm: str, seed: int, root: str = "runs"
) -> str:
    """The run dir a command trains into, derived from its command-line ``overrides`` (Hydra's
    ``HydraConfig.get().overrides.task``) and the composed config's names.

    - ``experiment=X`` chosen, or nothing chosen: ``<root>/<experiment_name>/<norm>/seed<seed>``
      (``runs/paper/vit_b_in1k/dyt/seed0``);
    - a direct ``model=... data=...`` command: ``<root>/<model>_<data>/<norm>/seed<seed>``.

    Every other override that changes training is appended to the experiment's last level
    (``runs/paper/vit_b_in1k+optim.lr=6e-3/dyt/seed0``), so two commands that train differently never
    share a run dir and the same command always finds its own again. Overrides of
    :data:`NON_TRAINING_KEYS` (e.g. ``data.root``, ``trainer.num_workers``) do not change the name.
    """
    overrides = list(overrides)
    parsed = parse_overrides(overrides)
    base = f"{model}_{data}" if is_direct_command(overrides) else str(experiment_name)
    extra = sorted(f"{k}={v}" for k, v in parsed.items() if k not in NAMING_KEYS and not _matches(k, NON_TRAINING_KEYS))
    parent, _, last = base.rpartition("/")
    name = _slug(last + ("+" + ",".join(extra) if extra else ""))
    parts = [root, *[_slug(p) for p in parent.split("/") if p], name, str(norm), f"seed{seed}"]
    return "/".join(parts)


def command_line() -> list[str]:
    """The overrides of the running Hydra job (none outside one, e.g. under the compose API)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except (ImportError, ValueError):
        return []


def is_direct_command(overrides: Iterable[str]) -> bool:
    """``model=...`` or ``data=...`` chosen without an ``experiment=``."""
    parsed = parse_overrides(overrides)
    return "experiment" not in parsed and bool({"model", "data"} & parsed.keys())


def run_dir_resolver(experiment_name: str, model: str, data: str, norm: str, seed: int) -> str:
    """``${dyt_run_dir:...}`` in ``configs/train.yaml``: :func:`default_run_dir` of the running command."""
    return default_run_dir(
        command_line(), experiment_name=experiment_name, model=model, data=data, norm=norm, seed=seed
    )


def experiment_name_resolver(default: str, model: str, data: str) -> str:
    """``${dyt_experiment_name:...}`` of the default experiment: ``<model>_<data>`` for a direct command."""
    return f"{model}_{data}" if is_direct_command(command_line()) else default
