"""canonicalize: algebraic simplification to a canonical form, as a table of local rewrites.

The rules do not reassociate and never turn ``x * 0`` into 0 on floats (wrong for inf and NaN);
the one inexact rule is ``x ** 0.5 -> sqrt(x)``, which differs at -0 and -inf (as in XLA). Squeeze and unsqueeze become reshapes, and chains of reshapes and of
transposes collapse, so later passes see one spelling of each data movement.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir.core import Graph, Node, Value
from ..ir.registry import Context
from ..ir.types import TensorType
from .base import Pass
from .patterns import C, Match, P, Rule, V, apply_rules

X, Y = V("x"), V("y")


def _same_type(m: Match) -> Value | None:
    x: Value = m.x
    return x if m.x.type == m.node.results[0].type else None


def _identity_transpose(n: Node) -> bool:
    perm = n.attrs.perm  # type: ignore[attr-defined]
    return list(perm) == list(range(len(perm)))


def _compose_transpose(m: Match) -> Value | None:
    inner = m.node_of(m.t).attrs.perm  # type: ignore[attr-defined]
    outer = m.node.attrs.perm  # type: ignore[attr-defined]
    return m.rw.op("transpose", m.x, perm=tuple(inner[q] for q in outer))


def _as_reshape(m: Match) -> Value | None:
    t = m.node.results[0].type
    assert isinstance(t, TensorType)
    return m.rw.op("reshape", m.x, shape=t.shape)


def _float(m: Match) -> bool:
    t = m.x.type
    return isinstance(t, TensorType) and t.scalar_dtype.is_float


def _full_slice(n: Node) -> bool:
    t = n.operands[0].type
    assert isinstance(t, TensorType)
    a = n.attrs
    return all(
        s == 0 and e == t.shape[ax] and st == 1
        for ax, s, e, st in zip(a.axes, a.starts, a.stops, a.steps, strict=True)  # type: ignore[attr-defined]
    )


RULES: list[Rule] = [
    (P("add", X, C(0)), _same_type),  # x + 0 = x
    (P("sub", X, C(0)), _same_type),  # x - 0 = x
    (P("mul", X, C(1)), _same_type),  # x * 1 = x
    (P("div", X, C(1)), _same_type),  # x / 1 = x
    (P("pow", X, C(1)), _same_type),  # x ** 1 = x
    (P("pow", X, C(2)), lambda m: m.rw.op("mul", m.x, m.x)),  # x ** 2 = x * x
    (P("pow", X, C(0.5)), lambda m: m.rw.op("sqrt", m.x) if _float(m) else None),  # x**0.5 = sqrt x
    (P("pow", X, C(-0.5)), lambda m: m.rw.op("rsqrt", m.x) if _float(m) else None),  # = 1/sqrt x
    (P("div", C(1), P("sqrt", X)), lambda m: m.rw.op("rsqrt", m.x)),  # 1 / sqrt(x) = rsqrt(x)
    (P("reciprocal", P("sqrt", X)), lambda m: m.rw.op("rsqrt", m.x)),  # 1 / sqrt(x) = rsqrt(x)
    (P("div", C(1), X), lambda m: m.rw.op("reciprocal", m.x) if _float(m) else None),  # 1/x
    (P("sub", X, P("neg", Y)), lambda m: m.rw.op("add", m.x, m.y)),  # x - (-y) = x + y
    (P("add", X, P("neg", Y)), lambda m: m.rw.op("sub", m.x, m.y)),  # x + (-y) = x - y
    (P("neg", P("neg", X)), lambda m: m.x),  # -(-x) = x
    (P("logical_not", P("logical_not", X)), lambda m: m.x),  # not not x = x
    (P("where", V("c"), X, X), _same_type),  # c ? x : x = x
    (P("cast", X), _same_type),  # cast to its own dtype is the identity
    (P("reshape", X), _same_type),  # reshape to the same shape is the identity
    (P("broadcast_to", X), _same_type),  # broadcast to the same shape is the identity
    (P("reshape", P("reshape", X)), _as_reshape),  # reshape(reshape(x)) = reshape(x)
    (P(("squeeze", "unsqueeze"), X), _as_reshape),  # (un)squeeze is a reshape
    (P("transpose", X, pred=_identity_transpose), _same_type),  # transpose(x, id) = x
    (P("transpose", P("transpose", X, name="t")), _compose_transpose),  # perms compose
    (P("slice", X, pred=_full_slice), _same_type),  # x[:] = x
    (P("concat", X), _same_type),  # concat of one = x
    (P(("reduce_sum", "reduce_max", "reduce_min", "reduce_prod"), X), _same_type),  # no axes
]


@dataclass(frozen=True)
class Canonicalize(Pass):
    """Algebraic simplification to one canonical spelling (see the module docstring)."""

    name = "canonicalize"
    summary = "algebraic simplification: x+0, x*1, double negation, reshape/transpose chains"

    max_iters: int = 16

    def run(self, graph: Graph, ctx: Context) -> Graph:
        from .simplify import DCE

        if apply_rules(graph, ctx, RULES, self.max_iters):
            DCE().run(graph, ctx)  # as MLIR's canonicalizer, drop what the rewrites orphaned
        return graph
