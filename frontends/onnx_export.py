"""Export a kiln graph to an ONNX model that onnxruntime runs with kiln's reference results.

``to_onnx(graph, path=None, *, opset=18, external_data=None)`` builds a default-domain model (opset
18 or newer), checks it with ``onnx.checker.check_model(full_check=True)``, saves it when ``path`` is
given and returns it. One entry of :data:`TABLE` lowers each kiln op:

- elementwise: add/sub/mul/div/pow/maximum/minimum -> Add/Sub/Mul/Div/Pow/Max/Min; neg, abs, exp,
  log, sqrt, reciprocal, tanh, erf, sin, cos, floor, ceil, sigmoid, relu, isnan -> the same op;
  rsqrt -> Reciprocal(Sqrt); silu -> x * Sigmoid(x); gelu -> Gelu from opset 20, else its Erf or
  Tanh formula; logical_* -> Not/And/Or/Xor; eq/lt/le/gt/ge -> Equal/Less/LessOrEqual/Greater/
  GreaterOrEqual; ne -> Not(Equal); where -> Where; cast -> Cast. Integer div is guarded with Where:
  x / 0 is 0 as in kiln (undefined in ONNX) and x / -1 is Neg (INT_MIN / -1 traps onnxruntime);
  u64 uses (a / max(b, 1)) * min(b, 1).
- matmul -> MatMul; einsum -> Einsum; reduce_* -> Reduce* with an axes input (no axes: the
  noop_with_empty_axes form; float max/min add a guard so that NaN propagates as in kiln, where
  onnxruntime's result depends on the NaNs' positions); argmax/argmin -> ArgMax/ArgMin; cumsum ->
  CumSum; softmax/log_softmax -> Softmax/LogSoftmax; layer_norm -> LayerNormalization; rms_norm ->
  x / Sqrt(ReduceMean(x*x) + eps) * w.
- reshape -> Reshape; broadcast_to -> Expand; transpose -> Transpose; slice -> Slice (kiln's
  canonical stop -1 with a negative step becomes INT64_MIN, "before index 0"); concat, split,
  gather, gather_nd, squeeze, unsqueeze -> the same op; iota -> Range over indices, scaled and cast;
  topk -> TopK (sorted); triu/tril -> Trilu; constant -> an initializer. Symbolic dims in shapes are
  read at run time with Shape from the graph input that has them; inputs and outputs keep their
  names, and symbolic dims become ``dim_param``.
- qmatmul -> com.microsoft MatMulNBits where onnxruntime runs its form, else MatMul with the
  dequantized weight; qgather -> Gather from the dequantized table (:mod:`.onnx_export_quant`).

Dtypes: kiln computes f16/bf16 in f32 and rounds once per op, so arithmetic on them is exported as
Cast to f32, the op, Cast back; 8/16-bit integers compute in i32, u32 in i64, and integer sums and
products in i64 (exact, since kiln's integers wrap; onnxruntime lacks many narrow-int and bf16
kernels, and its integer ReduceSum/ReduceProd saturate). Data movement keeps its dtype.

Refused with :class:`OnnxExportError`, which lists every offender before anything is written:
integer widths other than 8/16/32/64 (``i4``, ``u3``), quantized values other than the constant
weights (and scales, zero points) of qmatmul/qgather, host values (str, bytes, json, tokens,
handles), ops outside :data:`TABLE` (see :data:`NOT_EXPRESSIBLE`), constants without data, and
clashing input/output names.

Known differences from kiln: float -> int casts of NaN, inf or out-of-range values (kiln: 0 and a
two's-complement wrap; ONNX: undefined); integer pow that overflows (onnxruntime goes through
double); i64 ReduceSum/ReduceProd overflow (onnxruntime saturates); NaN in argmax/argmin (kiln picks
the first NaN, onnxruntime skips NaNs) and topk (kiln ranks NaN lowest, onnxruntime highest).
onnxruntime's CPU provider lacks u64 Pow, reductions, CumSum, ArgMax, TopK and Trilu, and
f64 Erf: such models are valid ONNX for other runtimes.
"""

