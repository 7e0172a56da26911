"""ONNX export: every kiln op, exported and run by onnxruntime, matches kiln's reference interpreter.

Each case builds a small graph with :class:`GraphBuilder`, exports it with ``to_onnx``, runs it with
onnxruntime's CPU provider and compares with ``interpret`` on the same random inputs. Cases with
``via`` run the op in a dtype onnxruntime's Python API cannot feed (bf16): the graph casts its f32
inputs to it and its results back. Cases with ``qweight`` (qmatmul, qgather) add that quantized weight
as constants around the inputs; ``warns`` is the warning their export must give (a float fallback).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from kiln_testing.examples import load_example

from kiln.frontends import onnx_export
from kiln.frontends.onnx_export import NOT_EXPRESSIBLE, TABLE, OnnxExportError, Rule, to_onnx
from kiln.ir.builder import GraphBuilder
from kiln.ir.core import Graph, NoAttrs, Value
from kiln.ir.dtypes import DType, Layout, QuantType, Scheme, bf16, f16, f32, from_numpy, i32
from kiln.ir.interpret import interpret
from kiln.ir.ops import core_ops
from kiln.ir.quant import QuantizedWeight, quantize
from kiln.ir.registry import Context, OpDef, default_context
from kiln.ir.types import HostType, TensorType

# Allowed distance between onnxruntime and kiln's reference, per result dtype; integers and bools
# must be equal. f16 ops compute in f32 on both sides and round once, so they differ by at most an
# ulp (2^-10) where onnxruntime's f32 kernels (MLAS exp, tanh, erf) differ in the last f32 bits.
TOL: dict[str, dict[str, float]] = {
    "f64": {"rtol": 1e-12, "atol": 1e-12},
    "f32": {"rtol": 1e-5, "atol": 1e-5},
    "f16": {"rtol": 2e-3, "atol": 2e-3},
}

ort.set_default_logger_severity(3)
RNG = np.random.default_rng(0)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def rand(dtype: Any, *shape: int, lo: float = -3.0, hi: float = 3.0) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return RNG.random(shape) < 0.5
    if dt.kind in "iu":
        return RNG.integers(int(lo), int(hi) + 1, shape).astype(dt)
    return RNG.uniform(lo, hi, shape).astype(dt)


def pos(dtype: Any, *shape: int) -> np.ndarray:
    return rand(dtype, *shape, lo=0.1, hi=4.0)


def bf16_exact(*shape: int) -> np.ndarray:
    """f32 values that bf16 holds exactly (so the graph's f32 -> bf16 cast does not round)."""
    return rand(np.float32, *shape).astype(ml_dtypes.bfloat16).astype(np.float32)


@dataclass(frozen=True)
class Case:
    """One op on ``args`` (graph inputs x0, x1, ...) with ``attrs``; every result is an output."""

    op: str
    args: tuple[np.ndarray, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    via: DType | None = None
    qweight: QuantizedWeight | None = None
    warns: str = ""

    @property
    def id(self) -> str:
        dts = "-".join(str(a.dtype) for a in self.args) or "none"
        via = f"-via-{self.via}" if self.via else ""
        return f"{self.op}[{dts}{via}{'-' + self.label if self.label else ''}]"

    def graph(self) -> Graph:
        b = GraphBuilder(self.op)
        xs = [b.input(f"x{i}", TensorType(from_numpy(a.dtype), a.shape)) for i, a in enumerate(self.args)]
        if self.op == "constant":  # a constant as an output and as an operand
            c = b.constant(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
            b.output("y0", c)
            b.output("y1", b.op("add", xs[0], c))
            return b.build()
        if self.qweight is not None:  # qmatmul(x, w...) or qgather(w..., indices)
            w = b.quantized(self.qweight, "w" if self.op == "qmatmul" else "table")
            xs = [xs[0], *w] if self.op == "qmatmul" else [*w, *xs]
        if self.via is not None:
            xs = [b.op("cast", x, dtype=self.via) if x.tensor_type.dtype == f32 else x for x in xs]
        ys = b.op_values(self.op, *xs, **self.attrs)
        for i, y in enumerate(ys):
            if self.via is not None and y.tensor_type.dtype == self.via:
                y = b.op("cast", y, dtype=f32)
            b.output(f"y{i}", y)
        return b.build()

    def feeds(self) -> dict[str, np.ndarray]:
        return {f"x{i}": a for i, a in enumerate(self.args)}


def c(
    op: str,
    *args: np.ndarray,
    label: str = "",
    via: DType | None = None,
    qweight: QuantizedWeight | None = None,
    warns: str = "",
    **attrs: Any,
) -> Case:
    return Case(op, args, attrs, label, via, qweight, warns)


def qw(k: int, n: int, q: QuantType) -> QuantizedWeight:
    return quantize(rand(F32, k, n), q)


F32, F16, F64 = np.float32, np.float16, np.float64
I8, I16, I32, I64, U8 = np.int8, np.int16, np.int32, np.int64, np.uint8
B = np.bool_

with_nan = np.array([[1.0, np.nan, -2.0], [np.nan, 0.5, 3.0]], dtype=F32)
int_num = np.array([7, -7, 7, -7, 5, 0, -(2**31), -(2**31), 9], dtype=I32)
int_den = np.array([2, 2, -2, -2, 0, 0, -1, 1, 3], dtype=I32)
# act=binary rows: plain; half +0.0 / -0.0 (which binarize to +alpha); one NaN (a NaN row out)
binary_x = np.array([[1.5, -0.25, 2.0, -3.0] * 16, [0.0, -0.0, 1.0, -2.0] * 16, [np.nan] + [1.0] * 63], F32)


def _gelu_body() -> Graph:
    b = GraphBuilder("k0")
    a, bias = b.input("a", TensorType(f32, (2, 3))), b.input("b", TensorType(f32, (3,)))
    b.output("r0", b.op("gelu", b.op("add", a, bias), approximate="tanh"))
    return b.build()


#: Ops the exporter writes as the primitive ops they stand for (passes/unfuse.py), not by TABLE.
VIA_UNFUSE = {"fused", "attention"}

CASES: list[Case] = [
    c("fused", rand(F32, 2, 3), rand(F32, 3), kind="elementwise", body=_gelu_body()),
    c("attention", rand(F32, 2, 4, 8), rand(F32, 2, 6, 8), rand(F32, 2, 6, 5), rand(F32, 4, 6), scale=0.3),
    c(
        "attention",
        rand(F32, 3, 4, 8),
        rand(F32, 3, 4, 8),
        rand(F32, 3, 4, 8),
        rand(F32, 1),
        scale=0.5,
        causal=True,
        label="causal",
    ),
    # unary
    c("neg", rand(F32, 2, 3)),
    c("neg", rand(F16, 4)),
    c("neg", rand(I32, 5)),
    c("neg", rand(I8, 5)),
    c("abs", rand(F32, 2, 3)),
    c("abs", rand(I64, 6)),
    c("abs", rand(I16, 6)),
    c("exp", rand(F32, 2, 3)),
    c("exp", rand(F16, 5)),
    c("exp", rand(F64, 5)),
    c("log", pos(F32, 2, 3)),
    c("log", pos(F16, 5)),
    c("sqrt", pos(F32, 2, 3)),
    c("sqrt", pos(F16, 5)),
    c("rsqrt", pos(F32, 2, 3)),
    c("rsqrt", pos(F16, 5)),
    c("reciprocal", pos(F32, 2, 3)),
    c("reciprocal", -pos(F16, 5)),
    c("tanh", rand(F32, 2, 3)),
    c("tanh", rand(F16, 5)),
    c("erf", rand(F32, 2, 3)),
    c("erf", rand(F16, 5)),
    c("sin", rand(F32, 2, 3)),
    c("sin", rand(F16, 5)),
    c("cos", rand(F32, 2, 3)),
    c("cos", rand(F64, 5)),
    c("floor", rand(F32, 2, 3)),
    c("floor", rand(F16, 5)),
    c("ceil", rand(F32, 2, 3)),
    c("ceil", rand(F16, 5)),
    c("sigmoid", rand(F32, 2, 3)),
    c("sigmoid", rand(F16, 5)),
    c("sigmoid", rand(F64, 5)),
    c("relu", rand(F32, 2, 3)),
    c("relu", rand(I32, 6)),
    c("relu", rand(I16, 6)),
    c("silu", rand(F32, 2, 3)),
    c("silu", rand(F16, 5)),
    c("isnan", with_nan),
    c("isnan", with_nan.astype(F16)),
    c("logical_not", rand(B, 2, 3)),
    c("gelu", rand(F32, 2, 3)),
    c("gelu", rand(F32, 2, 3), approximate="tanh"),
    c("gelu", rand(F16, 8)),
    c("gelu", rand(F16, 8), approximate="tanh"),
    c("exp", bf16_exact(2, 3), via=bf16),
    c("gelu", bf16_exact(2, 3), via=bf16),
    # binary
    c("add", rand(F32, 2, 3), rand(F32, 3)),
    c("add", rand(F16, 4), rand(F16, 4)),
    c("add", rand(I32, 2, 1), rand(I32, 1, 3)),
    c("add", rand(I64, 4), rand(I64, 4)),
    c("add", np.array([200, 100], U8), np.array([100, 3], U8), label="wrap"),
    c("add", bf16_exact(2, 3), bf16_exact(2, 3), via=bf16),
    c("sub", rand(F32, 2, 3), rand(F32, 2, 3)),
    c("sub", rand(I32, 5), rand(I32, 5)),
    c("sub", np.array([1, 0], U8), np.array([2, 0], U8), label="wrap"),
    c("mul", rand(F32, 2, 3), rand(F32, 2, 3)),
    c("mul", rand(F16, 4), rand(F16, 4)),
    c("mul", rand(I64, 5), rand(I64, 5)),
    c("mul", np.array([100, -3], I8), np.array([3, 5], I8), label="wrap"),
    c("div", rand(F32, 2, 3), pos(F32, 2, 3)),
    c("div", rand(F16, 4), pos(F16, 4)),
    c("div", int_num, int_den, label="zero-and-min"),
    c("div", int_num.astype(I64), int_den.astype(I64)),
    c("div", np.array([-128, 7, -7, 5], I8), np.array([-1, 2, 2, 0], I8)),
    c("div", np.array([200, 7, 9], U8), np.array([3, 0, 9], U8)),
    c("div", np.array([2**64 - 1, 7, 9, 0], np.uint64), np.array([3, 0, 2**63, 0], np.uint64)),
    c("div", np.array([2**32 - 1, 7, 9], np.uint32), np.array([2, 0, 10], np.uint32)),
    c("pow", pos(F32, 2, 3), rand(F32, 2, 3)),
    c("pow", pos(F16, 4), rand(F16, 4)),
    c("pow", np.array([2, -1, -1, 1, -2, 3, 0], I32), np.array([-1, -1, -2, -5, -1, 4, 0], I32)),
    c("pow", np.array([2, -3, 5], I64), np.array([10, 3, 0], I64)),
    c("maximum", with_nan, rand(F32, 2, 3)),
    c("maximum", rand(I32, 5), rand(I32, 5)),
    c("maximum", rand(I16, 5), rand(I16, 5)),
    c("minimum", with_nan, rand(F32, 2, 3)),
    c("minimum", rand(I64, 5), rand(I64, 5)),
    c("minimum", rand(F16, 4), rand(F16, 4)),
    c("logical_and", rand(B, 2, 3), rand(B, 3)),
    c("logical_or", rand(B, 2, 3), rand(B, 2, 3)),
    c("logical_xor", rand(B, 2, 3), rand(B, 2, 3)),
    c("eq", with_nan, with_nan),
    c("eq", rand(I32, 9), rand(I32, 9)),
    c("eq", rand(B, 4), rand(B, 4)),
    c("ne", with_nan, with_nan),
    c("ne", rand(I64, 9), rand(I64, 9)),
    c("ne", rand(B, 4), rand(B, 4)),
    c("lt", rand(I32, 9), rand(I32, 9)),
    c("lt", rand(F16, 9), rand(F16, 9)),
    c("le", rand(I32, 9), rand(I32, 9)),
    c("le", rand(F32, 9), rand(F32, 9)),
    c("gt", rand(I64, 9), rand(I64, 9)),
    c("gt", rand(F32, 9), rand(F32, 9)),
    c("ge", rand(I8, 9), rand(I8, 9)),
    c("ge", rand(F32, 9), rand(F32, 9)),
    c("where", rand(B, 2, 3), rand(F32, 2, 3), rand(F32, 3)),
    c("where", rand(B, 4), rand(I64, 4), rand(I64, 4)),
    c("where", rand(B, 4), rand(B, 4), rand(B, 4)),
    c("where", rand(B, 4), rand(F16, 4), rand(F16, 4)),
    c("where", rand(B, 3), np.array([2**64 - 1, 1, 2], np.uint64), np.zeros(3, np.uint64)),
    c("where", rand(B, 4), rand(I16, 4), rand(I16, 4)),
    c("cast", rand(F32, 2, 3, lo=-50, hi=50), dtype=i32),
    c("cast", np.array([0.0, -0.0, 1.5, np.nan], F32), dtype=DType("bool", 1)),
    c("cast", rand(I32, 5), dtype=f32),
    c("cast", rand(B, 5), dtype=f32),
    c("cast", rand(F32, 5), dtype=f16),
    c("cast", np.array([300, -129, 5], I64), dtype=DType("i", 8)),
    c("cast", rand(F16, 5), dtype=f32),
    c("cast", np.array([250.7, 3.2], F32), dtype=DType("u", 8)),
    c("cast", bf16_exact(5), via=bf16, dtype=f16),
    # matmul, reductions and normalisations
    c("matmul", rand(F32, 3, 4), rand(F32, 4, 5)),
    c("matmul", rand(F32, 2, 3, 4), rand(F32, 4, 2)),
    c("matmul", rand(F32, 4), rand(F32, 4, 3)),
    c("matmul", rand(F32, 2, 3, 4), rand(F32, 4)),
    c("matmul", rand(F16, 3, 8), rand(F16, 8, 2)),
    c("matmul", rand(I32, 3, 4), rand(I32, 4, 2)),
    c("matmul", rand(I8, 3, 4, lo=-100, hi=100), rand(I8, 4, 2, lo=-100, hi=100)),
    c("matmul", bf16_exact(3, 4), bf16_exact(4, 2), via=bf16),
    c("einsum", rand(F32, 2, 3, 4), rand(F32, 2, 4, 5), equation="bij,bjk->bik"),
    c("einsum", rand(F32, 3, 4), equation="ij->ji"),
    c("einsum", rand(F32, 4, 4), equation="ii->i"),
    c("einsum", rand(F32, 2, 3, 4), rand(F32, 4), equation="...j,j->..."),
    c("einsum", rand(F16, 3, 4), rand(F16, 4, 2), equation="ij,jk->ik"),
    c("einsum", rand(I32, 3, 4), rand(I32, 4), equation="ij,j->i"),
    c("reduce_sum", rand(F32, 2, 3, 4), axes=(1,)),
    c("reduce_sum", rand(F32, 2, 3, 4), axes=(0, 2), keepdims=True),
    c("reduce_sum", rand(I32, 3, 4), axes=(0, 1)),
    c("reduce_sum", rand(F32, 2, 3), axes=(), label="noaxes"),
    c("reduce_sum", rand(F16, 4, 8), axes=(1,)),
    c("reduce_sum", rand(U8, 3, 40, lo=0, hi=255), axes=(1,)),
    c("reduce_mean", rand(F32, 2, 3, 4), axes=(2,)),
    c("reduce_mean", rand(F16, 4, 8), axes=(0,), keepdims=True),
    c("reduce_max", rand(F32, 2, 3, 4), axes=(1, 2)),
    c("reduce_max", rand(I32, 3, 4), axes=(1,), keepdims=True),
    c("reduce_max", rand(I16, 3, 4), axes=(0,)),
    c("reduce_min", rand(F32, 2, 3, 4), axes=(0,)),
    c("reduce_min", rand(I64, 3, 4), axes=(1,)),
    c(
        "reduce_max",
        np.array([[np.nan, np.nan, np.nan, 4.0], [1, np.inf, 2, 3]], F32),
        axes=(1,),
        label="nan",
    ),
    c("reduce_min", np.array([[2.0, np.nan], [1, -np.inf]], F16), axes=(1,), keepdims=True, label="nan"),
    c("reduce_max", rand(F32, 2, 0), axes=(1,), label="empty"),
    c("reduce_min", rand(I32, 0, 3), axes=(0,), label="empty"),
    c("reduce_sum", np.full((2, 3), 2**30, I32), axes=(1,), label="wrap"),
    c("reduce_prod", np.full((2, 3), 2**20, I32), axes=(1,), label="wrap"),
    c("reduce_prod", rand(F32, 2, 3, lo=0.5, hi=1.5), axes=(1,)),
    c("reduce_prod", rand(I64, 3, 4), axes=(0,)),
    c("argmax", rand(F32, 3, 4), axis=1),
    c("argmax", rand(I32, 3, 6, lo=0, hi=2), axis=1, keepdims=True),
    c("argmax", rand(I32, 3, 6, lo=0, hi=2), axis=1, select_last=True),
    c("argmax", rand(B, 2, 5), axis=1),
    c("argmax", rand(F16, 3, 4), axis=0),
    c("argmin", rand(F32, 3, 4), axis=0),
    c("argmin", rand(I64, 3, 6, lo=0, hi=2), axis=1, select_last=True),
    c("cumsum", rand(F32, 3, 4), axis=1),
    c("cumsum", rand(F32, 3, 4), axis=0, exclusive=True),
    c("cumsum", rand(I32, 3, 4), axis=1, reverse=True),
    c("cumsum", rand(I64, 5), axis=0, exclusive=True, reverse=True),
    c("cumsum", rand(F16, 2, 8), axis=1),
    c("softmax", rand(F32, 3, 5), axis=1),
    c("softmax", rand(F32, 3, 5), axis=0),
    c("softmax", rand(F16, 2, 8), axis=1),
    c("log_softmax", rand(F32, 3, 5), axis=1),
    c("log_softmax", rand(F16, 2, 8), axis=0),
    c("layer_norm", rand(F32, 2, 3, 4), rand(F32, 3, 4), rand(F32, 3, 4), axis=1),
    c("layer_norm", rand(F32, 4, 8), rand(F32, 8), rand(F32, 8), axis=1, eps=1e-3),
    c("layer_norm", rand(F16, 4, 8), rand(F16, 8), rand(F16, 8), axis=1),
    c("rms_norm", rand(F32, 2, 3, 4), rand(F32, 4), axis=2),
    c("rms_norm", rand(F32, 2, 3, 4), rand(F32, 3, 4), axis=1),
    c("rms_norm", rand(F16, 4, 8), rand(F16, 8), axis=1, eps=1e-6),
    # data movement
    c("reshape", rand(F32, 2, 6), shape=(3, 4)),
    c("reshape", rand(I64, 2, 3), shape=(6,)),
    c("reshape", rand(F32, 0, 3), shape=(3, 0), label="zero"),
    c("reshape", rand(F16, 4), shape=(2, 1, 2)),
    c("broadcast_to", rand(F32, 3, 1), shape=(2, 3, 4)),
    c("broadcast_to", rand(B, 4), shape=(3, 4)),
    c("broadcast_to", bf16_exact(3, 1), shape=(3, 2), via=bf16),
    c("transpose", rand(F32, 2, 3, 4), perm=(2, 0, 1)),
    c("transpose", rand(I32, 2, 3), perm=(1, 0)),
    c("slice", rand(F32, 5, 6), axes=(0, 1), starts=(1, 0), stops=(4, 6), steps=(1, 2)),
    c("slice", rand(F32, 5, 6), axes=(1,), starts=(5,), stops=(-1,), steps=(-1,), label="reverse"),
    c("slice", rand(F32, 5, 6), axes=(0,), starts=(4,), stops=(-1,), steps=(-2,), label="reverse-step"),
    c("slice", rand(I64, 5, 6), axes=(1,), starts=(4,), stops=(2,), steps=(1,), label="empty"),
    c("slice", rand(F32, 5), axes=(), starts=(), stops=(), steps=(), label="noaxes"),
    c("concat", rand(F32, 2, 3), rand(F32, 1, 3), rand(F32, 4, 3), axis=0),
    c("concat", rand(I32, 2, 3), rand(I32, 2, 1), axis=1),
    c("split", rand(F32, 6, 4), axis=0, sizes=(1, 2, 3)),
    c("split", rand(I64, 2, 5), axis=1, sizes=(2, 0, 3)),
    c("split", rand(F16, 4), axis=0, sizes=(4,)),
    c("gather", rand(F32, 5, 3), np.array([0, 4, -1, 2], I64), axis=0),
    c("gather", rand(F32, 2, 5), np.array([[1, -5], [3, 0]], I32), axis=1),
    c("gather_nd", rand(F32, 3, 4), np.array([[0, 1], [2, 3], [-1, 0]], I64)),
    c("gather_nd", rand(F32, 3, 4, 2), np.array([[1], [0]], I32)),
    c("gather_nd", rand(I64, 2, 3, 4), np.array([[[2], [0]], [[1], [1]]], I64), batch_dims=1),
    c("gather", rand(I32, 6), np.array([5, 0, 3], U8), axis=0),
    c("gather", rand(F16, 6, 2), np.array(3, I64), axis=0),
    c("squeeze", rand(F32, 1, 3, 1, 2), axes=(0, 2)),
    c("squeeze", rand(F32, 1, 3), axes=(), label="noaxes"),
    c("unsqueeze", rand(F32, 3, 2), axes=(0, 3)),
    c("unsqueeze", rand(B, 3), axes=(1,)),
    c("iota", start=0, stop=10, step=1, dtype=DType("i", 64)),
    c("iota", start=5, stop=-6, step=-2, dtype=i32),
    c("iota", start=0.5, stop=2.0, step=0.1, dtype=f32),
    c("iota", start=-1, stop=3, step=1, dtype=f16),
    c("iota", start=0, stop=300, step=7, dtype=DType("i", 8), label="wrap"),
    c("topk", rand(F32, 3, 6), k=3, axis=1),
    c("topk", rand(F32, 6, 3), k=2, axis=0, largest=False),
    c("topk", rand(I32, 2, 8, lo=0, hi=3), k=4, axis=1),
    c("topk", rand(B, 2, 6), k=3, axis=1),
    c("topk", rand(F16, 8), k=8, axis=0),
    c("triu", rand(F32, 4, 5)),
    c("triu", rand(F32, 2, 4, 4), k=1),
    c("triu", rand(I64, 4, 4), k=-1),
    c("tril", rand(F32, 4, 5)),
    c("tril", rand(B, 3, 3), k=-1),
    c("tril", rand(I32, 3, 5), k=2),
    c("tril", rand(F16, 3, 3)),
    c("constant", rand(F32, 2, 3)),
    # quantized: MatMulNBits where onnxruntime runs the format, else the dequantized weight (warned)
    c("qmatmul", rand(F32, 3, 64), qweight=qw(64, 8, QuantType(4, Scheme.SYM, 32)), label="nbits"),
    c("qmatmul", rand(F32, 2, 3, 64), qweight=qw(64, 8, QuantType(8, Scheme.ASYM, 0)), label="nbits-asym"),
    c(
        "qmatmul",
        rand(F32, 3, 64),
        qweight=qw(64, 8, QuantType(3, Scheme.SYM, 32)),
        act="int8",
        label="fallback-int8",
        warns="dequantized float weight.*2, 4 and 8 bits only",
    ),
    c(
        "qmatmul",
        binary_x,
        qweight=qw(64, 8, QuantType(4, Scheme.ASYM, 32)),
        act="binary",
        label="nbits-binary",
    ),
    c(
        "qmatmul",
        binary_x,
        qweight=qw(64, 8, QuantType(1, Scheme.BIPOLAR, 32)),
        act="binary",
        label="fallback-binary",
        warns="dequantized float weight.*bipolar",
    ),
    c(
        "qgather",
        rand(I32, 2, 3, lo=-10, hi=9),
        qweight=qw(64, 10, QuantType(4, Scheme.ASYM, 32, f32, Layout.PACKED)),
        warns="'qgather'.*no quantized Gather",
    ),
]


def run_ort(model: onnx.ModelProto | str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    src = model if isinstance(model, str) else model.SerializeToString()
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds), strict=True))


def assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, (
        f"{what}: onnxruntime gave {got.dtype}{list(got.shape)}, kiln {want.dtype}{list(want.shape)}"
    )
    if want.dtype.kind == "f":
        tol = TOL[str(from_numpy(want.dtype))]
        np.testing.assert_allclose(got, want, err_msg=what, **tol)  # type: ignore[arg-type]
    else:
        np.testing.assert_array_equal(got, want, err_msg=what)


def check(graph: Graph, feeds: dict[str, np.ndarray], **kwargs: Any) -> onnx.ModelProto:
    model = to_onnx(graph, **kwargs)
    want = interpret(graph, feeds)
    got = run_ort(model, feeds)
    assert list(got) == graph.output_names
    for name in want:
        assert_same(got[name], want[name], name)
    return model


@pytest.mark.parametrize("case", CASES, ids=[k.id for k in CASES])
def test_op_matches_reference(case: Case) -> None:
    if not case.warns:
        check(case.graph(), case.feeds())
        return
    with pytest.warns(UserWarning, match=case.warns):
        check(case.graph(), case.feeds())


EMPTY_BACKWARD = c("slice", rand(F32, 5, 6), axes=(0,), starts=(-1,), stops=(-1,), steps=(-1,))


def test_empty_backward_slice_exports_empty() -> None:
    got = run_ort(to_onnx(EMPTY_BACKWARD.graph()), EMPTY_BACKWARD.feeds())["y0"]
    assert got.shape == (0, 6)  # as Python gives for x[-100::-1]


def test_empty_backward_slice_reference() -> None:
    # The canonical empty backward slice (start -1, stop -1, step -1) once ran as x[-1::-1].
    check(EMPTY_BACKWARD.graph(), EMPTY_BACKWARD.feeds())


def test_cases_cover_every_op() -> None:
    ops = set(default_context().ops)
    assert set(NOT_EXPRESSIBLE) <= ops
    assert set(TABLE) | {"constant"} | VIA_UNFUSE == ops - set(NOT_EXPRESSIBLE), (
        "TABLE and NOT_EXPRESSIBLE must cover the registry"
    )
    assert {k.op for k in CASES} == ops - set(NOT_EXPRESSIBLE), "every exportable op needs a test case"


def test_gelu_is_one_node_from_opset_20() -> None:
    for approximate in ("none", "tanh"):
        case = c("gelu", rand(F32, 3, 4), approximate=approximate)
        model = check(case.graph(), case.feeds(), opset=20)
        assert [n.op_type for n in model.graph.node] == ["Gelu"]


def test_symbolic_batch_runs_at_any_size() -> None:
    b = GraphBuilder("sym")
    x = b.input("x", TensorType(f32, ("batch", 4)))
    w = b.constant(rand(F32, 4, 3), "w")
    h = b.op("softmax", b.op("matmul", x, w), axis=1)
    flat = b.op("reshape", h, shape=(3, "batch"))
    wide = b.op("broadcast_to", b.op("unsqueeze", h, axes=(0,)), shape=(2, "batch", 3))
    b.output("probs", h)
    b.output("flat", flat)
    b.output("wide", wide)
    g = b.build()
    model = to_onnx(g)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 4]
    out = model.graph.output[1].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in out] == [3, "batch"]
    for batch in (2, 5):
        feeds = {"x": rand(F32, batch, 4)}
        want, got = interpret(g, feeds), run_ort(model, feeds)
        for name in want:
            assert_same(got[name], want[name], f"{name} at batch {batch}")


