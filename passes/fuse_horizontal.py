"""fuse-horizontal: sibling matmuls that share their input become one matmul on concatenated
weights, split after (Q, K and V projections; the gate and up projections of a SwiGLU MLP).

Only constant right-hand sides are concatenated (at compile time, once); the matmuls must read
the same left operand, have 2-D weights with the same K and dtype. One GEMM of N1+N2+... columns
runs closer to the machine's peak than several narrow ones and reads the activations once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.core import Graph, Node, Value
from ..ir.registry import Context
from .base import Pass, Rewriter


@dataclass(frozen=True)
class FuseHorizontal(Pass):
    """Merge sibling matmuls x @ W1, x @ W2, ... (constant W) into x @ [W1 W2 ...] + split."""

    name = "fuse-horizontal"
    summary = "merge sibling matmuls sharing an input into one matmul on concatenated weights"

    min_group: int = 2

    def run(self, graph: Graph, ctx: Context) -> Graph:
        producer = graph.producers()

        def weight(n: Node) -> np.ndarray | None:
            p = producer.get(n.operands[1])
            if p is None or p.op != "constant":
                return None
            w = graph.constants.get(p.attrs.ref)  # type: ignore[attr-defined]
            return w if w is not None and w.ndim == 2 else None

        siblings: dict[Value, list[Node]] = {}
        for n in graph.nodes:
            if n.op == "matmul" and weight(n) is not None and n.operands[0].tensor_type.rank >= 2:
                siblings.setdefault(n.operands[0], []).append(n)
        groups: dict[Node, list[Node]] = {}
        for ms in siblings.values():
            by_k: dict[tuple[int, str], list[Node]] = {}
            for m in ms:
                w = weight(m)
                assert w is not None
                by_k.setdefault((w.shape[0], str(w.dtype)), []).append(m)
            for group in by_k.values():
                if len(group) >= self.min_group:
                    groups[group[0]] = group
        members = {m: g for g in groups.values() for m in g}
        done: dict[Node, list[Value]] = {}

        def visit(node: Node, rw: Rewriter) -> list[Value] | None:
            group = members.get(node)
            if group is None:
                return None
            if node not in done:
                ws = [weight(m) for m in group]
                cat = rw.constant(np.concatenate(ws, axis=1), "w_cat")  # type: ignore[arg-type]
                y = rw.op("matmul", node.operands[0], cat)
                sizes = tuple(w.shape[1] for w in ws)  # type: ignore[union-attr]
                parts = rw.op_values("split", y, axis=y.tensor_type.rank - 1, sizes=sizes)
                for m, part in zip(group, parts, strict=True):
                    done[m] = [part]
            return done[node]

        Rewriter(graph, ctx).run(visit)
        from .simplify import DCE

        DCE().run(graph, ctx)
        return graph