from __future__ import annotations

import itertools
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..ir.core import Graph, Node, Value
from ..ir.dtypes import DType, QuantType, bf16, boolean, f16, f32, f64, i32, i64, u32, u64
from ..ir.errors import KilnError
from ..ir.ops.shape import slice_length
from ..ir.registry import default_context
from ..ir.types import HostType, Shape, TensorType, Type
from ..passes.unfuse import Unfuse, has_fused
from .onnx_export_quant import QUANT_RULES, quant_constants, weight_data, weight_problems

__all__ = ["NOT_EXPRESSIBLE", "ONNX_TYPES", "TABLE", "OnnxExportError", "Rule", "to_onnx"]


class OnnxExportError(KilnError):
    """The graph cannot be expressed in ONNX, or the exported model fails ONNX's checker."""


MIN_OPSET = 18
EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # weight bytes above which saving uses external data
_PROTO_LIMIT = 2**31 - 1  # protobuf cannot serialise a message this large
INT64_MIN = -(2**63)

ONNX_TYPES: dict[DType, int] = {
    dt: helper.np_dtype_to_tensor_dtype(dt.np_dtype)
    for dt in (f16, bf16, f32, f64, boolean, *(DType(k, b) for k in ("i", "u") for b in (8, 16, 32, 64)))
}

# Core ops with no ONNX lowering, and why (kept empty while every core op has one; the tests
# check that TABLE and this cover the registry).
NOT_EXPRESSIBLE: dict[str, str] = {}


# -- compute dtypes ---------------------------------------------------------------------------------
def _same(dt: DType) -> DType:
    return dt


def _compute(dt: DType) -> DType:
    """The dtype an arithmetic op runs in: f16/bf16 in f32 (kiln rounds once per op from f32),
    8/16-bit integers in i32 and u32 in i64 (exact: kiln's integer results wrap to their width)."""
    if dt.is_float and dt.bits == 16:
        return f32
    if dt.is_int and dt.bits <= 16:
        return i32
    return i64 if dt == u32 else dt


def _sum64(dt: DType) -> DType:
    """Integer sums and products in i64: onnxruntime's integer ReduceSum/ReduceProd saturate where
    kiln wraps, so only an i64 accumulator (cast back, wrapping) reproduces narrower results."""
    return i64 if dt.is_int else _compute(dt)


def _numeric(dt: DType) -> DType:
    """As :func:`_compute`, and bools as i32 (ArgMax and TopK take numbers only)."""
    return i32 if dt.is_bool else _compute(dt)


def _select(dt: DType) -> DType:
    """For Where, which moves values only: any exact carrier that onnxruntime has a kernel for."""
    return i64 if dt == u64 else _numeric(dt)


def _no_bf16(dt: DType) -> DType:
    return f32 if dt == bf16 else dt


