"""A small pattern language for local rewrites, in the style of tinygrad's UPat.

``P("add", X, C(0))`` matches ``add(x, 0)`` (either operand order for commutative ops) where the
``0`` is a constant whose every element is 0, and binds ``x``. A rule is ``(pattern, fn)``; ``fn``
gets a :class:`Match` and returns the replacement value, or None to decline. The rewriter declines
any replacement whose type differs from the original's, so ``x + zeros`` that broadcasts ``x`` up
is left alone without every rule checking shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..ir.core import Graph, Node, Value
from ..ir.registry import Context
from .base import Rewriter


@dataclass(frozen=True)
class P:
    """Match a value produced by ``op`` (a name or a tuple of names) with operand patterns."""

    op: str | tuple[str, ...] | None
    srcs: tuple[Pat, ...] | None = None
    name: str | None = None
    pred: Callable[[Node], bool] | None = None

    def __init__(
        self,
        op: str | tuple[str, ...] | None,
        *srcs: Pat,
        name: str | None = None,
        pred: Callable[[Node], bool] | None = None,
    ) -> None:
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "srcs", srcs if srcs else None)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "pred", pred)


@dataclass(frozen=True)
class V:
    """Match any value and bind it to ``name``."""

    name: str


@dataclass(frozen=True)
class C:
    """Match a constant whose every element equals ``value``; binds it when ``name`` is set."""

    value: float
    name: str | None = None


Pat = P | V | C


class Match:
    """Bound values by name (``m.x``), the matched root node, and the rewriter to build with."""

    def __init__(self, node: Node, rw: Rewriter, bindings: dict[str, Any]) -> None:
        self.node = node
        self.rw = rw
        self.b = bindings

    def __getattr__(self, key: str) -> Any:
        try:
            return self.b[key]
        except KeyError:
            raise AttributeError(key) from None

    def node_of(self, v: Value) -> Node:
        return self.rw.producer[v]


Rule = tuple[P, Callable[[Match], Value | None]]


def const_value(rw: Rewriter, v: Value) -> np.ndarray | None:
    node = rw.producer.get(v)
    if node is None or node.op != "constant":
        return None
    return rw.graph.constants.get(node.attrs.ref)  # type: ignore[attr-defined]


def _match(pat: Pat, v: Value, rw: Rewriter, ctx: Context, b: dict[str, Any]) -> bool:
    if isinstance(pat, V):
        if pat.name in b and b[pat.name] is not v:
            return False
        b[pat.name] = v
        return True
    if isinstance(pat, C):
        data = const_value(rw, v)
        if data is None or data.size == 0 or not np.all(data == pat.value):
            return False
        if pat.name:
            b[pat.name] = v
        return True
    node = rw.producer.get(v)
    if node is None:
        return False
    return _match_node(pat, node, rw, ctx, b, bind=v)


def _match_node(
    pat: P, node: Node, rw: Rewriter, ctx: Context, b: dict[str, Any], bind: Value | None
) -> bool:
    ops = (pat.op,) if isinstance(pat.op, str) else pat.op
    if ops is not None and node.op not in ops:
        return False
    if pat.pred is not None and not pat.pred(node):
        return False
    if pat.srcs is not None:
        if len(pat.srcs) != len(node.operands):
            return False
        orders: list[Sequence[Value]] = [node.operands]
        if len(node.operands) == 2 and ctx.lookup(node.op).commutative:
            orders.append(node.operands[::-1])
        for order in orders:
            trial = dict(b)
            if all(_match(p, v, rw, ctx, trial) for p, v in zip(pat.srcs, order, strict=True)):
                b.clear()
                b.update(trial)
                break
        else:
            return False
    if pat.name:
        b[pat.name] = bind if bind is not None else node.results[0]
    return True


def apply_rules(graph: Graph, ctx: Context, rules: Sequence[Rule], max_iters: int = 16) -> bool:
    """Apply ``rules`` until nothing changes (or ``max_iters`` sweeps). True if anything did."""
    by_op: dict[str | None, list[Rule]] = {}
    for pat, fn in rules:
        ops = (pat.op,) if isinstance(pat.op, str) or pat.op is None else pat.op
        for op in ops:
            by_op.setdefault(op, []).append((pat, fn))
    any_change = False
    for _ in range(max_iters):

        def visit(node: Node, rw: Rewriter) -> list[Value] | None:
            if len(node.results) != 1:
                return None
            for pat, fn in by_op.get(node.op, []) + by_op.get(None, []):
                b: dict[str, Any] = {}
                if _match_node(pat, node, rw, ctx, b, bind=None):
                    mark = len(rw.new_nodes)
                    out = fn(Match(node, rw, b))
                    if out is not None and out.type == node.results[0].type:
                        return [out]
                    del rw.new_nodes[mark:]
            return None

        rw = Rewriter(graph, ctx)
        rw.run(visit)
        if not rw.changed:
            break
        any_change = True
    return any_change
