"""The ONNX export of kiln's quantized ops (qmatmul, qgather), for :mod:`.onnx_export`.

- qmatmul (packed, sym or asym, 2/4/8 bits: what onnxruntime's kernel runs; group a power of two
  >= 16, or per channel with such a K) -> com.microsoft MatMulNBits (opset 1 of that domain is then
  imported), the codes byte for byte; act=int8 -> accuracy_level 4 (onnxruntime quantizes x per
  block, kiln per row: close, not equal); act=binary -> x binarized in ONNX ops first (per row
  ``Where(x >= 0, alpha, -alpha)``, alpha = ReduceMean(Abs(x))), then accuracy_level 0. Any other
  qmatmul -> MatMul with the dequantized weight (after the same int8 rounding or binarization of
  x for act=int8 / act=binary), and qgather -> Gather from the dequantized table, each with a
  warning naming the node: exact, but the weights are stored as float.

The weight operands (codes, scales and zero points) must be constants: the exporter hands their
data to the rules in ``emitter.data`` and writes them only in the form the rule chooses. This module
imports nothing from :mod:`.onnx_export`: the emitter is described by :class:`Emitter`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from ..ir.core import Graph, Node, Value
from ..ir.dtypes import DType, Layout, QuantType, Scheme, f32, i32, i64
from ..ir.ops import Act
from ..ir.quant import dequantize

__all__ = [
    "QUANT_RULES",
    "Emitter",
    "qgather",
    "qmatmul",
    "quant_constants",
    "quant_operands",
    "weight_data",
    "weight_problems",
]


class Emitter(Protocol):
    """What the quantized rules use of onnx_export's emitter."""

    where: str
    data: dict[Value, np.ndarray]  # constants that qmatmul/qgather read as weights
    ms_domain: bool  # whether a com.microsoft op was emitted

    def one(self, op_type: str, *inputs: str, **attrs: Any) -> str: ...
    def const(self, arr: np.ndarray, hint: str = "const") -> str: ...
    def scalar(self, value: float, dt: DType) -> str: ...
    def ints(self, values: Sequence[int]) -> str: ...
    def cast(self, name: str, src: DType, dst: DType, cache: bool = True) -> str: ...


# -- the weights ------------------------------------------------------------------------------------
def quant_operands(node: Node) -> range:
    """Positions of the quantized weight, its scales (and zero points) among a node's operands."""
    if node.op == "qmatmul":
        return range(1, len(node.operands))
    if node.op == "qgather":
        return range(len(node.operands) - 1)
    return range(0)


def quant_only(graph: Graph) -> set[Value]:
    """Values used only as the weights of qmatmul/qgather (the exporter writes them in their form)."""
    uses: dict[Value, set[bool]] = {}
    for node in graph.nodes:
        quant = set(quant_operands(node))
        for i, v in enumerate(node.operands):
            uses.setdefault(v, set()).add(i in quant)
    outs = {v for _, v in graph.outputs}
    return {v for v, kinds in uses.items() if kinds == {True} and v not in outs}


def quant_constants(graph: Graph) -> set[Value]:
    """The constants used only as the weights of qmatmul/qgather: the exporter writes them only in the
    form their rule chooses, so their quantized types need no ONNX type."""
    only = quant_only(graph)
    return {node.result for node in graph.nodes if node.op == "constant" and node.result in only}


def weight_problems(graph: Graph) -> dict[Node, list[str]]:
    """Why each qmatmul/qgather with a weight operand that is not a constant cannot be exported."""
    producer = {r: node for node in graph.nodes for r in node.results}
    out: dict[Node, list[str]] = {}
    for node in graph.nodes:
        for i in quant_operands(node):
            src = producer.get(node.operands[i])
            if src is None or src.op != "constant":
                out.setdefault(node, []).append(
                    f"its quantized weight operand #{i} must be a constant (ONNX stores it as data; "
                    "fold it, e.g. with constant-fold, first)"
                )
    return out


def weight_data(graph: Graph) -> dict[Value, np.ndarray]:
    """The data of the constants that qmatmul/qgather read as weights (for ``emitter.data``)."""
    used = {n.operands[i] for n in graph.nodes for i in quant_operands(n)}
    return {
        node.result: np.asarray(graph.constants[node.attrs.ref])  # type: ignore[attr-defined]
        for node in graph.nodes
        if node.op == "constant" and node.result in used
    }


def _quant_weight(
    e: Emitter, n: Node
) -> tuple[QuantType, int, int, np.ndarray, np.ndarray, np.ndarray | None]:
    ops = [n.operands[i] for i in quant_operands(n)]
    t = ops[0].tensor_type
    assert isinstance(t.dtype, QuantType)
    k, cols = t.static_shape
    return t.dtype, k, cols, e.data[ops[0]], e.data[ops[1]], e.data[ops[2]] if len(ops) == 3 else None