# -- the emitter ------------------------------------------------------------------------------------
class _Emitter:
    """Collects ONNX nodes and initializers with unique tensor names."""

    def __init__(self, opset: int, reserved: set[str]) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.used: set[str] = set(reserved)
        self.producer: dict[str, int] = {}
        self.casts: dict[tuple[str, DType], str] = {}
        self.small: dict[tuple[str, tuple[int, ...], bytes], str] = {}
        self.dim_src: dict[str, tuple[str, int]] = {}
        self.dims: dict[str, str] = {}
        self.hint = "t"
        self.where = ""
        self.data: dict[Value, np.ndarray] = {}  # constants that qmatmul/qgather read as weights
        self.ms_domain = False  # whether a com.microsoft op was emitted

    def fresh(self, hint: str) -> str:
        name, i = hint, 0
        while name in self.used:
            i += 1
            name = f"{hint}_{i}"
        self.used.add(name)
        return name

    def op(self, op_type: str, *inputs: str, n: int = 1, **attrs: Any) -> list[str]:
        outs = [self.fresh(f"{self.hint}/{op_type}") for _ in range(n)]
        name = f"{self.hint}/{op_type}_{len(self.nodes)}"
        node = helper.make_node(op_type, list(inputs), outs, name=name, **attrs)
        for o in outs:
            self.producer[o] = len(self.nodes)
        self.nodes.append(node)
        return outs

    def one(self, op_type: str, *inputs: str, **attrs: Any) -> str:
        return self.op(op_type, *inputs, **attrs)[0]

    def const(self, arr: np.ndarray, hint: str = "const") -> str:
        key = (arr.dtype.str, arr.shape, arr.tobytes()) if arr.size <= 16 else None
        if key is not None and key in self.small:
            return self.small[key]
        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(arr, name))
        if key is not None:
            self.small[key] = name
        return name

    def scalar(self, value: float, dt: DType) -> str:
        return self.const(np.asarray(value, dtype=dt.np_dtype))

    def ints(self, values: Sequence[int]) -> str:
        return self.const(np.asarray(list(values), dtype=np.int64))

    def cast(self, name: str, src: DType, dst: DType, cache: bool = True) -> str:
        if src == dst:
            return name
        if cache and (name, dst) in self.casts:
            return self.casts[(name, dst)]
        out = self.one("Cast", name, to=ONNX_TYPES[dst])
        if cache:
            self.casts[(name, dst)] = out
        return out

    def dim(self, symbol: str) -> str:
        """A 1-element int64 tensor holding the run-time size of a symbolic dim."""
        if symbol not in self.dims:
            if symbol not in self.dim_src:
                raise OnnxExportError(
                    f"{self.where}: symbolic dim '{symbol}' is not a dim of any graph input, so the "
                    "exported model cannot compute it; bind it (infer-shapes{bind=...}) first"
                )
            src, axis = self.dim_src[symbol]
            self.dims[symbol] = self.one("Shape", src, start=axis, end=axis + 1)
        return self.dims[symbol]

    def shape(self, shape: Shape) -> str:
        """An int64 shape tensor: an initializer when static, else Concat of static runs and dims."""
        parts: list[str] = []
        for static, run in itertools.groupby(shape, key=lambda d: isinstance(d, int)):
            dims = list(run)
            parts += [self.ints([int(d) for d in dims])] if static else [self.dim(str(d)) for d in dims]
        parts = parts or [self.ints([])]
        return parts[0] if len(parts) == 1 else self.one("Concat", *parts, axis=0)

    def rename(self, tensor: str, new: str, since: int) -> bool:
        """Rename ``tensor`` if a node emitted at index >= ``since`` produced it (and none used it)."""
        idx = self.producer.get(tensor)
        if idx is None or idx < since or any(tensor in nd.input for nd in self.nodes[since:]):
            return False
        outs = self.nodes[idx].output
        outs[list(outs).index(tensor)] = new
        self.producer[new] = self.producer.pop(tensor)
        return True


# -- the lowering table -----------------------------------------------------------------------------
Emit = Callable[[_Emitter, Node, list[str], DType], list[str]]


@dataclass(frozen=True)
class Rule:
    """How one kiln op becomes ONNX: ``emit(emitter, node, operands, compute_dtype)`` returns the
    result tensors. Operands (except the indices in ``fixed``) arrive cast to ``widen(dtype)``;
    results are expected in ``widen(result dtype)`` and cast back to the kiln dtype."""

    emit: Emit
    widen: Callable[[DType], DType] = _compute
    fixed: tuple[int, ...] = ()


def _onnx_attr(v: Any) -> Any:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, DType):
        return ONNX_TYPES[v]
    return list(v) if isinstance(v, tuple) else v


def _simple(op_type: str, **fields: str) -> Emit:
    """One ONNX op on the operands; ``fields`` maps its attribute names to kiln attribute fields."""

    def emit(e: _Emitter, n: Node, xs: list[str], dt: DType) -> list[str]:
        attrs = {k: _onnx_attr(getattr(n.attrs, f)) for k, f in fields.items()}
        return [e.one(op_type, *xs, **attrs)]

    return emit