def test_names_are_kept_and_unique() -> None:
    b = GraphBuilder("names")
    x = b.input("x", TensorType(f32, (3,)))
    y = b.input("y", TensorType(f32, (3,)))
    s = b.op("add", x, y)
    s.name = "out"  # an intermediate named like an output it is not
    t = b.op("mul", s, y)
    t.name = "x"  # and like an input
    b.output("out", t)
    b.output("again", t)
    b.output("x", x)  # an input passed through under its own name
    b.output("copy_of_y", y)
    b.output("const", b.constant(np.ones(3, F32), "out"))
    g = b.build()
    feeds = {"x": rand(F32, 3), "y": rand(F32, 3)}
    model = check(g, feeds)
    names = [o for n in model.graph.node for o in n.output] + [i.name for i in model.graph.initializer]
    assert len(names) == len(set(names))
    assert [i.name for i in model.graph.input] == ["x", "y"]


def test_unsupported_types_and_ops_are_all_listed(tmp_path: Path) -> None:
    ctx = Context()
    ctx.register(core_ops())
    ctx.register(OpDef("llm_call", ("prompt",), lambda a, ts: [HostType("str")], lambda a, xs, ts: ["hi"]))
    ctx.register(OpDef("fancy", ("x",), lambda a, ts: [ts[0]], lambda a, xs, ts: [xs[0]], attrs=NoAttrs))
    b = GraphBuilder("bad", ctx)
    small = b.input("small", TensorType(DType("i", 4), (3,)))
    b.input("q", TensorType(QuantType(4), (8, 8)))
    prompt = b.input("prompt", HostType("str"))
    wide = b.op("cast", small, dtype=i32)
    tiny = b.op("cast", wide, dtype=DType("u", 3))
    tiny.name = "tiny"
    fancy = b.op("fancy", wide)
    fancy.name = "fancy_out"
    answer = b.op("llm_call", prompt)
    answer.name = "answer"
    b.output("tiny", tiny)
    b.output("fancy", fancy)
    b.output("answer", answer)
    g = b.build()
    path = tmp_path / "bad.onnx"
    with pytest.raises(OnnxExportError) as err:
        to_onnx(g, path)
    msg = str(err.value)
    assert "6 problems" in msg
    for needle in [
        "graph input 'small'", "dtype i4", "graph input 'q'", "quantized", "graph input 'prompt'",
        "host value !str", "'cast' (result %tiny)", "dtype u3", "'fancy' (result %fancy_out)",
        "op 'fancy' cannot be exported", "'llm_call' (result %answer)", "op 'llm_call' cannot be exported",
    ]:  # fmt: skip
        assert needle in msg, (needle, msg)
    assert not path.exists()


