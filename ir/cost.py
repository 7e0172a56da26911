"""Static cost figures per node: floating-point operations and bytes moved (unfused).

Used by ``kiln show --summary`` and, later, by fusion and partitioning cost models. Counts follow
the usual conventions: a multiply-add is 2 FLOPs; an elementwise op is one FLOP per output element
(transcendentals too: they are counted, not weighted); bytes are every operand read once plus every
result written once, as an unfused kernel would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .core import Graph, Node
from .types import TensorType, Type

#: FLOPs per element of the (largest) operand for the composite ops.
_PER_ELEMENT = {"softmax": 5, "log_softmax": 5, "layer_norm": 8, "rms_norm": 5, "gelu": 8, "silu": 4,
                "sigmoid": 3}  # fmt: skip
_MOVEMENT = {"reshape", "broadcast_to", "transpose", "slice", "concat", "split", "gather", "gather_nd",
             "squeeze", "unsqueeze", "constant", "iota", "cast"}  # fmt: skip


@dataclass(frozen=True)
class NodeCost:
    flops: int
    bytes: int


def nbytes(t: Type) -> int:
    """Bytes of a value of type ``t`` (0 for host values and symbolic shapes)."""
    if not isinstance(t, TensorType) or not t.is_static:
        return 0
    return math.ceil(t.size * t.dtype.bits / 8)  # DType and QuantType both carry bits


def _size(t: Type) -> int:
    return t.size if isinstance(t, TensorType) and t.is_static else 0


def node_cost(node: Node) -> NodeCost:
    moved = sum(nbytes(v.type) for v in node.operands) + sum(nbytes(r.type) for r in node.results)
    if node.op == "constant":
        return NodeCost(0, 0)
    out = sum(_size(r.type) for r in node.results)
    biggest_in = max((_size(v.type) for v in node.operands), default=0)
    if node.op == "matmul":
        a = node.operands[0].tensor_type
        k = a.shape[-1] if a.rank else 1
        flops = 2 * out * (k if isinstance(k, int) else 0)
    elif node.op == "einsum":
        flops = 2 * max(out, biggest_in)  # a lower bound without the contraction sizes
    elif node.op in _MOVEMENT:
        flops = 0
    elif node.op.startswith(("reduce_", "arg")) or node.op in ("cumsum", "topk"):
        flops = biggest_in
    else:
        flops = _PER_ELEMENT.get(node.op, 1) * max(out, biggest_in)
    return NodeCost(int(flops), int(moved))


def graph_costs(graph: Graph) -> dict[str, tuple[int, int, int]]:
    """Op type -> (count, FLOPs, bytes) over the graph."""
    table: dict[str, tuple[int, int, int]] = {}
    for n in graph.nodes:
        c = node_cost(n)
        cnt, fl, by = table.get(n.op, (0, 0, 0))
        table[n.op] = (cnt + 1, fl + c.flops, by + c.bytes)
    return table