def _gelu(e: _Emitter, n: Node, xs: list[str], dt: DType) -> list[str]:
    a: Any = n.attrs
    x = xs[0]
    if e.opset >= 20:
        return [e.one("Gelu", x, approximate=a.approximate)]
    if a.approximate == "tanh":
        cube = e.one("Mul", e.one("Mul", x, x), x)
        inner = e.one("Add", x, e.one("Mul", e.scalar(0.044715, dt), cube))
        t = e.one("Tanh", e.one("Mul", e.scalar(math.sqrt(2.0 / math.pi), dt), inner))
    else:
        t = e.one("Erf", e.one("Div", x, e.scalar(math.sqrt(2.0), dt)))
    half_x = e.one("Mul", e.scalar(0.5, dt), x)
    return [e.one("Mul", half_x, e.one("Add", e.scalar(1.0, dt), t))]


def _div(e: _Emitter, n: Node, xs: list[str], dt: DType) -> list[str]:
    a, b = xs
    if dt.is_float:
        return [e.one("Div", a, b)]
    zero, one = e.scalar(0, dt), e.scalar(1, dt)
    if dt.kind == "u":  # (a / max(b, 1)) * min(b, 1), without Where (onnxruntime has no u64 Where)
        return [e.one("Mul", e.one("Div", a, e.one("Max", b, one)), e.one("Min", b, one))]
    by_zero = e.one("Equal", b, zero)
    by_minus1 = e.one("Equal", b, e.scalar(-1, dt))  # INT_MIN / -1 traps: negate instead
    safe = e.one("Where", e.one("Or", by_zero, by_minus1), one, b)
    q = e.one("Where", by_minus1, e.one("Neg", a), e.one("Div", a, safe))
    return [e.one("Where", by_zero, zero, q)]


def _reduce(op_type: str) -> Emit:
    def emit(e: _Emitter, n: Node, xs: list[str], dt: DType) -> list[str]:
        a: Any = n.attrs
        x, keep = xs[0], int(a.keepdims)
        if not a.axes:  # ONNX reduces every axis when axes is empty, kiln none
            return [e.one(op_type, x, keepdims=keep, noop_with_empty_axes=1)]
        y = e.one(op_type, x, e.ints(a.axes), keepdims=keep)
        if dt.is_float and op_type in ("ReduceMax", "ReduceMin"):
            # kiln (like NumPy) gives NaN when any reduced value is NaN; onnxruntime's result
            # depends on where the NaNs are. The sum of the NaNs alone is NaN exactly there.
            nans = e.one("Where", e.one("IsNaN", x), x, e.scalar(0, dt))
            nan = e.one("ReduceSum", nans, e.ints(a.axes), keepdims=keep)
            y = e.one("Where", e.one("IsNaN", nan), nan, y)
        return [y]

    return emit


def _cumsum(e: _Emitter, n: Node, xs: list[str], dt: DType) -> list[str]:
    a: Any = n.attrs
    axis = e.const(np.asarray(a.axis, dtype=np.int64))
    return [e.one("CumSum", xs[0], axis, exclusive=int(a.exclusive), reverse=int(a.reverse))]


def _layer_norm(e: _Emitter, n: Node, xs: list[str], dt: DType) -> list[str]:
    a: Any = n.attrs
    return [e.one("LayerNormalization", *xs, axis=a.axis, epsilon=float(a.eps))]


def _rms_norm(e: _Emitter, n: Node, xs: list[str], dt: DType) -> list[str]:
    a: Any = n.attrs
    x, w = xs
    axes = e.ints(range(a.axis, n.operands[0].tensor_type.rank))
    ms = e.one("ReduceMean", e.one("Mul", x, x), axes, keepdims=1)
    rms = e.one("Sqrt", e.one("Add", ms, e.scalar(a.eps, dt)))
    return [e.one("Mul", e.one("Div", x, rms), w)]