def test_clashing_names_are_refused() -> None:
    b = GraphBuilder("clash")
    x = b.input("x", TensorType(f32, (2,)))
    y = b.op("exp", x)
    g = Graph("clash", [x, Value(x.type, "x")], b.graph.nodes, [("x", y), ("y", y), ("y", x)])
    with pytest.raises(OnnxExportError) as err:
        to_onnx(g)
    for needle in [
        "input name 'x' is used twice",
        "output name 'y' is used twice",
        "output 'x' has the name",
    ]:
        assert needle in str(err.value)


def test_bad_opset_is_refused() -> None:
    with pytest.raises(OnnxExportError, match="opset 13"):
        to_onnx(c("exp", rand(F32, 2)).graph(), opset=13)


def test_checker_failure_is_a_kiln_error(monkeypatch: pytest.MonkeyPatch) -> None:
    bogus = Rule(lambda e, n, xs, dt: [e.one("MatMul", *xs)])
    monkeypatch.setitem(TABLE, "add", bogus)
    with pytest.raises(OnnxExportError, match="fails ONNX's checker"):
        to_onnx(c("add", rand(F32, 2, 3), rand(F32, 2, 3)).graph())


def graph_with_weights() -> tuple[Graph, dict[str, np.ndarray]]:
    b = GraphBuilder("weights")
    x = b.input("x", TensorType(f32, (2, 64)))
    w = b.constant(rand(F32, 64, 64), "w")
    bias = b.constant(rand(F32, 64), "bias")
    b.output("y", b.op("add", b.op("matmul", x, w), bias))
    return b.build(), {"x": rand(F32, 2, 64)}


