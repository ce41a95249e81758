"""A train.py / eval.py command line checked before Hydra runs it: each mistake is one ``error:`` line.

Hydra's own messages for a mistyped group option (``norm=dytt``: the whole list of options, the search
path and a hint about ``HYDRA_FULL_ERROR``), a mistyped key (``trainer.epoch=3``: five lines ending in
the advice to add it with ``+``) or a parse error are replaced by one line naming what was wrong, what
is allowed (the close matches; ``DYT_DEBUG=1`` lists every option) and the fix. A key added with ``+``
or ``++`` must be one some config defines (nothing else reads it): ``+trainer.epoch=3`` is refused,
``+norm.sites.attn.alpha_init=0.5`` (per-site options, an open group) and ``+model.<argument>`` (any
argument of the model preset's constructor) are not. The command line is also normalised: flags may
come after overrides (``train.py trainer.progress=log -m norm=...``), and ``--cfg`` prints the
resolved config (``--resolve`` is implied).
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import json
import os
import re
import shutil
import sys
import time
import typing
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEBUG_ENV = "DYT_DEBUG"
# Hydra's flags (hydra/_internal/utils.py, get_args_parser) that take a value, and those after which
# the command does not run a job (nothing to check).
_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn"}
_VALUE_FLAGS |= {"--config-dir", "-cd", "--experimental-rerun"}
_INFO_CHOICES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}
_NO_JOB = {"--help", "-h", "--hydra-help", "--version", "--shell-completion", "-sc", "--info", "-i"}
_NO_JOB |= {"--experimental-rerun", "--config-path", "-cp", "--config-dir", "-cd", "--config-name", "-cn"}
_MODES = {"--run": "--run", "-r": "--run", "--multirun": "-m", "-m": "-m", "--cfg": "--cfg", "-c": "--cfg"}
_MODES |= {"--info": "--info", "-i": "--info", "--shell-completion": "-sc", "-sc": "-sc"}
# Keys a user may add with "+" although no config file defines them (open groups).
OPEN_PREFIXES = ("norm.sites.", "hydra.")


class UsageError(ValueError):
    """A command line that cannot run; the message is the one line to print."""


def _debug() -> bool:
    return bool(os.environ.get(DEBUG_ENV))


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(Hydra flags with their values, overrides), in their original order within each."""
    flags, overrides, args = [], [], list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith("-"):
            overrides.append(arg)
            continue
        flags.append(arg)
        takes_value = arg in _VALUE_FLAGS or (arg in ("--info", "-i") and args and args[0] in _INFO_CHOICES)
        if takes_value and args:
            flags.append(args.pop(0))
    return flags, overrides


def normalise_argv(argv: Sequence[str]) -> list[str]:
    """Flags first (argparse takes no flag after the first override), and ``--cfg`` resolved."""
    flags, overrides = split_argv(argv)
    shown = [flags[i + 1] for i, a in enumerate(flags[:-1]) if a in ("--cfg", "-c")]
    shown += [f.split("=", 1)[1] for f in flags if f.startswith("--cfg=")]
    if shown and shown[0] in ("job", "all") and "--resolve" not in flags:  # Hydra's own config keeps ${...}
        flags.append("--resolve")
    return flags + overrides


def options(group: str) -> list[str]:
    """The options of a config group: ``configs/<group>/**/*.yaml`` without the suffix."""
    root = CONFIGS / group
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def _choices(wrong: str, allowed: Sequence[str], what: str, prefix: str = "") -> str:
    """'did you mean a or b? (DYT_DEBUG=1 lists all N)', or the whole list under DYT_DEBUG=1."""
    close = difflib.get_close_matches(wrong, allowed, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(prefix + c for c in close)}? " if close else ""
    if _debug():
        return f"{hint}{what} are: {', '.join(allowed)}"
    return f"{hint}({len(allowed)} {what}; DYT_DEBUG=1 lists them)"


def check_option(group: str, value: str) -> None:
    if value in ("null", "None") or (CONFIGS / group / f"{value}.yaml").is_file():
        return
    allowed = options(group)
    raise UsageError(
        f"{group}={value} is not an option of the config group {group} (no configs/{group}/{value}.yaml): "
        + _choices(value, allowed, f"options of {group}", prefix=f"{group}=")
    )


def _package(path: Path, text: str) -> str:
    group = path.parent.relative_to(CONFIGS).as_posix()
    m = re.search(r"^#\s*@package\s+(\S+)", text, re.M)
    package = m.group(1) if m else "_group_"
    if package == "_global_" or group == ".":
        return ""
    return group.replace("/", ".") if package == "_group_" else package


def _walk(node: Any, prefix: str) -> Iterator[str]:
    for key, value in node.items():
        if not prefix and key == "defaults":
            continue
        full = f"{prefix}.{key}" if prefix else str(key)
        yield full
        if isinstance(value, dict):
            yield from _walk(value, full)