def _reshape(e: _Emitter, n: Node, xs: list[str], dt: DType) -> list[str]:
    shape = n.attrs.shape  # type: ignore[attr-defined]
    # allowzero keeps a 0 (static, or a symbolic dim bound to 0) from meaning "copy the input dim".
    zero = any(not isinstance(d, int) or d == 0 for d in shape)
    return [e.one("Reshape", xs[0], e.shape(shape), **({"allowzero": 1} if zero else {}))]


def _expand(e: _Emitter, n: Node, xs: list[str], dt: DType) -> list[str]:
    return [e.one("Expand", xs[0], e.shape(n.attrs.shape))]  # type: ignore[attr-defined]


def _slice(e: _Emitter, n: Node, xs: list[str], dt: DType) -> list[str]:
    a: Any = n.attrs
    if not a.axes:
        return [e.one("Identity", xs[0])]
    starts, stops, steps = [], [], []
    for start, stop, step in zip(a.starts, a.stops, a.steps, strict=True):
        if slice_length(start, stop, step) == 0:
            start, stop, step = 0, 0, 1  # kiln's empty start -1 would mean "last" to ONNX
        elif step < 0 and stop < 0:
            stop = INT64_MIN  # kiln's canonical "before index 0"
        starts.append(start)
        stops.append(stop)
        steps.append(step)
    ins = (e.ints(starts), e.ints(stops), e.ints(a.axes), e.ints(steps))
    return [e.one("Slice", xs[0], *ins)]


def _split(e: _Emitter, n: Node, xs: list[str], dt: DType) -> list[str]:
    a: Any = n.attrs
    return e.op("Split", xs[0], e.ints(a.sizes), n=len(a.sizes), axis=a.axis)


def _gather(e: _Emitter, n: Node, xs: list[str], dt: DType) -> list[str]:
    a: Any = n.attrs
    idt = n.operands[1].tensor_type.scalar_dtype
    idx = xs[1] if idt in (i32, i64) else e.cast(xs[1], idt, i64)  # ONNX takes int32/int64 only
    return [e.one("Gather", xs[0], idx, axis=a.axis)]


def _gather_nd(e: _Emitter, n: Node, xs: list[str], dt: DType) -> list[str]:
    idx = e.cast(xs[1], n.operands[1].tensor_type.scalar_dtype, i64)  # GatherND takes int64 only
    return [e.one("GatherND", xs[0], idx, batch_dims=n.attrs.batch_dims)]  # type: ignore[attr-defined]


def _axes(op_type: str) -> Emit:
    def emit(e: _Emitter, n: Node, xs: list[str], dt: DType) -> list[str]:
        a: Any = n.attrs
        if not a.axes:  # an empty Squeeze would drop every size-1 axis
            return [e.one("Identity", xs[0])]
        return [e.one(op_type, xs[0], e.ints(a.axes))]

    return emit


def _iota(e: _Emitter, n: Node, xs: list[str], dt: DType) -> list[str]:
    # start + step * index in f64 or i64, then one cast: kiln's definition, with no accumulated
    # rounding (Range adds delta repeatedly).
    a: Any = n.attrs
    base = f64 if a.dtype.is_float else i64
    idx = e.one("Range", e.scalar(0, i64), e.scalar(a.length, i64), e.scalar(1, i64))
    y = e.cast(idx, i64, base, cache=False)
    if a.step != 1:
        y = e.one("Mul", y, e.scalar(a.step, base))
    if a.start != 0:
        y = e.one("Add", y, e.scalar(a.start, base))
    return [e.cast(y, base, a.dtype, cache=False)]


def _topk(e: _Emitter, n: Node, xs: list[str], dt: DType) -> list[str]:
    a: Any = n.attrs
    return e.op("TopK", xs[0], e.ints([a.k]), n=2, axis=a.axis, largest=int(a.largest), sorted=1)


