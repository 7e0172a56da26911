"""fuse: vertical fusion into kernel groups (``fused`` nodes), driven by a small cost model.

A group has one iteration space: the shape ``S`` of its anchor, seen as ``R`` rows of ``C =
S[-1]`` elements. Members are elementwise ops, row ops over the last axis (softmax, log_softmax,
layer_norm, rms_norm, reduce_* keepdims), and reshapes that keep ``C``; a group may start with a
``matmul`` (its epilogue: bias, activation, residual, scale, cast, even a following layer_norm).
Every value inside a group is *full* (R x C) or *per-row* (R x 1); operands from outside are
full, per-row, a row vector broadcast over rows (a bias), or a scalar. Those are exactly the
access patterns the row-program backends generate code for.

Decisions (the cost model): a consumer joins its producer's group when the iteration spaces
agree, the operands fit the access patterns, no operand depends on the group (no cycles), the
group keeps at most ``Target.max_kernel_inputs`` operands, and its per-row working set fits
``Target.scratch_bytes``. Each merge saves writing and re-reading one intermediate (``bytes_saved``).
Horizontally, small independent groups with the same iteration space (below
``Target.parallel_min_elements``) share one launch. Options turn each kind off: ``elementwise``,
``epilogue`` (into a matmul), ``rows``, ``horizontal``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..ir.core import Graph, Node, Value
from ..ir.ops.fused import FusedAttrs
from ..ir.registry import Context
from ..ir.targets import get_target
from ..ir.types import Shape, TensorType
from .base import Pass


def elementwise_ops(ctx: Context) -> frozenset[str]:
    """The ops the registry marks elementwise (``OpDef.elementwise``)."""
    return frozenset(name for name, d in ctx.ops.items() if d.elementwise)


ROW_OPS = frozenset({"softmax", "log_softmax", "layer_norm", "rms_norm"})
ROW_REDUCE = frozenset({"reduce_sum", "reduce_mean", "reduce_max", "reduce_min"})


def rows_cols(shape: Shape) -> tuple[int, int]:
    dims = [int(d) for d in shape]
    return (math.prod(dims[:-1]), dims[-1]) if dims else (1, 1)


def access(t: TensorType, space: Shape) -> str | None:
    """How a value of type ``t`` is read in the iteration space ``space``: full, col, row,
    scalar, or bcast (any other broadcast, expanded to full by the executor)."""
    if not t.is_static or not all(isinstance(d, int) for d in space) or not space:
        return None
    r, c = rows_cols(space)
    shape = tuple(int(d) for d in t.shape)
    if math.prod(shape) == 1:
        return "scalar"
    if math.prod(shape) == r * c and shape and shape[-1] == c:
        return "full"
    if math.prod(shape) == r and (not shape or shape[-1] == 1 or c == 1):
        lead = [d for d in shape if d != 1]
        if lead == [d for d in space[:-1] if d != 1]:
            return "col"
    if shape and shape[-1] == c and math.prod(shape) == c and len(shape) <= len(space):
        return "row"
    if len(shape) <= len(space) and all(a in (1, b) for a, b in zip(shape[::-1], space[::-1], strict=False)):
        return "bcast"  # any other broadcast: the kernel reads it expanded to R x C
    return None


def is_row_op(n: Node) -> bool:
    t = n.operands[0].tensor_type if n.operands else None
    if t is None or t.rank == 0:
        return False
    if n.op in ROW_OPS:
        return n.attrs.axis == t.rank - 1  # type: ignore[attr-defined]
    if n.op in ROW_REDUCE:
        return tuple(n.attrs.axes) == (t.rank - 1,)  # type: ignore[attr-defined]
    return False


@dataclass
class Group:
    """A kernel group under construction."""

    space: Shape
    first: int
    nodes: list[Node] = field(default_factory=list)
    values: set[Value] = field(default_factory=set)
    has_matmul: bool = False
    bytes_saved: int = 0

    @property
    def kind(self) -> str:
        if self.has_matmul:
            return "matmul"
        return "rows" if any(n.op in ROW_OPS or n.op in ROW_REDUCE for n in self.nodes) else "elementwise"

    def add(self, n: Node) -> None:
        self.nodes.append(n)
        self.values.update(n.results)


@dataclass(frozen=True)
class Fuse(Pass):
    """Vertical fusion: elementwise chains, matmul epilogues, row ops with prologue/epilogue."""

    name = "fuse"
    summary = "group elementwise chains, matmul epilogues and row ops (softmax, norms) into kernels"

    elementwise: bool = True
    epilogue: bool = True
    rows: bool = True
    horizontal: bool = True
    target: str = "numba-cpu"

    def run(self, graph: Graph, ctx: Context) -> Graph:
        tgt = get_target(self.target)
        ELEMENTWISE = elementwise_ops(ctx)  # noqa: N806 - a constant for this run
        pos = {n: i for i, n in enumerate(graph.nodes)}
        producer = graph.producers()
        const_data = {
            n.results[0]: graph.constants.get(n.attrs.ref)  # type: ignore[attr-defined]
            for n in graph.nodes
            if n.op == "constant"
        }
        group_of: dict[Node, Group] = {}
        groups: list[Group] = []

        def depends_on(v: Value, g: Group) -> bool:
            """Does ``v`` need ``g`` to run first? Groups run as one, so reaching any member of a
            group means needing all of that group's inputs too."""
            stack, seen = [v], set()
            while stack:
                x = stack.pop()
                n = producer.get(x)
                if n is None or n in seen:
                    continue
                seen.add(n)
                h = group_of.get(n)
                if h is g:
                    return True
                if pos[n] < g.first and (h is None or max(pos[m] for m in h.nodes) < g.first):
                    continue  # everything it needs comes before g started
                stack.extend(n.operands)
                if h is not None:
                    stack.extend(w for m in h.nodes if m not in seen for w in m.operands)
            return False

        def external(n: Node, g: Group) -> list[Value]:
            return [v for v in n.operands if v not in g.values]

        def fits(n: Node, g: Group, alone: bool = False) -> bool:
            out = [access(r.tensor_type, g.space) for r in n.results]
            if any(a not in ("full", "col") for a in out):
                return False
            if n.op == "reshape":
                return access(n.operands[0].tensor_type, g.space) == "full" and out == ["full"]
            if n.op in ROW_OPS or n.op in ROW_REDUCE:
                rows_ok = self.rows or alone
                if not rows_ok or not is_row_op(n) or access(n.operands[0].tensor_type, g.space) != "full":
                    return False
            elif n.op not in ELEMENTWISE:
                return False
            if g.has_matmul and not self.epilogue and not alone:
                return False
            if not g.has_matmul and n.op in ELEMENTWISE and not self.elementwise and not alone:
                return False
            if out == ["col"] and any(
                access(v.tensor_type, g.space) not in ("col", "scalar") for v in external(n, g)
            ):
                return False  # a per-row value can only combine with per-row or scalar operands
            for v in external(n, g):
                if v in const_data or producer.get(v) is None:
                    if access(v.tensor_type, g.space) is None:
                        return False
                    continue
                if access(v.tensor_type, g.space) is None or depends_on(v, g):
                    return False
            ins = {v for m in [*g.nodes, n] for v in m.operands if v not in g.values and v not in n.results}
            ins = {v for v in ins if not (v in const_data and v.tensor_type.size == 1)}
            if len(ins) > tgt.max_kernel_inputs:
                return False
            # Per-row working set: every full value of the group may need a row of scratch.
            full = sum(
                1 for m in [*g.nodes, n] for r in m.results if access(r.tensor_type, g.space) == "full"
            )
            _, c = rows_cols(g.space)
            return full * c * 4 <= tgt.scratch_bytes

        for n in graph.nodes:
            fusable = n.op in ELEMENTWISE or is_row_op(n) or n.op == "reshape"
            if fusable and all(isinstance(r.type, TensorType) for r in n.results):
                for v in n.operands:
                    p = producer.get(v)
                    g = group_of.get(p) if p is not None else None
                    if g is not None and fits(n, g):
                        g.add(n)
                        g.bytes_saved += 2 * _nbytes(v)
                        group_of[n] = g
                        break
                else:
                    if (
                        n.op != "reshape"
                        and n.results
                        and n.results[0].tensor_type.is_static
                        and n.results[0].tensor_type.rank > 0
                    ):
                        g = Group(n.results[0].tensor_type.shape, pos[n])
                        if fits(n, g, alone=True):
                            g.add(n)
                            group_of[n] = g
                            groups.append(g)
            elif (
                n.op == "matmul"
                and self.epilogue
                and n.results[0].tensor_type.is_static
                and n.results[0].tensor_type.rank > 0
            ):
                g = Group(n.results[0].tensor_type.shape, pos[n], has_matmul=True)
                g.add(n)
                group_of[n] = g
                groups.append(g)
        if self.horizontal:
            groups = _merge_siblings(graph, groups, group_of, tgt.parallel_min_elements)
        return _rebuild(graph, ctx, groups, group_of, const_data)


