"""unfuse: inline ``fused`` kernel bodies and expand ``attention`` into primitive ops.

The inverse of the fusion passes, for consumers that want one op per node: the ONNX exporter,
backends that lack a template for some kernel kind, and tests that compare fused with unfused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.core import Graph, Node, Value
from ..ir.registry import Context
from .base import Pass, Rewriter


def expand_attention(rw: Rewriter, node: Node) -> Value:
    """softmax(q @ k^T * scale + bias [+ causal mask]) @ v as primitive ops."""
    q, k, v, bias = node.operands
    a = node.attrs
    kt = k.tensor_type
    perm = (*range(kt.rank - 2), kt.rank - 1, kt.rank - 2)
    dt = q.tensor_type.scalar_dtype.np_dtype
    s = rw.op("matmul", q, rw.op("transpose", k, perm=perm))
    s = rw.op("mul", s, rw.constant(np.asarray(a.scale, dt), "scale"))  # type: ignore[attr-defined]
    s = rw.op("add", s, bias)
    if a.causal:  # type: ignore[attr-defined]
        st = s.tensor_type
        sq, sk = st.shape[-2], st.shape[-1]
        assert isinstance(sq, int) and isinstance(sk, int), "causal attention needs static lengths"
        keep = np.arange(sk)[None, :] <= np.arange(sq)[:, None] + (sk - sq)
        s = rw.op("where", rw.constant(keep, "causal"), s, rw.constant(np.asarray(-np.inf, dt), "neg_inf"))
    p = rw.op("softmax", s, axis=s.tensor_type.rank - 1)
    return rw.op("matmul", p, v)


def inline_body(rw: Rewriter, node: Node) -> list[Value]:
    body = node.attrs.body  # type: ignore[attr-defined]
    env: dict[Value, Value] = dict(zip(body.inputs, node.operands, strict=True))
    for n in body.nodes:
        if n.op == "constant":
            data = body.constants[n.attrs.ref]
            env[n.results[0]] = rw.constant(data, n.attrs.ref)
            continue
        outs = rw.op_values(n.op, *(env[v] for v in n.operands), attrs=n.attrs)
        env.update(zip(n.results, outs, strict=True))
    return [env[v] for _, v in body.outputs]


@dataclass(frozen=True)
class Unfuse(Pass):
    """Inline every fused kernel's body; with ``attention``, expand attention to primitives."""

    name = "unfuse"
    summary = "inline fused kernels (and expand attention) back into one op per node"

    attention: bool = True

    def run(self, graph: Graph, ctx: Context) -> Graph:
        def visit(node: Node, rw: Rewriter) -> list[Value] | None:
            if node.op == "fused":
                return inline_body(rw, node)
            if node.op == "attention" and self.attention:
                return [expand_attention(rw, node)]
            return None

        for _ in range(2):  # a fused body may hold an attention node: expand it on the second sweep
            Rewriter(graph, ctx).run(visit)
        return graph


def has_fused(graph: Graph) -> bool:
    return any(n.op in ("fused", "attention") for n in graph.nodes)