def _trilu(upper: int) -> Emit:
    def emit(e: _Emitter, n: Node, xs: list[str], dt: DType) -> list[str]:
        a: Any = n.attrs
        return [e.one("Trilu", xs[0], e.const(np.asarray(a.k, dtype=np.int64)), upper=upper)]

    return emit


_UNARY = {
    "neg": "Neg", "abs": "Abs", "exp": "Exp", "log": "Log", "sqrt": "Sqrt", "reciprocal": "Reciprocal",
    "tanh": "Tanh", "erf": "Erf", "sin": "Sin", "cos": "Cos", "floor": "Floor", "ceil": "Ceil",
    "sigmoid": "Sigmoid", "relu": "Relu", "isnan": "IsNaN",
}  # fmt: skip
_BINARY = {
    "add": "Add", "sub": "Sub", "mul": "Mul", "pow": "Pow", "maximum": "Max", "minimum": "Min",
    "eq": "Equal", "lt": "Less", "le": "LessOrEqual", "gt": "Greater", "ge": "GreaterOrEqual",
}  # fmt: skip
_LOGICAL = {"logical_not": "Not", "logical_and": "And", "logical_or": "Or", "logical_xor": "Xor"}
_REDUCE = {
    "reduce_sum": "ReduceSum", "reduce_mean": "ReduceMean", "reduce_max": "ReduceMax",
    "reduce_min": "ReduceMin", "reduce_prod": "ReduceProd",
}  # fmt: skip
_ARG = {"axis": "axis", "keepdims": "keepdims", "select_last_index": "select_last"}

TABLE: dict[str, Rule] = {
    **{k: Rule(_simple(v)) for k, v in (_UNARY | _BINARY).items()},
    **{k: Rule(_simple(v), _same) for k, v in _LOGICAL.items()},
    **{
        k: Rule(_reduce(v), _sum64 if k in ("reduce_sum", "reduce_prod") else _compute)
        for k, v in _REDUCE.items()
    },
    "rsqrt": Rule(lambda e, n, xs, dt: [e.one("Reciprocal", e.one("Sqrt", *xs))]),
    "silu": Rule(lambda e, n, xs, dt: [e.one("Mul", xs[0], e.one("Sigmoid", xs[0]))]),
    "gelu": Rule(_gelu),
    "div": Rule(_div),
    "ne": Rule(lambda e, n, xs, dt: [e.one("Not", e.one("Equal", *xs))]),
    "where": Rule(_simple("Where"), _select, fixed=(0,)),
    "cast": Rule(_simple("Cast", to="dtype"), _same),
    "matmul": Rule(_simple("MatMul")),
    "einsum": Rule(_simple("Einsum", equation="equation")),
    "argmax": Rule(_simple("ArgMax", **_ARG), _numeric),
    "argmin": Rule(_simple("ArgMin", **_ARG), _numeric),
    "cumsum": Rule(_cumsum),
    "softmax": Rule(_simple("Softmax", axis="axis")),
    "log_softmax": Rule(_simple("LogSoftmax", axis="axis")),
    "layer_norm": Rule(_layer_norm),
    "rms_norm": Rule(_rms_norm),
    "reshape": Rule(_reshape, _same),
    "broadcast_to": Rule(_expand, _no_bf16),
    "transpose": Rule(_simple("Transpose", perm="perm"), _same),
    "slice": Rule(_slice, _same),
    "concat": Rule(_simple("Concat", axis="axis"), _same),
    "split": Rule(_split, _same),
    "gather": Rule(_gather, _same),
    "gather_nd": Rule(_gather_nd, _same),
    "squeeze": Rule(_axes("Squeeze"), _same),
    "unsqueeze": Rule(_axes("Unsqueeze"), _same),
    "iota": Rule(_iota, _same),
    "topk": Rule(_topk, _numeric),
    "triu": Rule(_trilu(1)),
    "tril": Rule(_trilu(0)),
    **{k: Rule(*v) for k, v in QUANT_RULES.items()},  # qmatmul, qgather
}


