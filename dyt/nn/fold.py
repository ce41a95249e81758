"""Inference folding: move each point-wise norm's affine into the linear layers that read its output.

A DyT (or Derf) computes ``y = w * f(x) + b`` per channel (paper Sec. 4, Eq. 2). When ``y`` feeds only
linear layers, ``W y + c = (W diag(w)) f(x) + (W b + c)``: the affine disappears into the next matmul,
exactly, and the norm is left as the bare ``f(x) = tanh(alpha * x)`` (paper Sec. 6 notes that DyT
"could be fused with the preceding matmul"; this is the other side). No normalization layer can do
this, because its statistics depend on the input.

Which linears read a norm's output comes from the model itself when it defines
``norm_consumers() -> [(norm, [linear, ...]), ...]``; otherwise from a ``torch.fx`` trace of the model,
which lists every consumer of every norm call. A norm is folded only when each consumer is an
``nn.Linear`` applied to that norm's output and to nothing else (reading ``.shape`` is allowed). In
our models these are the attention q/k/v (or fused qkv) projections, the MLP's first layer(s) and
the head.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import torch
from torch import fx, nn

from dyt.nn.pointwise import Derf, DyT

FOLDABLE = (DyT, Derf)
_METADATA = {"shape", "dtype", "device", "ndim"}  # reading these from the norm's output is harmless


class _Tracer(fx.Tracer):
    """Keeps norms and linears as leaves so the graph shows exactly who reads each norm's output."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, FOLDABLE) or super().is_leaf_module(m, qualname)


def _is_metadata_read(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target is getattr and node.args[1] in _METADATA) or (
        node.op == "call_method" and node.target in ("size", "dim")
    )


def _traced_consumers(model: nn.Module) -> list[tuple[nn.Module, list[nn.Linear]]]:
    try:
        graph = _Tracer().trace(model)
    except Exception as error:  # fx raises many types for untraceable control flow
        raise RuntimeError(
            f"dyt.fold could not trace {type(model).__name__} with torch.fx ({type(error).__name__}: {error}). "
            "Define model.norm_consumers() returning [(norm, [linear, ...]), ...] for the norms whose output "
            "feeds only those linear layers."
        ) from error
    modules = dict(model.named_modules())
    calls: dict[str, list[fx.Node]] = defaultdict(list)
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target].append(node)
    pairs = []
    for name, nodes in calls.items():
        if not isinstance(modules[name], FOLDABLE) or len(nodes) != 1:
            continue  # a norm applied twice would need its consumers to agree; not worth the risk
        readers = [u for u in nodes[0].users if not _is_metadata_read(u)]
        if readers and all(
            u.op == "call_module"
            and isinstance(modules[u.target], nn.Linear)
            and len(calls[u.target]) == 1
            and u.args == (nodes[0],)
            and not u.kwargs
            for u in readers
        ):
            pairs.append((modules[name], [modules[u.target] for u in readers]))
    return pairs


def norm_consumers(model: nn.Module) -> list[tuple[nn.Module, list[nn.Linear]]]:
    """(norm, linears reading its output) for every foldable norm of ``model``: the model's own
    ``norm_consumers()`` when it has one, else found by tracing."""
    if hasattr(model, "norm_consumers"):
        return [(norm, list(linears)) for norm, linears in model.norm_consumers()]
    return _traced_consumers(model)


def _check_pair(norm: nn.Module, linears: Iterable[nn.Module]) -> None:
    if not isinstance(norm, FOLDABLE) or norm.layout != "channels_last":
        raise ValueError(f"cannot fold {norm!r}: only channels_last DyT/Derf layers fold into a linear layer")
    for linear in linears:
        if not isinstance(linear, nn.Linear) or linear.in_features != norm.dim:
            raise ValueError(
                f"cannot fold {norm!r} into {linear!r}: the consumer must be an nn.Linear "
                f"with in_features == {norm.dim}"
            )


@torch.no_grad()
def _fold_pair(norm: nn.Module, linears: list[nn.Linear]) -> None:
    for linear in linears:
        if norm.bias is not None:
            shift = linear.weight @ norm.bias.to(linear.weight.dtype)
            if linear.bias is None:
                linear.bias = nn.Parameter(shift)
            else:
                linear.bias += shift
        if norm.weight is not None:
            linear.weight *= norm.weight.to(linear.weight.dtype)
    norm.weight, norm.bias, norm.affine = None, None, False


def fold(model: nn.Module) -> int:
    """Fold every DyT/Derf affine into the linear layers that consume its output, in place.

    For inference only: afterwards the norms compute ``f(alpha * x)`` and the linears carry the
    affine, so the outputs are unchanged (to rounding) but the parameters are no longer the trained
    ones (do not keep training or save it as a training checkpoint). Norms whose output reaches
    anything other than linear layers (a residual, pooling, a reshape) are left as they are.

    Returns:
        The number of norms folded.
    """
    pairs = [(norm, linears) for norm, linears in norm_consumers(model) if norm.affine]
    for norm, linears in pairs:
        _check_pair(norm, linears)
    seen: set[int] = set()
    for _, linears in pairs:
        for linear in linears:
            if id(linear) in seen:
                raise ValueError(f"{linear!r} is listed as a consumer of two norms; folding both would be wrong")
            seen.add(id(linear))
    for norm, linears in pairs:
        _fold_pair(norm, linears)
    return len(pairs)