@cache
def known_keys() -> frozenset[str]:
    """Every key any config file (group option, experiment, entry config) defines, dotted."""
    keys: set[str] = set()
    for path in CONFIGS.rglob("*.yaml"):
        if path.relative_to(CONFIGS).parts[0] == "hydra":
            continue
        text = path.read_text()
        data = yaml.safe_load(text)
        if isinstance(data, dict):
            keys.update(_walk(data, _package(path, text)))
    return frozenset(keys)


def _model_arguments(model_name: str) -> list[str] | None:
    """The keyword arguments of model preset ``model_name`` (None: it takes any)."""
    import models

    models._load_families()
    fn = models._MODELS.get(model_name)
    if fn is None:
        return []
    names: list[str] = []
    for target in (fn, _returned_class(fn)):  # a preset passes **kwargs on to its model class
        if target is None:
            return None
        params = inspect.signature(target).parameters.values()
        names += [p.name for p in params if p.name not in ("self", "norm") and p.kind is not p.VAR_KEYWORD]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return sorted(set(names))
    return None


def _returned_class(fn: Any) -> type | None:
    try:
        cls = typing.get_type_hints(fn).get("return")
    except Exception:  # an annotation that does not resolve: accept any argument
        return None
    return cls if isinstance(cls, type) else None


def unknown_key(key: str, value: str, added: bool) -> str:
    """The one line for a key no config defines (``trainer.epoch=3`` or ``+trainer.epoch=3``)."""
    parent, _, leaf = key.rpartition(".")
    siblings = sorted(k.rpartition(".")[2] for k in known_keys() if k.rpartition(".")[0] == parent)
    where = f"{parent} has" if parent else "the config has"
    close = difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
    fix = f"set {parent + '.' if parent else ''}{close[0]}={value} (no '+')" if close else "remove it"
    what = "adds a key nothing reads" if added else "names no key"
    return (
        f"{'+' if added else ''}{key}={value} {what}: {where} no key {leaf!r}; {fix}. "
        + _choices(leaf, siblings, f"keys of {parent or 'the config'}").split("? ", 1)[-1]
    )


def check_added_key(key: str, value: str, cfg: Any) -> None:
    """``+key=value``: refused unless some config defines ``key`` or its group is open."""
    if key in known_keys() or key.startswith(OPEN_PREFIXES):
        return
    if key.startswith("model.") and key.count(".") == 1:
        accepted = _model_arguments(str(cfg.model.name))
        if accepted is None or key[len("model.") :] in accepted:
            return
        raise UsageError(
            f"+{key}={value} is not an argument of the model preset {cfg.model.name}; "
            + _choices(key[len("model.") :], accepted, f"arguments of {cfg.model.name}")
        )
    raise UsageError(unknown_key(key, value, added=True))


def _first_values(parsed: list[Any]) -> Iterator[str]:
    """Each override as Hydra's compose API takes it: a sweep contributes its first value."""
    for o in parsed:
        if not o.is_sweep_override():
            yield o.input_line
            continue
        prefix = {"ADD": "+", "FORCE_ADD": "++", "DEL": "~"}.get(o.type.name, "")
        first = next(iter(o.sweep_string_iterator()), None)
        yield f"{prefix}{o.get_key_element()}={first}"


def _values(o: Any) -> list[str]:
    if o.is_sweep_override():
        try:
            return list(o.sweep_string_iterator())
        except Exception:  # glob(), range() of a non-numeric group: Hydra says
            return []
    return [o.get_value_element_as_str()]


def _hydra_error(e: Exception, overrides: Sequence[str]) -> str:
    """Hydra's composition error as one line."""
    text = " ".join(str(e).split())
    m = re.search(r"Could not override '([^']+)'", text)
    if m:
        key = m.group(1)
        value = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") == key), "...")
        return unknown_key(key, value, added=False)
    m = re.search(r"Could not append to config\. An item is already at '([^']+)'", text)
    if m:
        key = m.group(1)
        value = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+") == key), "...")
        return f"+{key}={value} adds a key that exists already: set it without '+' ({key}={value})"
    m = re.search(r"Ambiguous value for argument '([^']+)'", text)
    if m:
        return f"{m.group(1)}: a comma-separated value is a sweep; run it with -m (python train.py -m {m.group(1)})"
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"{first} (python train.py --help lists the config groups)"