# -- checks -----------------------------------------------------------------------------------------
def _type_problem(t: Type) -> str | None:
    if isinstance(t, HostType):
        return f"host value {t} (ONNX models carry tensors only)"
    if isinstance(t.dtype, QuantType):
        return f"quantized type {t} (dequantize before exporting)"
    if t.dtype not in ONNX_TYPES:
        return f"dtype {t.dtype} in {t} has no ONNX type (ONNX integers are 8/16/32/64 bits: cast first)"
    return None


def _problems(graph: Graph) -> list[str]:
    """Everything that keeps ``graph`` from becoming ONNX, one line per input, output or node."""
    out: list[str] = []
    weights, weight_reasons = quant_constants(graph), weight_problems(graph)
    names = graph.input_names
    for kind, used in (("input", names), ("output", graph.output_names)):
        out += [
            f"graph {kind} name '{n}' is used twice" for n in sorted({n for n in used if used.count(n) > 1})
        ]
    inputs = dict(zip(names, graph.inputs, strict=True))
    for name, v in inputs.items():
        if why := _type_problem(v.type):
            out.append(f"graph input '{name}': {why}")
    for name, v in graph.outputs:
        if name in inputs and inputs[name] is not v:
            out.append(f"graph output '{name}' has the name of a different graph input")
    for node in graph.nodes:
        reasons = [why for r in node.results if (why := _type_problem(r.type)) and r not in weights]
        reasons += weight_reasons.get(node, [])
        if node.op == "constant" and node.attrs.ref not in graph.constants:  # type: ignore[attr-defined]
            reasons.append("its data is not loaded (load the graph with its weights)")
        if node.op != "constant" and node.op not in TABLE:
            because = NOT_EXPRESSIBLE.get(node.op, "no ONNX lowering is defined for it")
            reasons.append(f"op '{node.op}' cannot be exported: {because}")
        if reasons:
            out.append(f"{node.describe()}: {'; '.join(dict.fromkeys(reasons))}")
    return out


def _value_info(name: str, t: TensorType) -> onnx.ValueInfoProto:
    assert isinstance(t.dtype, DType)
    return helper.make_tensor_value_info(name, ONNX_TYPES[t.dtype], list(t.shape))


def _dtype(v: Value) -> DType:
    return v.tensor_type.scalar_dtype