# -- the rules --------------------------------------------------------------------------------------
def _nbits_refusal(q: QuantType, k: int) -> str | None:
    """Why MatMulNBits (as onnxruntime runs it) cannot hold ``q``, or None."""
    block = q.group or k
    if q.layout != Layout.PACKED:
        return f"its {q.layout} layout has no MatMulNBits form"
    if q.scheme == Scheme.BIPOLAR:
        return "MatMulNBits has no bipolar scheme"
    if q.bits not in (2, 4, 8):
        return f"onnxruntime's MatMulNBits runs 2, 4 and 8 bits only, not {q.bits}"
    if block < 16 or block & (block - 1):
        return f"MatMulNBits needs blocks of a power of two >= 16 weights, not {block}"
    return None


def _fallback(e: Emitter, why: str) -> None:
    warnings.warn(
        f"{e.where}: exported with a dequantized float weight ({why}); the model is exact but its weights "
        "are stored as float32",
        stacklevel=5,  # the caller of to_onnx (to_onnx -> _build -> the rule -> here)
    )


def _int8_rows(e: Emitter, x: str) -> str:
    """kiln's act=int8 rounding of x (quantize_rows_int8) in ONNX: per row absmax / 127, round to even."""
    amax = e.one("ReduceMax", e.one("Abs", x), e.ints([-1]), keepdims=1)
    zero = e.scalar(0.0, f32)
    scale = e.one(
        "Where", e.one("Greater", amax, zero), e.one("Div", amax, e.scalar(127.0, f32)), e.scalar(1.0, f32)
    )
    xq = e.one("Clip", e.one("Round", e.one("Div", x, scale)), e.scalar(-127.0, f32), e.scalar(127.0, f32))
    return e.one("Mul", xq, scale)


def _binary_rows(e: Emitter, x: str) -> str:
    """kiln's act=binary (binarize_rows) in ONNX: per row alpha = mean(|x|), +alpha where x >= 0
    (0 and -0.0 too), else -alpha. ReduceMean takes its axes as an input from opset 18 on."""
    alpha = e.one("ReduceMean", e.one("Abs", x), e.ints([-1]), keepdims=1)
    return e.one("Where", e.one("GreaterOrEqual", x, e.scalar(0.0, f32)), alpha, e.one("Neg", alpha))


def qmatmul(e: Emitter, n: Node, xs: list[str], dt: DType) -> list[str]:
    """qmatmul -> MatMulNBits where onnxruntime runs its form, else MatMul with the dequantized weight."""
    q, k, cols, codes, scales, zeros = _quant_weight(e, n)
    act = n.attrs.act  # type: ignore[attr-defined]
    # x binarized here is already the reference's float activation (+-alpha): both forms take it,
    # and MatMulNBits computes in f32 (accuracy_level 0) instead of rounding it again to int8
    x = _binary_rows(e, xs[0]) if act == Act.BINARY else xs[0]
    why = _nbits_refusal(q, k)
    if why is None:
        block, ref = q.group or k, n.operands[1].name or "w"
        ins = [x, e.const(codes.reshape(cols, k // block, block * q.bits // 8), ref)]
        ins.append(e.const(scales.astype(np.float32), f"{ref}_scales"))  # the type of A (exact)
        if zeros is not None:  # each row's zero points packed to `bits` bits, LSB first, like B
            bits = (zeros[:, :, None] >> np.arange(q.bits, dtype=np.uint8)) & 1
            packed = np.packbits(bits.reshape(cols, -1), axis=1, bitorder="little")
            ins.append(e.const(packed, f"{ref}_zero_points"))
        e.ms_domain = True
        y = e.one("MatMulNBits", *ins, domain="com.microsoft", K=k, N=cols, bits=q.bits, block_size=block,
                  accuracy_level=4 if act == Act.INT8 else 0)  # fmt: skip
        return [y]
    _fallback(e, why)
    weight = e.const(dequantize(q, k, codes, scales, zeros), n.operands[1].name or "w")
    return [e.one("MatMul", _int8_rows(e, x) if act == Act.INT8 else x, weight)]


def qgather(e: Emitter, n: Node, xs: list[str], dt: DType) -> list[str]:
    """qgather -> Gather from the dequantized table (ONNX has no quantized Gather)."""
    q, k, _, codes, scales, zeros = _quant_weight(e, n)
    _fallback(e, "ONNX has no quantized Gather")
    table = e.const(
        np.ascontiguousarray(dequantize(q, k, codes, scales, zeros).T), n.operands[0].name or "table"
    )
    idt = n.operands[-1].tensor_type.scalar_dtype
    return [e.one("Gather", table, xs[-1] if idt in (i32, i64) else e.cast(xs[-1], idt, i64), axis=0)]


def _same(dt: DType) -> DType:
    return dt


def _to_f32(dt: DType) -> DType:
    return f32


QuantEmit = Callable[[Emitter, Node, list[str], DType], list[str]]

#: op -> (emit, widen, fixed), the fields of onnx_export's ``Rule``: x computes in f32, and the
#: weight operands (fixed) reach the rule uncast, as the names of tensors it writes itself.
QUANT_RULES: dict[str, tuple[QuantEmit, Callable[[DType], DType], tuple[int, ...]]] = {
    "qmatmul": (qmatmul, _to_f32, (1, 2, 3)),
    "qgather": (qgather, _same, (0, 1, 2, 3)),
}