def test_external_data_round_trip(tmp_path: Path) -> None:
    g, feeds = graph_with_weights()
    path = tmp_path / "model.onnx"
    for _ in range(2):  # saving again replaces the data file rather than appending to it
        model = to_onnx(g, path, external_data=True)
    data = tmp_path / "model.onnx.data"
    assert data.exists() and data.stat().st_size == 64 * 64 * 4  # the bias stays inline (< 1 KiB)
    assert path.stat().st_size < 4096
    assert all(t.raw_data for t in model.graph.initializer)  # the returned model keeps its data
    loaded = onnx.load(str(path))
    w = next(t for t in loaded.graph.initializer if t.name == "w")
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(w), g.constants["w"])
    onnx.checker.check_model(str(path), full_check=True)
    np.testing.assert_allclose(run_ort(str(path), feeds)["y"], interpret(g, feeds)["y"], **TOL["f32"])


def test_large_models_save_external_data_and_check_from_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 1000)  # as if over ~1.8 GB
    monkeypatch.setattr(onnx_export, "_PROTO_LIMIT", 0)  # as if over protobuf's 2 GB
    g, feeds = graph_with_weights()
    path = tmp_path / "big.onnx"
    model = to_onnx(g, path)
    assert (tmp_path / "big.onnx.data").exists()
    assert all(t.raw_data for t in model.graph.initializer)
    np.testing.assert_allclose(run_ort(str(path), feeds)["y"], interpret(g, feeds)["y"], **TOL["f32"])


def test_save_inline(tmp_path: Path) -> None:
    g, feeds = graph_with_weights()
    path = tmp_path / "inline.onnx"
    to_onnx(g, str(path))
    assert not (tmp_path / "inline.onnx.data").exists()
    np.testing.assert_allclose(run_ort(str(path), feeds)["y"], interpret(g, feeds)["y"], **TOL["f32"])


def test_gpt_block_matches_reference() -> None:
    ex = load_example("gpt_block")
    block = ex.make_block(ex.init_weights(64), heads=4)
    x = np.random.default_rng(3).standard_normal((16, 64)).astype(np.float32)
    graph = block.lower(x).graph
    model = to_onnx(graph)
    feeds = dict(zip(graph.input_names, [x], strict=True))
    want, got = interpret(graph, feeds), run_ort(model, feeds)
    for name in graph.output_names:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)