# -- building ---------------------------------------------------------------------------------------
def _build(graph: Graph, opset: int) -> onnx.ModelProto:
    in_names = graph.input_names
    e = _Emitter(opset, set(in_names) | set(graph.output_names))
    tensor: dict[Value, str] = dict(zip(graph.inputs, in_names, strict=True))
    for name, v in zip(in_names, graph.inputs, strict=True):
        for axis, d in enumerate(v.tensor_type.shape):
            if isinstance(d, str):
                e.dim_src.setdefault(d, (name, axis))
    wanted: dict[Value, str] = {}  # node results named after the graph output they are
    for name, v in graph.outputs:
        wanted.setdefault(v, name)
    by_ref: dict[str, str] = {}
    weights, e.data = quant_constants(graph), weight_data(graph)

    for index, node in enumerate(graph.nodes):
        first = node.results[0].name if node.results and node.results[0].name else f"{node.op}{index}"
        e.hint, e.where = first, node.describe()
        if node.op == "constant":
            a: Any = node.attrs
            if node.result in weights:  # written by the qmatmul/qgather rule in its own form
                tensor[node.result] = ""
                continue
            if a.ref not in by_ref:
                t = node.result.tensor_type
                arr = np.asarray(graph.constants[a.ref]).astype(t.scalar_dtype.np_dtype, copy=False)
                by_ref[a.ref] = e.const(arr.reshape(t.static_shape), a.ref)
            tensor[node.result] = by_ref[a.ref]
            continue
        rule = TABLE[node.op]
        xs = [
            tensor[v] if i in rule.fixed else e.cast(tensor[v], _dtype(v), rule.widen(_dtype(v)))
            for i, v in enumerate(node.operands)
        ]
        plain = [v for v in node.operands if isinstance(v.tensor_type.dtype, DType)]
        ref_dt = _dtype(plain[0]) if plain else _dtype(node.results[0])
        mark = len(e.nodes)
        ys = rule.emit(e, node, xs, rule.widen(ref_dt))
        for k, (r, y) in enumerate(zip(node.results, ys, strict=True)):
            y = e.cast(y, rule.widen(_dtype(r)), _dtype(r), cache=False)
            final = wanted.get(r) or e.fresh(r.name or (first if k == 0 else f"{first}_{k}"))
            tensor[r] = final if e.rename(y, final, mark) else y

    outputs = []
    for name, v in graph.outputs:
        if tensor[v] != name:
            e.nodes.append(helper.make_node("Identity", [tensor[v]], [name], name=f"output/{name}"))
        outputs.append(_value_info(name, v.tensor_type))
    inputs = [_value_info(n, v.tensor_type) for n, v in zip(in_names, graph.inputs, strict=True)]
    g = helper.make_graph(e.nodes, graph.name, inputs, outputs, e.inits)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(g, opset_imports=opsets, producer_name="kiln", producer_version=_version())
    if e.ms_domain:
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    model.ir_version = helper.find_min_ir_version_for(opsets)  # onnx knows no versions of contrib domains
    return model


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kiln")
    except PackageNotFoundError:  # an uninstalled checkout still exports
        return "0"


def _save(model: onnx.ModelProto, path: Path, external: bool) -> None:
    if not external:
        onnx.save_model(model, path)
        return
    location = f"{path.name}.data"
    (path.parent / location).unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=location)
    onnx.load_external_data_for_model(model, str(path.parent))  # saving moved the data out


def _check(model: onnx.ModelProto, graph: Graph, weight_bytes: int) -> None:
    try:
        if weight_bytes < _PROTO_LIMIT - 64 * 2**20:
            onnx.checker.check_model(model, full_check=True)
            return
        with tempfile.TemporaryDirectory() as tmp:
            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            _save(copy, Path(tmp) / "model.onnx", external=True)
            onnx.checker.check_model(str(Path(tmp) / "model.onnx"), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise OnnxExportError(
            f"the ONNX export of graph @{graph.name} fails ONNX's checker; this is a bug in kiln's "
            f"exporter (please report it with the graph): {err}"
        ) from None


def to_onnx(
    graph: Graph,
    path: str | os.PathLike[str] | None = None,
    *,
    opset: int = 18,
    external_data: bool | None = None,
) -> onnx.ModelProto:
    """Export ``graph`` to an ONNX model and return it; save it to ``path`` when one is given.

    ``opset``: the default-domain opset (18 up to what the installed onnx knows; from 20 gelu is
    one Gelu node). ``external_data``: when saving, put the weights in ``<file name>.data`` next to
    ``path``; None does so only when they exceed about 1.8 GB (protobuf's 2 GB limit). Raises
    :class:`OnnxExportError` naming every value and op ONNX cannot express, before writing anything.
    """
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise OnnxExportError(f"opset {opset} is not supported: kiln exports opsets {MIN_OPSET}..{newest}")
    if has_fused(graph):  # kernel groups and attention export as the ops they stand for
        graph = Unfuse().run(graph.copy(), default_context())
    problems = _problems(graph)
    if problems:
        listing = "\n  ".join(problems)
        raise OnnxExportError(
            f"graph @{graph.name} cannot be exported to ONNX ({len(problems)} problems):\n  {listing}"
        )
    model = _build(graph, opset)
    weight_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
    _check(model, graph, weight_bytes)
    if path is not None:
        external = weight_bytes > EXTERNAL_DATA_THRESHOLD if external_data is None else external_data
        _save(model, Path(path), external)
    return model