def _merge_siblings(
    graph: Graph, groups: list[Group], group_of: dict[Node, Group], limit: int
) -> list[Group]:
    """Put small, mutually independent groups of one iteration space into one launch.

    Independence is checked on the graph of groups (a group runs as one unit): two groups merge
    only when neither reaches the other, through any path of nodes and other groups.
    """
    users = graph.users()

    def unit(n: Node) -> Any:
        return group_of.get(n, n)

    def reaches(a: Group, b: Group) -> bool:
        stack: list[Any] = [a]
        seen = {id(a)}
        while stack:
            u = stack.pop()
            for n in u.nodes if isinstance(u, Group) else [u]:
                for r in n.results:
                    for c in users.get(r, []):
                        w = unit(c)
                        if w is b:
                            return True
                        if id(w) not in seen:
                            seen.add(id(w))
                            stack.append(w)
        return False

    merged: list[Group] = []
    for g in groups:
        r, c = rows_cols(g.space)
        host = None
        if not g.has_matmul and r * c < limit:
            for h in merged:
                if h.has_matmul or h.space != g.space or len(h.nodes) + len(g.nodes) > 64:
                    continue
                if reaches(h, g) or reaches(g, h):
                    continue
                host = h
                break
        if host is None:
            merged.append(g)
            continue
        host.first = min(host.first, g.first)
        for n in g.nodes:
            host.add(n)
            group_of[n] = host
    return merged


