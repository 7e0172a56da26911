"""Evaluation of graphs with the ops' reference (NumPy) semantics.

f16/bf16 operands are computed in float32 and every result is rounded (floats) or wrapped
(integers narrower than their storage) to its declared type. Used by the reference backend and by
constant folding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .core import Graph, Node, Value
from .dtypes import DType, QuantType, to_dtype
from .errors import BackendError, KilnError
from .ops.quant import QuantizedArg
from .registry import Context, default_context
from .signature import bind_inputs, bind_type
from .types import TensorType, Type


def _compute_view(x: Any, t: Type) -> Any:
    if isinstance(t, TensorType) and isinstance(t.dtype, QuantType):
        k, n = t.static_shape
        return QuantizedArg(t.dtype, (k, n), x)  # quantized ops need the format beside the codes
    if isinstance(t, TensorType) and isinstance(t.dtype, DType) and x.dtype != t.dtype.compute_dtype:
        return x.astype(t.dtype.compute_dtype)
    return x


def _finish(node: Node, y: Any, t: Type) -> Any:
    if not isinstance(t, TensorType) or not isinstance(t.dtype, DType):
        return y
    with np.errstate(all="ignore"):
        y = to_dtype(np.asarray(y), t.dtype)
    if tuple(y.shape) != t.static_shape:
        raise BackendError(
            f"{node.describe()}: reference produced shape {list(y.shape)}, type says {t} "
            "(an inconsistency in the op's definition: please report it)"
        )
    return y


def run_node(graph: Graph, node: Node, args: list[Any], dims: Mapping[str, int], ctx: Context) -> list[Any]:
    """Evaluate one node on concrete arguments (already checked against their types)."""
    if node.op == "constant":
        ref = node.attrs.ref  # type: ignore[attr-defined]
        if ref not in graph.constants:
            raise BackendError(
                f"constant @{ref} has no data: load the graph with its weights "
                "(kiln.load, or parse(..., weights=...))"
            )
        return [graph.constants[ref]]
    opdef = ctx.lookup(node.op)
    out_types = [bind_type(r.type, dims) for r in node.results]
    views = [_compute_view(a, v.type) for a, v in zip(args, node.operands, strict=True)]
    try:
        with np.errstate(all="ignore"):
            ys = opdef.reference(node.attrs, views, out_types)
    except KilnError as e:
        raise type(e)(f"{node.describe()}: {e}") from None
    return [_finish(node, y, t) for y, t in zip(ys, out_types, strict=True)]


def interpret(graph: Graph, inputs: Mapping[str, Any], ctx: Context | None = None) -> dict[str, Any]:
    """Run ``graph`` on named inputs; returns named outputs."""
    ctx = ctx or default_context()
    vals, dims = bind_inputs(graph, inputs)
    env: dict[Value, Any] = dict(zip(graph.inputs, vals, strict=True))
    for node in graph.nodes:
        ys = run_node(graph, node, [env[v] for v in node.operands], dims, ctx)
        env.update(zip(node.results, ys, strict=True))
    return {name: env[v] for name, v in graph.outputs}
