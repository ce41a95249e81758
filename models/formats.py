"""Shared pieces of the published checkpoint layouts that ``init_from`` reads
(``models.PUBLISHED_FORMATS``): each family's module (models/mae_hf.py, models/dino_official.py, ...)
renames a released state dict to our names and refuses, in one error, every key its layout does not have."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch


def show(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def refuse(fmt: str, problem: str, fix: str) -> None:
    """Raise the ``init_from`` error for a published checkpoint (``dyt.engine.weights.InitFromError``)."""
    from dyt.engine.weights import InitFromError

    raise InitFromError(f"init_from ({fmt}): {problem}; {fix}")


def check_layout(state: Mapping[str, torch.Tensor], pattern: str, fmt: str, layout: str) -> None:
    """Every key of ``state`` must match ``pattern`` (a full-match regex of the layout's names); the
    others are named in one error."""
    unexpected = [k for k in state if not re.fullmatch(pattern, k)]
    if unexpected:
        refuse(fmt, f"unexpected key(s) {show(unexpected)}", f"a {layout} has none of these; is it another model's?")


def require(state: Mapping[str, torch.Tensor], keys: Iterable[str], fmt: str, layout: str) -> None:
    """Every one of ``keys`` must be in ``state``; the missing ones are named in one error."""
    missing = [k for k in keys if k not in state]
    if missing:
        refuse(fmt, f"missing key(s) {show(missing)}", f"a complete {layout} has them; is the file truncated?")


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """``state`` without ``prefix`` on its keys, when every key has it."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def rename(
    state: Mapping[str, torch.Tensor], rules: list[tuple[str, str | None]], fmt: str, layout: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``state`` renamed by ``rules`` (full-match regex, replacement; the first that matches applies), after
    refusing the keys no rule matches. Returns the renamed weights and the keys whose replacement is None
    (buffers or tied copies the caller checks and drops)."""
    check_layout(state, "|".join(p for p, _ in rules), fmt, layout)
    out, held = {}, {}
    for key, value in state.items():
        pattern, new = next((p, n) for p, n in rules if re.fullmatch(p, key))
        if new is None:
            held[key] = value
        else:
            out[re.sub(pattern, new, key)] = value
    return out, held