def _nbytes(v: Value) -> int:
    t = v.tensor_type
    return t.size * (t.dtype.bits // 8 or 1) if t.is_static else 0


def _rebuild(
    graph: Graph,
    ctx: Context,
    groups: list[Group],
    group_of: dict[Node, Group],
    const_data: dict[Value, np.ndarray | None],
) -> Graph:
    """Replace each group of two or more nodes (or one elementwise/row op) by a fused node, and
    order the result topologically (groups may interleave with other nodes)."""
    users = graph.users()
    outputs = {v for _, v in graph.outputs}
    producer = graph.producers()
    replaced: dict[Node, Node] = {}
    dead: set[Node] = set()
    mapping: dict[Value, Value] = {}
    for g in groups:
        if g.has_matmul and len(g.nodes) == 1:
            continue  # a bare matmul needs no kernel of its own
        fused, srcs = _fused_node(g, users, outputs, producer, const_data)
        if not srcs:
            for n in g.nodes:
                dead.add(n)  # nothing reads the group: it disappears
            continue
        mapping.update(zip(srcs, fused.results, strict=True))
        for n in g.nodes:
            replaced[n] = fused
    units: list[Node] = []
    seen: set[int] = set()
    for n in graph.nodes:
        if n in dead:
            continue
        u = replaced.get(n, n)
        if id(u) not in seen:
            seen.add(id(u))
            units.append(u)
    for u in units:
        u.operands = tuple(mapping.get(v, v) for v in u.operands)
    graph.outputs = [(name, mapping.get(v, v)) for name, v in graph.outputs]
    graph.nodes = _toposort(units, graph.inputs)
    graph.prune_constants()
    return graph


def _fused_node(
    g: Group,
    users: dict[Value, list[Node]],
    outputs: set[Value],
    producer: dict[Value, Node],
    const_data: dict[Value, np.ndarray | None],
) -> tuple[Node, list[Value]]:
    """The fused node for ``g`` and the outer values its results replace."""
    members = set(g.nodes)
    body = Graph(f"k_{g.kind}", [], [], [])
    vmap: dict[Value, Value] = {}
    operands: list[Value] = []

    def inner(v: Value, bake: bool = True) -> Value:
        if v in vmap:
            return vmap[v]
        data = const_data.get(v)
        if bake and data is not None and data.size == 1:  # scalars are baked into the kernel
            ref = producer[v].attrs.ref  # type: ignore[attr-defined]
            nv = Value(v.type, ref)
            body.constants[ref] = data
            body.nodes.append(Node("constant", (), producer[v].attrs, (nv,), producer[v].loc))
        else:
            nv = Value(v.type, f"in{len(operands)}")
            body.inputs.append(nv)
            operands.append(v)
        vmap[v] = nv
        return nv

    for n in g.nodes:
        ops = [inner(v, bake=n.op != "matmul") for v in n.operands]  # BLAS needs arrays
        res = [Value(r.type, r.name) for r in n.results]
        vmap.update(zip(n.results, res, strict=True))
        body.nodes.append(Node(n.op, ops, n.attrs, res, n.loc))
    srcs: list[Value] = []
    for n in g.nodes:
        for r in n.results:
            if r in outputs or any(u not in members for u in users.get(r, [])):
                body.outputs.append((f"out{len(body.outputs)}", vmap[r]))
                srcs.append(r)
    results = [Value(r.type, r.name) for r in srcs]
    return Node("fused", operands, FusedAttrs(g.kind, body), results, g.nodes[0].loc), srcs


def _toposort(units: Iterable[Node], inputs: Iterable[Value]) -> list[Node]:
    units = list(units)
    prod = {r: u for u in units for r in u.results}
    deps = {id(u): {id(prod[v]) for v in u.operands if v in prod} for u in units}
    order: list[Node] = []
    done: set[int] = set()
    pending = list(units)
    while pending:
        rest = []
        for u in pending:
            if deps[id(u)] <= done:
                order.append(u)
                done.add(id(u))
            else:
                rest.append(u)
        if len(rest) == len(pending):
            raise AssertionError("fusion produced a cycle")  # prevented by Fuse.fits
        pending = rest
    return order


def kernel_counts(graph: Graph) -> tuple[int, int]:
    """(ops, kernels): ops is what one-kernel-per-op would launch (all but constants and pure
    reshapes), kernels what runs after fusion (views such as transpose, slice, split and
    broadcast_to are strides, not kernels)."""
    meta = {"constant", "reshape", "squeeze", "unsqueeze"}
    views = meta | {"transpose", "slice", "split", "broadcast_to"}

    def count(nodes: Iterable[Node], skip: set[str]) -> int:
        return sum(1 for n in nodes if n.op not in skip)

    ops = 0
    for n in graph.nodes:
        ops += count(n.attrs.body.nodes, meta) if n.op == "fused" else count([n], meta)  # type: ignore[attr-defined]
    return ops, count(graph.nodes, views)
