"""bitslice: choose, per quantized matmul, the kernel family by choosing the weight's layout.

``packed`` codes run dequantize-in-register kernels (unpack to bytes, integer or float dot
products); ``bitsliced`` codes run bit-serial kernels, ``y = sum_i 2^i (P_i x)`` with the scheme's
offset correction, whose cost is proportional to the width. Which is faster depends on the width
and on how many activation rows share each weight (a GEMV at batch 1 streams the weights once; a
GEMM at batch 16+ reuses them), and on the activation mode (int8 activations run VNNI kernels;
binary ones run popcounts on bit-sliced codes but float kernels on packed ones). The choice reads
the target's measured kernel costs (``Target.qkernel_cost``, from ``benchmarks/lowbit.py``); a
layout the shape cannot hold (bit-sliced needs K divisible by 64) is never chosen.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..ir.core import Graph, Node, Value
from ..ir.dtypes import Layout, QuantType
from ..ir.errors import PipelineError
from ..ir.quant import QuantizeError, check_shape, pack, unpack
from ..ir.registry import Context
from ..ir.targets import Target, get_target
from ..ir.types import TensorType
from .base import Pass


def rows_of(x: Value, default: int) -> int:
    """Activation rows of a matmul input (all dims but the last); symbolic dims count ``default``."""
    t = x.tensor_type
    rows = 1
    for d in t.shape[:-1]:
        rows *= d if isinstance(d, int) else default
    return rows


def best_layout(target: Target, q: QuantType, k: int, rows: int, act: str = "int8") -> Layout:
    """The layout whose kernel the target's cost table says is fastest for this weight, batch and
    activation mode (int8, f32 or binary: different kernels); ``q.layout`` when it has no figures."""
    kind = "gemv" if rows <= target.gemv_max_rows else "gemm"
    costs: dict[Layout, float] = {}
    for layout, ckind, bits, cact, cost in target.qkernel_cost:
        if ckind == kind and bits == q.bits and cact == act:
            costs[Layout(layout)] = cost
    fits = []
    for lay in costs:
        try:
            check_shape(dataclasses.replace(q, layout=lay), k)
            fits.append(lay)
        except QuantizeError:
            pass
    return min(fits, key=lambda lay: costs[lay]) if fits else q.layout


@dataclass(frozen=True)
class Bitslice(Pass):
    """Re-lay quantized matmul weights as packed or bit-sliced codes, per layer."""

    name = "bitslice"
    summary = "per quantized matmul, pick packed (dequantize in register) or bit-sliced (bit-serial) kernels"

    layout: str = "auto"  # auto (from the target's kernel costs), packed or bitsliced
    target: str = "numba-cpu"
    rows: int = 1  # activation rows assumed for symbolic batch/sequence dims

    def run(self, graph: Graph, ctx: Context) -> Graph:
        if self.layout not in ("auto", "packed", "bitsliced"):
            raise PipelineError(f"bitslice layout={self.layout}: expected auto, packed or bitsliced")
        tgt = get_target(self.target)
        producer = graph.producers()
        users = graph.users()
        for node in graph.nodes:
            if node.op != "qmatmul":
                continue
            wv = node.operands[1]
            t = wv.tensor_type
            q = t.dtype
            assert isinstance(q, QuantType)
            k = t.static_shape[0]
            act = str(node.attrs.act)  # type: ignore[attr-defined]
            want = best_layout(tgt, q, k, rows_of(node.operands[0], self.rows), act)
            if self.layout != "auto":
                want = Layout(self.layout)
            if want == q.layout:
                continue
            nq = dataclasses.replace(q, layout=want)
            try:
                check_shape(nq, k)
            except QuantizeError as e:
                if self.layout == "auto":
                    continue
                raise PipelineError(f"bitslice: {node.describe()}: {e}") from None
            self._relayout(graph, node, producer[wv], users[wv], q, nq, k)
        return graph

    def _relayout(
        self, graph: Graph, node: Node, const: Node, users: list[Node], q: QuantType, nq: QuantType, k: int
    ) -> None:
        ref = const.attrs.ref  # type: ignore[attr-defined]
        codes = pack(nq, unpack(q, graph.constants[ref], k))
        new_ref = f"{ref}_{nq.layout}"
        i = 0
        while new_ref in graph.constants:
            i += 1
            new_ref = f"{ref}_{nq.layout}_{i}"
        graph.constants[new_ref] = codes
        v = Value(TensorType(nq, const.result.tensor_type.shape), new_ref)
        cnode = Node("constant", (), const.attrs.replace(ref=new_ref), (v,), const.loc)
        graph.nodes.insert(graph.nodes.index(node), cnode)
        node.operands = (node.operands[0], v, *node.operands[2:])
        if all(u is node for u in users):  # the old codes are dead: drop them
            graph.nodes.remove(const)
            del graph.constants[ref]