def check_command(config_name: str, overrides: Sequence[str], multirun: bool = False) -> Any:
    """Raise :class:`UsageError` for the first mistake in ``overrides``; return the composed config
    (of the first job of a sweep)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as e:
        first = " ".join(str(e).split("\n")[0].split())
        raise UsageError(f"cannot parse the overrides: {first}; each one is key=value, +key=value or ~key") from None
    for o in parsed:
        if o.is_sweep_override() and not multirun:
            raise UsageError(
                f"{o.input_line}: a comma-separated value (or glob/range) is a sweep; run it with -m "
                f"(python train.py -m {o.input_line}), or quote a string value: key='a,b'"
            )
        group = o.key_or_group
        if not o.is_delete() and "." not in group and not group.startswith("hydra") and (CONFIGS / group).is_dir():
            for value in _values(o):
                check_option(group, value)
    first = list(_first_values(parsed))
    try:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
            cfg = compose(config_name, overrides=first, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise UsageError(_hydra_error(e, first)) from None
    for o in parsed:
        if o.is_add() or o.is_force_add():
            key = o.key_or_group
            if "." in key or not (CONFIGS / key).is_dir():
                for value in _values(o) or ["..."]:
                    check_added_key(key, value, cfg)
    return cfg


def _as_run(cfg: Any, fn: Any) -> Any:
    """``fn()`` with ``cfg`` as the running job's Hydra config (the run-dir resolver reads its overrides)."""
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    try:
        return fn()
    finally:
        HydraConfig.instance().cfg = None


def preflight(config_name: str, argv: Sequence[str]) -> list[str]:
    """``argv`` normalised for Hydra; a mistake prints one ``error:`` line (rank 0) and exits with 2."""
    argv = normalise_argv(argv)
    flags, overrides = split_argv(argv)
    try:
        modes = sorted({_MODES[f.split("=", 1)[0]] for f in flags if f.split("=", 1)[0] in _MODES})
        if len(modes) > 1:
            raise UsageError(
                f"{' and '.join(modes)} cannot be combined: give one of them (--cfg prints one job's config)"
            )
        if any(f.split("=", 1)[0] in _NO_JOB for f in flags):
            return argv
        multirun = any(f in ("-m", "--multirun") for f in flags)
        cfg = check_command(config_name, overrides, multirun=multirun)
        if not multirun and cfg.get("run_dir"):
            run_dir = Path(_as_run(cfg, lambda: str(cfg.run_dir))).expanduser().resolve()
            if (missing := _first_missing(run_dir)) is not None:
                _NEW_DIRS[str(run_dir)] = missing
    except UsageError as e:
        if _debug():
            raise
        exit_with_error(f"error: {e}")
    return argv


def exit_with_error(message: str) -> typing.NoReturn:
    """Exit with status 2 after ``message`` (an ``error:`` line, perhaps with a hint line below it).

    Rank 0 prints it (every rank fails alike: one copy is enough). Under torchrun every rank also
    leaves it in its error file (``TORCHELASTIC_ERROR_FILE``, in the format of torch's
    ``ErrorHandler.record_exception``), where ``python -m dyt.launch`` reads it: the launcher prints the
    errors rank 0 did not, instead of torchrun's report."""
    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr, flush=True)  # first: a rank stopped meanwhile has still printed
    if path := os.environ.get("TORCHELASTIC_ERROR_FILE"):
        info = {"py_callstack": message, "timestamp": str(int(time.time()))}  # what torchrun's report shows
        record = {"message": {"message": message, "extraInfo": info}}
        with contextlib.suppress(OSError):
            Path(path).write_text(json.dumps(record))
    sys.exit(2)


# Files a start writes before anything of value: Hydra's own dir, the lock, the start-up record.
START_DEBRIS = frozenset({"hydra", "run.lock", "resolved.json"})


@contextlib.contextmanager
def leave_nothing_on_failure(run_dir: Any) -> Iterator[None]:
    """A start that fails (exception or non-zero exit) removes the run dir it created, when the dir
    holds only :data:`START_DEBRIS` (never while another process holds its lock). A run dir holding
    checkpoints, metrics or a config from an earlier start is left alone."""
    path = Path(str(run_dir)).expanduser() if run_dir else None
    created = None if path is None else _first_missing(path)
    try:
        yield
    except BaseException as e:
        if path is not None and not (isinstance(e, SystemExit) and e.code in (0, None)):
            _remove_fresh(path, created)
        raise


# run dir -> its outermost directory that did not exist before this command (recorded by preflight,
# before Hydra creates <run_dir>/hydra)
_NEW_DIRS: dict[str, Path] = {}


def _first_missing(path: Path) -> Path | None:
    """The outermost directory of ``path`` that does not exist yet (Hydra's ``hydra/`` only: ``path``)."""
    if path.is_dir() and {p.name for p in path.iterdir()} <= {"hydra"}:
        return _NEW_DIRS.get(str(path.resolve()), path)  # Hydra made it for this start
    missing = None
    for p in (path, *path.parents):
        if p.exists():
            break
        missing = p
    return missing


def _remove_fresh(path: Path, created: Path | None) -> None:
    from dyt.engine.runlock import RunLockedError, acquire_run_lock

    if created is None or not path.is_dir() or not {p.name for p in path.iterdir()} <= START_DEBRIS:
        return
    try:
        lock = acquire_run_lock(path) if (path / "run.lock").exists() else None
    except RunLockedError:
        return  # another process started in it meanwhile
    shutil.rmtree(created, ignore_errors=True)
    if lock is not None:
        lock.release()
