"""Run-dir names: a direct ``model=... data=...`` command trains into a run dir named after what it
trains, so that two different commands land in two different run dirs (read from Hydra's command line;
the config resolvers in ``configs/train.yaml`` call :func:`run_dir_resolver`)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from dyt.engine.identity import _matches, non_training_keys

# Keys that name the run dir itself (see default_run_dir).
NAMING_KEYS: tuple[str, ...] = ("experiment", "model", "data", "norm", "seed")


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
    :func:`~dyt.engine.identity.non_training_keys` (e.g. ``data.root``, ``trainer.num_workers``) do not change the name.
    """
    overrides = list(overrides)
    parsed = parse_overrides(overrides)
    base = f"{model}_{data}" if is_direct_command(overrides) else str(experiment_name)
    extra = sorted(
        f"{k}={v}" for k, v in parsed.items() if k not in NAMING_KEYS and not _matches(k, non_training_keys())
    )
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
