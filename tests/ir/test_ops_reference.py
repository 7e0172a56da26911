"""Per-op reference tests: every registered op, run by the interpreter, against hand-written truth.

Each case builds a one-op graph with :class:`GraphBuilder`, runs it with ``interpret`` and compares
with a truth computed here from the definitions (Python scalars, ``math``, exact integers, explicit
loops), never with the op's own ``reference`` function. Float truths are computed in float64 and
rounded once to the result dtype; integer truths are exact Python ints wrapped to the result width
by :func:`wrap` (two's complement written out with ``%``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from kiln.ir import dtypes as kd
from kiln.ir.builder import GraphBuilder
from kiln.ir.dtypes import DType
from kiln.ir.errors import (
    AttributeError_,
    KilnError,
    TypeInferenceError,
    UnknownOpError,
    VerifyError,
)
from kiln.ir.interpret import interpret
from kiln.ir.registry import default_context
from kiln.ir.types import TensorType

# Allowed distance from the float64 truth rounded to the result dtype. f16 and bf16 are computed in
# float32 and rounded once, so they may sit one unit in the last place (2^-10, 2^-7) from it.
TOL: dict[str, dict[str, float]] = {
    "f64": {"rtol": 1e-12, "atol": 1e-12},
    "f32": {"rtol": 1e-5, "atol": 1e-6},
    "f16": {"rtol": 1e-3, "atol": 1e-3},
    "bf16": {"rtol": 8e-3, "atol": 8e-3},
}

BF16 = ml_dtypes.bfloat16
i4, u3 = DType("i", 4), DType("u", 3)
FLOATS = [kd.f32, kd.f16, kd.bf16]
Arg = np.ndarray | tuple[DType, np.ndarray]


# -- truth helpers ---------------------------------------------------------------------------------
def wrap(v: int, dt: DType) -> int:
    """Two's complement wrap of a Python int to ``dt``'s width."""
    m = 1 << dt.bits
    v %= m
    return v - m if dt.kind == "i" and v >= m // 2 else v


def exact(a: np.ndarray) -> np.ndarray:
    """Inputs as the truth sees them: Python ints, float64 (exact for every float dtype), bools."""
    if a.dtype.kind in "iu":
        return a.astype(object)
    if a.dtype == np.bool_:
        return a
    return a.astype(np.float64)


def bshape(*shapes: Sequence[int]) -> tuple[int, ...]:
    rank = max(len(s) for s in shapes)
    padded = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
    return tuple(max(p[d] for p in padded) for d in range(rank))


def at(a: np.ndarray, idx: tuple[int, ...]) -> Any:
    """``a`` broadcast to the rank of ``idx``, read at ``idx`` (size-1 dims repeat)."""
    idx = idx[len(idx) - a.ndim :]
    return a[tuple(i if n != 1 else 0 for i, n in zip(idx, a.shape))]


def elementwise(f: Callable[..., Any], *arrays: np.ndarray) -> np.ndarray:
    """Apply scalar ``f`` over NumPy-broadcast operands with an explicit loop."""
    shape = bshape(*(a.shape for a in arrays))
    out = np.empty(shape, dtype=object)
    for idx in itertools.product(*map(range, shape)):
        out[idx] = f(*(at(a, idx) for a in arrays))
    return out


def vec(f: Callable[..., Any]) -> Callable[..., np.ndarray]:
    return lambda *xs: elementwise(f, *xs)


def rows(x: np.ndarray, axes: Sequence[int]) -> tuple[np.ndarray, tuple[int, ...]]:
    """Move ``axes`` last and flatten them: (rows, kept shape)."""
    kept = [d for d in range(x.ndim) if d not in axes]
    moved = np.transpose(x, [*kept, *axes])
    kept_shape = tuple(x.shape[d] for d in kept)
    return moved.reshape(*kept_shape, -1).reshape(-1, math.prod(x.shape[a] for a in axes)), kept_shape


def reduce_truth(
    fn: Callable[[list[Any]], Any], axes: Sequence[int], keepdims: bool = False
) -> Callable[[np.ndarray], np.ndarray]:
    def truth(x: np.ndarray) -> np.ndarray:
        r, kept_shape = rows(x, axes)
        out = np.empty(len(r), dtype=object)
        for i, row in enumerate(r):
            out[i] = fn(list(row))
        out = out.reshape(kept_shape)
        if keepdims:
            out = out.reshape(tuple(1 if d in axes else n for d, n in enumerate(x.shape)))
        return out

    return truth


def along(x: np.ndarray, axis: int, fn: Callable[[list[Any]], list[Any]]) -> np.ndarray:
    """Apply a row function (list -> list of the same length) along ``axis``."""
    moved = np.moveaxis(x, axis, -1)
    out = np.empty(moved.shape, dtype=object)
    for idx in itertools.product(*map(range, moved.shape[:-1])):
        out[idx] = np.array([*fn(list(moved[idx])), None], dtype=object)[:-1]
    return np.moveaxis(out, -1, axis)


def nan_max(a: float, b: float) -> float:
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)


def nan_min(a: float, b: float) -> float:
    return math.nan if math.isnan(a) or math.isnan(b) else min(a, b)


def int_div(a: int, b: int) -> int:
    return 0 if b == 0 else math.trunc(Fraction(a, b))


def int_pow(a: int, b: int) -> int:
    if b >= 0:
        return a**b
    return 0 if a == 0 else math.trunc(Fraction(a) ** b)


def matmul_truth(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xs = x[None, :] if x.ndim == 1 else x
    ys = y[:, None] if y.ndim == 1 else y
    batch = bshape(xs.shape[:-2], ys.shape[:-2])
    m, k, n = xs.shape[-2], xs.shape[-1], ys.shape[-1]
    out = np.empty((*batch, m, n), dtype=object)
    for bi in itertools.product(*map(range, batch)):
        for i, j in itertools.product(range(m), range(n)):
            terms = [at(xs, (*bi, i, t)) * at(ys, (*bi, t, j)) for t in range(k)]
            out[(*bi, i, j)] = math.fsum(terms) if isinstance(terms[0], float) else sum(terms)
    if x.ndim == 1:
        out = out[..., 0, :]
    if y.ndim == 1:
        out = out[..., 0]
    return out


def arg_truth(largest: bool, axis: int, keepdims: bool = False, select_last: bool = False) -> Callable:
    def best(row: list[Any]) -> int:
        b = 0
        for i, v in enumerate(row):
            better = v > row[b] if largest else v < row[b]
            if better or (select_last and v == row[b]):
                b = i
        return b

    def truth(x: np.ndarray) -> np.ndarray:
        return reduce_truth(best, (axis,), keepdims)(x)

    return truth


def cumsum_truth(axis: int, exclusive: bool, reverse: bool) -> Callable[[np.ndarray], np.ndarray]:
    def row(r: list[Any]) -> list[Any]:
        seq = r[::-1] if reverse else r
        out, acc = [], 0
        for v in seq:
            if exclusive:
                out.append(acc)
                acc += v
            else:
                acc += v
                out.append(acc)
        return out[::-1] if reverse else out

    return lambda x: along(x, axis, row)


def softmax_row(r: list[float]) -> list[float]:
    e = [math.exp(v) for v in r]
    s = math.fsum(e)
    return [v / s for v in e]


def log_softmax_row(r: list[float]) -> list[float]:
    s = math.log(math.fsum(math.exp(v) for v in r))
    return [v - s for v in r]


def norm_truth(axis: int, eps: float, rms: bool) -> Callable[..., np.ndarray]:
    def truth(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
        axes = tuple(range(axis, x.ndim))
        r, _ = rows(x, axes)
        wf = list(w.ravel())
        bf = list(b.ravel()) if b is not None else [0.0] * len(wf)
        out = []
        for row in r:
            n = len(row)
            if rms:
                scale = 1 / math.sqrt(math.fsum(v * v for v in row) / n + eps)
                out.append([v * scale * wi for v, wi in zip(row, wf)])
            else:
                mean = math.fsum(row) / n
                var = math.fsum((v - mean) ** 2 for v in row) / n
                out.append([(v - mean) / math.sqrt(var + eps) * wi + bi for v, wi, bi in zip(row, wf, bf)])
        return np.array(out, dtype=np.float64).reshape(x.shape)

    return truth


def canonical_slice(dims: Sequence[int], spec: dict[int, slice]) -> dict[str, tuple[int, ...]]:
    """SliceAttrs keywords for Python slices per axis (canonical bounds, as ``slice.indices``)."""
    axes = sorted(spec)
    bounds = [spec[a].indices(dims[a]) for a in axes]
    return {
        "axes": tuple(axes),
        "starts": tuple(s for s, _, _ in bounds),
        "stops": tuple(e for _, e, _ in bounds),
        "steps": tuple(st for _, _, st in bounds),
    }


def tri_truth(upper: bool, k: int) -> Callable[[np.ndarray], np.ndarray]:
    def truth(x: np.ndarray) -> np.ndarray:
        out = np.empty(x.shape, dtype=object)
        for idx in itertools.product(*map(range, x.shape)):
            i, j = idx[-2:]
            keep = j - i >= k if upper else j - i <= k
            out[idx] = x[idx] if keep else 0
        return out

    return truth


def topk_truth(k: int, axis: int, largest: bool) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    def order(r: list[Any]) -> list[int]:
        return sorted(range(len(r)), key=lambda i: ((-1 if largest else 1) * r[i], i))[:k]

    def truth(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        moved = np.moveaxis(x, axis, -1)
        vals = np.empty((*moved.shape[:-1], k), dtype=object)
        idxs = np.empty((*moved.shape[:-1], k), dtype=object)
        for idx in itertools.product(*map(range, moved.shape[:-1])):
            o = order([int(v) if isinstance(v, np.bool_) else v for v in moved[idx]])
            for j, i in enumerate(o):
                vals[(*idx, j)] = moved[idx][i]
                idxs[(*idx, j)] = i
        return np.moveaxis(vals, -1, axis), np.moveaxis(idxs, -1, axis)

    return truth


def iota_truth(start: float, stop: float, step: float) -> Callable[[], np.ndarray]:
    def truth() -> np.ndarray:
        out, v, i = [], start, 0
        while (v < stop) if step > 0 else (v > stop):
            out.append(v)
            i += 1
            v = start + i * step
        return np.array(out, dtype=object)

    return truth


# -- running and comparing -------------------------------------------------------------------------
def run(op: str, *args: Arg, **attrs: Any) -> list[np.ndarray]:
    return [y for y, _ in run_typed(op, *args, **attrs)]


def run_typed(op: str, *args: Arg, **attrs: Any) -> list[tuple[np.ndarray, DType]]:
    """Build a one-op graph on inputs x0, x1, ... and interpret it: (result, its declared dtype)."""
    b = GraphBuilder("t")
    feeds: dict[str, np.ndarray] = {}
    values = []
    for i, a in enumerate(args):
        dt, arr = a if isinstance(a, tuple) else (kd.from_numpy(a.dtype), a)
        values.append(b.input(f"x{i}", TensorType(dt, tuple(arr.shape))))
        feeds[f"x{i}"] = arr
    results = b.op_values(op, *values, **attrs)
    for i, r in enumerate(results):
        b.output(f"y{i}", r)
    out = interpret(b.build(), feeds)
    got = [out[f"y{i}"] for i in range(len(results))]
    for r, y in zip(results, got):
        assert isinstance(y, np.ndarray), f"{op} returned {type(y).__name__}"
        assert y.dtype == r.tensor_type.scalar_dtype.np_dtype, f"{op}: {y.dtype} for {r.type}"
        assert tuple(y.shape) == r.tensor_type.shape
    return [(y, r.tensor_type.scalar_dtype) for y, r in zip(got, results)]


def assert_matches(got: np.ndarray, want: Any, dt: DType) -> None:
    """``got`` (of dtype ``dt``) equals the truth: rounded for floats, wrapped for ints."""
    assert got.dtype == dt.np_dtype, f"{got.dtype} != {dt.np_dtype}"
    w = np.asarray(want, dtype=object)
    assert got.shape == w.shape, f"shape {got.shape} != {w.shape}"
    if dt.is_float:
        with np.errstate(over="ignore"):  # truths beyond the dtype's range round to +-inf
            rounded = w.astype(np.float64).astype(dt.np_dtype).astype(np.float64)
        np.testing.assert_allclose(got.astype(np.float64), rounded, equal_nan=True, **TOL[dt.name])
    elif dt.is_bool:
        assert got.tolist() == w.astype(bool).tolist()
    else:
        wrapped = np.asarray(np.frompyfunc(lambda v: wrap(int(v), dt), 1, 1)(w), dtype=object)
        assert got.astype(object).tolist() == wrapped.tolist()


@dataclass
class Case:
    """One reference case: ``op(*args, **attrs)`` against ``truth(*exact(args))``."""

    id: str
    op: str
    args: tuple[Arg, ...]
    truth: Callable[..., Any]
    attrs: dict[str, Any] = field(default_factory=dict)


def arr(values: Any, dtype: Any) -> np.ndarray:
    np_dtype = dtype.np_dtype if isinstance(dtype, DType) else np.dtype(dtype)
    if isinstance(values, np.ndarray | np.generic):
        return values.astype(np_dtype)
    return np.array(values, dtype=np_dtype)  # exact for Python ints up to u64


def rand(shape: Sequence[int], dtype: DType, lo: float = -2.0, hi: float = 2.0, seed: int = 0) -> np.ndarray:
    return arr(np.random.default_rng(seed).uniform(lo, hi, shape), dtype)


def ints(shape: Sequence[int], dtype: DType, seed: int = 0) -> np.ndarray:
    return arr(np.random.default_rng(seed).integers(dtype.min_value, dtype.max_value + 1, shape), dtype)


# -- the table -------------------------------------------------------------------------------------
ANY = [-3.0, -1.25, -0.5, 0.0, 0.75, 2.0]
NONZERO = [-3.0, -1.25, -0.5, 0.3, 0.75, 2.0]
POS = [0.25, 0.5, 1.0, 2.0, 3.5, 10.0]
ROUNDING = [-2.5, -0.5, -0.25, 0.0, 0.5, 1.5, 2.75]

UNARY_FLOAT: dict[str, tuple[list[float], Callable[[float], float]]] = {
    "neg": (ANY, lambda v: -v),
    "abs": (ANY, lambda v: -v if v < 0 else v),
    "exp": (ANY, math.exp),
    "log": (POS, math.log),
    "sqrt": (POS, math.sqrt),
    "rsqrt": (POS, lambda v: 1 / math.sqrt(v)),
    "reciprocal": (NONZERO, lambda v: 1 / v),
    "tanh": (ANY, math.tanh),
    "erf": (ANY, math.erf),
    "sin": (ANY, math.sin),
    "cos": (ANY, math.cos),
    "floor": (ROUNDING, math.floor),
    "ceil": (ROUNDING, math.ceil),
    "sigmoid": (ANY, lambda v: 1 / (1 + math.exp(-v))),
    "relu": (ANY, lambda v: v if v > 0 else 0.0),
    "silu": (ANY, lambda v: v / (1 + math.exp(-v))),
}


def gelu_exact(v: float) -> float:
    return 0.5 * v * (1 + math.erf(v / math.sqrt(2)))


def gelu_tanh(v: float) -> float:
    return 0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))


BINARY_FLOAT: dict[str, Callable[[float, float], Any]] = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: a**b,
    "maximum": nan_max,
    "minimum": nan_min,
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
}

BINARY_INT: dict[str, Callable[[int, int], Any]] = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": int_div,
    "maximum": max,
    "minimum": min,
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
}

BOOL_OPS: dict[str, Callable[[bool, bool], bool]] = {
    "logical_and": lambda a, b: a and b,
    "logical_or": lambda a, b: a or b,
    "logical_xor": lambda a, b: a != b,
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
}


def build_cases() -> list[Case]:
    cases: list[Case] = []
    add = cases.append

    # Unary float ops in f32, f16 and bf16; gelu in both forms; isnan with nan/inf.
    for name, (values, f) in UNARY_FLOAT.items():
        for dt in FLOATS:
            add(Case(f"{name}-{dt}", name, (arr(values, dt),), vec(f)))
    for dt in FLOATS:
        x = rand((2, 5), dt, -3, 3)
        add(Case(f"gelu-none-{dt}", "gelu", (x,), vec(gelu_exact)))
        add(Case(f"gelu-tanh-{dt}", "gelu", (x,), vec(gelu_tanh), {"approximate": "tanh"}))
        specials = arr([math.nan, 0.0, math.inf, -math.inf, -1.5], dt)
        add(Case(f"isnan-{dt}", "isnan", (specials,), vec(math.isnan)))
    add(
        Case("logical_not", "logical_not", (np.array([[True, False], [False, False]]),), vec(lambda v: not v))
    )
    # Signed-integer unary ops wrap: -(-8) and |-8| are -8 in i4; relu of ints.
    add(Case("neg-i4-wraps", "neg", ((i4, arr([-8, -1, 0, 7], np.int8)),), vec(lambda v: -v)))
    add(Case("neg-i8-wraps", "neg", (arr([-128, -1, 127], np.int8),), vec(lambda v: -v)))
    add(Case("abs-i4-wraps", "abs", ((i4, arr([-8, -3, 0, 5], np.int8)),), vec(abs)))
    add(Case("abs-u8", "abs", (arr([0, 200, 255], np.uint8),), vec(abs)))
    add(Case("relu-i8", "relu", (arr([-128, -1, 0, 5, 127], np.int8),), vec(lambda v: max(v, 0))))

    # Binary float ops broadcasting [2,1,3] with [4,1]; pow on positive bases.
    for name, f in BINARY_FLOAT.items():
        for dt in FLOATS:
            lo = 0.5 if name == "pow" else -2.0
            x, y = rand((2, 1, 3), dt, lo, 2.0, seed=1), rand((4, 1), dt, -2.0, 2.0, seed=2)
            if name in ("eq", "ne", "le", "ge"):
                xf = x.astype(np.float64)
                y = arr([[xf[0, 0, 0]], [xf[1, 0, 2]], [0.0], [xf[0, 0, 1]]], dt)  # some equal pairs
            add(Case(f"{name}-{dt}-broadcast", name, (x, y), vec(f)))
    # NaN propagation and float division by zero.
    nan_l, nan_r = (
        arr([math.nan, 1.0, -2.0, math.nan], np.float32),
        arr([0.5, math.nan, 3.0, math.nan], np.float32),
    )
    add(Case("maximum-nan", "maximum", (nan_l, nan_r), vec(nan_max)))
    add(Case("minimum-nan", "minimum", (nan_l, nan_r), vec(nan_min)))
    add(
        Case(
            "div-f32-by-zero",
            "div",
            (arr([1.0, -1.0, 0.0, 2.0], np.float32), arr([0.0, 0.0, 0.0, -0.0], np.float32)),
            lambda x, y: np.array([math.inf, -math.inf, math.nan, -math.inf]),
        )
    )
    # Integer binary ops: broadcasting in i32, wrapping in i8, i4 and u3, truncating division.
    for name, f in BINARY_INT.items():
        x, y = ints((2, 1, 3), kd.i32, seed=3) // 65536, ints((4, 1), kd.i32, seed=4) // 65536
        if name in ("eq", "ne", "le", "ge"):
            y[1, 0] = x[0, 0, 1]
        add(Case(f"{name}-i32-broadcast", name, (x, y), vec(f)))
        add(Case(f"{name}-i8-wraps", name, (ints((3, 4), kd.i8, seed=5), ints((4,), kd.i8, seed=6)), vec(f)))
        add(
            Case(
                f"{name}-i4-wraps",
                name,
                ((i4, ints((3, 4), i4, seed=7)), (i4, ints((4,), i4, seed=8))),
                vec(f),
            )
        )
        add(
            Case(
                f"{name}-u3-wraps",
                name,
                ((u3, ints((3, 4), u3, seed=9)), (u3, ints((4,), u3, seed=10))),
                vec(f),
            )
        )
    add(
        Case(
            "add-i4-7+1",
            "add",
            ((i4, arr([7, -8, 3, -1], np.int8)), (i4, arr([1, -1, 4, -8], np.int8))),
            lambda x, y: np.array([-8, 7, 7, 7]),
        )
    )
    add(
        Case(
            "sub-u3-0-1",
            "sub",
            ((u3, arr([0, 7, 3], np.uint8)), (u3, arr([1, 7, 5], np.uint8))),
            lambda x, y: np.array([7, 0, 6]),
        )
    )
    add(
        Case(
            "div-i32-trunc-and-zero",
            "div",
            (arr([7, -7, 7, -7, 5, -5, 0, -1], np.int32), arr([2, 2, -2, -2, 0, 0, 0, 3], np.int32)),
            lambda x, y: np.array([3, -3, -3, 3, 0, 0, 0, 0]),
        )
    )
    add(Case("div-i8-min-by-minus-one", "div", (arr([-128], np.int8), arr([-1], np.int8)), vec(int_div)))
    add(
        Case(
            "div-u64-large",
            "div",
            (arr([2**64 - 1, 2**63 + 4, 10, 5], np.uint64), arr([1, 2, 3, 0], np.uint64)),
            lambda x, y: np.array([2**64 - 1, 2**62 + 2, 3, 0], dtype=object),
        )
    )
    add(
        Case(
            "pow-i32-negative-exponents",
            "pow",
            (arr([2, 1, -1, -1, 0, 3, -2], np.int32), arr([-1, -3, -3, -2, 2, 4, 3], np.int32)),
            vec(int_pow),
        )
    )
    add(Case("pow-i8-wraps", "pow", (arr([3, -3, 2], np.int8), arr([5, 5, 7], np.int8)), vec(int_pow)))
    # Bool ops, with broadcasting [2,1] and [3].
    bl, br = np.array([[True], [False]]), np.array([True, False, True])
    for name, f in BOOL_OPS.items():
        add(Case(f"{name}-bool", name, (bl, br), vec(f)))
    # where broadcasts its three operands: [2,1] cond, [1,3] then, [] else.
    cond = np.array([[True], [False]])
    for dt in [*FLOATS, kd.i32]:
        then = rand((1, 3), dt) if dt.is_float else ints((1, 3), dt)
        other = arr(0.5, dt) if dt.is_float else arr(-7, dt)
        add(Case(f"where-{dt}", "where", (cond, then, other), vec(lambda c, a, b: a if c else b)))

    # cast: truncation toward zero then wrap; bools; float rounding.
    f2i = arr([-9.7, -8.5, -1.5, -0.5, 0.5, 7.9, 8.2, 15.9, 300.7], np.float32)
    for dt in (i4, u3, kd.i8, kd.u8, kd.i32):
        add(Case(f"cast-f32-to-{dt}", "cast", (f2i,), vec(math.trunc), {"dtype": dt}))
    add(
        Case(
            "cast-f32-to-i4-literal",
            "cast",
            (arr([9.7, -9.7, 7.5], np.float32),),
            lambda x: np.array([-7, 7, 7]),
            {"dtype": i4},
        )
    )
    add(
        Case(
            "cast-f32-to-i32-wraps",
            "cast",
            (arr([3e9, -3e9], np.float32),),
            vec(math.trunc),
            {"dtype": kd.i32},
        )
    )
    big = arr([1e19, 3e19, -1e19, 1.5e19], np.float64)
    for dt in (kd.i64, kd.u64):
        add(Case(f"cast-f64-beyond-int64-to-{dt}", "cast", (big,), vec(lambda v: int(v)), {"dtype": dt}))
    add(
        Case(
            "cast-nan-inf-to-i32",
            "cast",
            (arr([math.nan, math.inf, -math.inf, 2.5], np.float32),),
            lambda x: np.array([0, 0, 0, 2]),
            {"dtype": kd.i32},
        )
    )
    add(
        Case(
            "cast-f16-to-i8",
            "cast",
            (arr([-3.75, 2.5, 127.0], np.float16),),
            vec(math.trunc),
            {"dtype": kd.i8},
        )
    )
    add(Case("cast-u8-to-i4", "cast", (arr([200, 15, 8, 7], np.uint8),), vec(lambda v: v), {"dtype": i4}))
    add(Case("cast-i8-to-u8", "cast", (arr([-1, -128, 5], np.int8),), vec(lambda v: v), {"dtype": kd.u8}))
    add(
        Case(
            "cast-i4-to-i32", "cast", ((i4, arr([-8, -1, 7], np.int8)),), vec(lambda v: v), {"dtype": kd.i32}
        )
    )
    bool_in = arr([-1.5, -0.0, 0.0, 0.25, math.nan, math.inf], np.float32)
    add(Case("cast-f32-to-bool", "cast", (bool_in,), vec(lambda v: v != 0), {"dtype": kd.boolean}))
    add(
        Case(
            "cast-i8-to-bool",
            "cast",
            (arr([-128, 0, 1, 2], np.int8),),
            vec(lambda v: v != 0),
            {"dtype": kd.boolean},
        )
    )
    add(
        Case(
            "cast-i4-to-bool",
            "cast",
            ((i4, arr([-8, 0, 1], np.int8)),),
            vec(lambda v: v != 0),
            {"dtype": kd.boolean},
        )
    )
    flags = np.array([True, False, True])
    for dt in (kd.f32, kd.f16, kd.bf16, kd.i8, i4, u3):
        add(Case(f"cast-bool-to-{dt}", "cast", (flags,), vec(lambda v: 1 if v else 0), {"dtype": dt}))
    fine = arr([0.1, 1 / 3, 1000.06, -(2.0**-20), 70000.0, 3.0e38], np.float32)
    for dt in (kd.f16, kd.bf16, kd.f64):
        add(Case(f"cast-f32-to-{dt}-rounds", "cast", (fine,), vec(lambda v: v), {"dtype": dt}))
    add(
        Case(
            "cast-bf16-to-f16", "cast", (arr([1.5, -0.1, 300.0], BF16),), vec(lambda v: v), {"dtype": kd.f16}
        )
    )
    add(
        Case(
            "cast-i32-to-f16",
            "cast",
            (arr([1, -2049, 65504, 70000], np.int32),),
            vec(float),
            {"dtype": kd.f16},
        )
    )

    # matmul: 2-D, 1-D operands, batch broadcasting, f16/bf16, wrapping i8.
    for dt in FLOATS:
        add(
            Case(
                f"matmul-2d-{dt}",
                "matmul",
                (rand((3, 4), dt, seed=1), rand((4, 2), dt, seed=2)),
                matmul_truth,
            )
        )
    add(Case("matmul-1d-2d", "matmul", (rand((4,), kd.f32), rand((4, 3), kd.f32, seed=1)), matmul_truth))
    add(Case("matmul-2d-1d", "matmul", (rand((3, 4), kd.f32), rand((4,), kd.f32, seed=1)), matmul_truth))
    add(Case("matmul-1d-1d", "matmul", (rand((5,), kd.f32), rand((5,), kd.f32, seed=1)), matmul_truth))
    add(
        Case("matmul-batch-1d", "matmul", (rand((2, 3, 4), kd.f32), rand((4,), kd.f32, seed=1)), matmul_truth)
    )
    add(
        Case(
            "matmul-batch-broadcast",
            "matmul",
            (rand((2, 1, 3, 4), kd.f32), rand((5, 4, 2), kd.f32, seed=1)),
            matmul_truth,
        )
    )
    add(Case("matmul-i8-wraps", "matmul", (ints((2, 3), kd.i8), ints((3, 2), kd.i8, seed=1)), matmul_truth))
    add(Case("matmul-u8-wraps", "matmul", (ints((2, 3), kd.u8), ints((3, 2), kd.u8, seed=1)), matmul_truth))

    # Reductions over axes (0, 2) of [2,3,4], with and without keepdims; integer sums wrap.
    reducers: dict[str, Callable[[list[Any]], Any]] = {
        "reduce_sum": lambda r: math.fsum(r) if isinstance(r[0], float) else sum(r),
        "reduce_mean": lambda r: math.fsum(r) / len(r),
        "reduce_max": max,
        "reduce_min": min,
        "reduce_prod": math.prod,
    }
    for name, fn in reducers.items():
        for keepdims in (False, True):
            for axes in ((0, 2), (1,), ()):
                add(
                    Case(
                        f"{name}-f32-axes{list(axes)}-keepdims={keepdims}",
                        name,
                        (rand((2, 3, 4), kd.f32, 0.5, 1.5),),
                        reduce_truth(fn, axes, keepdims),
                        {"axes": axes, "keepdims": keepdims},
                    )
                )
        for dt in (kd.f16, kd.bf16):
            add(
                Case(
                    f"{name}-{dt}",
                    name,
                    (rand((3, 5), dt, 0.5, 1.5),),
                    reduce_truth(fn, (1,)),
                    {"axes": (1,)},
                )
            )
        if name != "reduce_mean":
            for dt in (kd.i8, i4, kd.u8):
                add(
                    Case(
                        f"{name}-{dt}",
                        name,
                        ((dt, ints((3, 5), dt)),),
                        reduce_truth(fn, (1,)),
                        {"axes": (1,)},
                    )
                )
    add(
        Case(
            "reduce_sum-all",
            "reduce_sum",
            (rand((2, 3), kd.f32),),
            reduce_truth(math.fsum, (0, 1)),
            {"axes": (0, 1)},
        )
    )

    # argmax/argmin with ties, select_last and keepdims.
    tied = arr([[1, 3, 3, 0], [2, 2, -1, -1], [0, 0, 0, 0]], np.float32)
    for name, largest in (("argmax", True), ("argmin", False)):
        for select_last in (False, True):
            for keepdims in (False, True):
                for axis in (0, 1):
                    attrs = {"axis": axis, "keepdims": keepdims, "select_last": select_last}
                    add(
                        Case(
                            f"{name}-axis{axis}-last={select_last}-keep={keepdims}",
                            name,
                            (tied,),
                            arg_truth(largest, axis, keepdims, select_last),
                            attrs,
                        )
                    )
        add(
            Case(
                f"{name}-i4",
                name,
                ((i4, arr([[-8, 7, 7], [3, -8, -8]], np.int8)),),
                arg_truth(largest, 1),
                {"axis": 1},
            )
        )
        add(
            Case(
                f"{name}-bool",
                name,
                (np.array([False, True, True, False]),),
                arg_truth(largest, 0),
                {"axis": 0},
            )
        )
    add(
        Case(
            "argmax-literal",
            "argmax",
            (arr([[1, 5, 5], [7, 7, 2]], np.int32),),
            lambda x: np.array([2, 1]),
            {"axis": 1, "select_last": True},
        )
    )

    # cumsum: exclusive/reverse in all combinations, along both axes; narrow ints wrap.
    for exclusive, reverse in itertools.product((False, True), repeat=2):
        for axis in (0, 1):
            attrs = {"axis": axis, "exclusive": exclusive, "reverse": reverse}
            tag = f"axis{axis}-excl={exclusive}-rev={reverse}"
            add(
                Case(
                    f"cumsum-f32-{tag}",
                    "cumsum",
                    (rand((3, 4), kd.f32),),
                    cumsum_truth(axis, exclusive, reverse),
                    attrs,
                )
            )
            add(
                Case(
                    f"cumsum-i4-{tag}",
                    "cumsum",
                    ((i4, ints((3, 4), i4)),),
                    cumsum_truth(axis, exclusive, reverse),
                    attrs,
                )
            )
    add(
        Case(
            "cumsum-literal-exclusive-reverse",
            "cumsum",
            (arr([1, 2, 3, 4], np.int32),),
            lambda x: np.array([9, 7, 4, 0]),
            {"axis": 0, "exclusive": True, "reverse": True},
        )
    )
    add(Case("cumsum-f16", "cumsum", (rand((6,), kd.f16),), cumsum_truth(0, False, False), {"axis": 0}))

    # softmax / log_softmax along the middle axis (and the last).
    for name, row in (("softmax", softmax_row), ("log_softmax", log_softmax_row)):
        for dt in FLOATS:
            for axis in (1, 2):
                x = rand((2, 3, 4), dt, -3, 3)
                add(
                    Case(
                        f"{name}-{dt}-axis{axis}",
                        name,
                        (x,),
                        lambda x, a=axis, r=row: along(x, a, r),
                        {"axis": axis},
                    )
                )

    # layer_norm / rms_norm over axes axis.. of [2,3,4].
    for dt in FLOATS:
        for axis in (1, 2):
            x = rand((2, 3, 4), dt, -2, 2)
            w, bias = rand(x.shape[axis:], dt, 0.5, 1.5, seed=1), rand(x.shape[axis:], dt, seed=2)
            add(
                Case(
                    f"layer_norm-{dt}-axis{axis}",
                    "layer_norm",
                    (x, w, bias),
                    norm_truth(axis, 1e-5, False),
                    {"axis": axis},
                )
            )
            add(
                Case(
                    f"rms_norm-{dt}-axis{axis}",
                    "rms_norm",
                    (x, w),
                    norm_truth(axis, 1e-6, True),
                    {"axis": axis, "eps": 1e-6},
                )
            )
    add(
        Case(
            "layer_norm-eps",
            "layer_norm",
            (rand((2, 4), kd.f32), np.ones(4, np.float32), np.zeros(4, np.float32)),
            norm_truth(1, 0.5, False),
            {"axis": 1, "eps": 0.5},
        )
    )

    # Data movement.
    x234 = arr(np.arange(24).reshape(2, 3, 4), np.float32)
    add(
        Case(
            "reshape",
            "reshape",
            (x234,),
            lambda x: np.array(list(x.ravel())).reshape(4, 6),
            {"shape": (4, 6)},
        )
    )
    add(Case("reshape-rank0", "reshape", (arr([5], np.int32),), lambda x: np.array(5), {"shape": ()}))
    add(
        Case(
            "broadcast_to",
            "broadcast_to",
            (arr([[1], [2]], np.int8),),
            lambda x: elementwise(lambda a, _: a, x, np.zeros((3, 2, 4))),
            {"shape": (3, 2, 4)},
        )
    )
    add(Case("transpose", "transpose", (x234,), lambda x: transpose_truth(x, (2, 0, 1)), {"perm": (2, 0, 1)}))
    add(
        Case(
            "transpose-i4",
            "transpose",
            ((i4, arr([[1, -2], [3, -8]], np.int8)),),
            lambda x: np.array([[1, 3], [-2, -8]]),
            {"perm": (1, 0)},
        )
    )
    slice_specs: dict[str, dict[int, slice]] = {
        "basic": {1: slice(1, 3)},
        "reverse": {2: slice(None, None, -1)},
        "neg-step-2": {2: slice(3, 0, -2)},
        "neg-to-start": {2: slice(-1, -5, -1)},
        "neg-stop-before-0": {0: slice(1, None, -1), 2: slice(None, None, -3)},
        "step3": {2: slice(0, None, 3)},
        "empty": {1: slice(2, 2)},
        "empty-neg": {1: slice(0, 2, -1)},
        "multi": {0: slice(1, 2), 1: slice(None, None, 2), 2: slice(-2, None)},
    }
    for tag, spec in slice_specs.items():
        key = tuple(spec.get(a, slice(None)) for a in range(3))
        add(Case(f"slice-{tag}", "slice", (x234,), lambda x, k=key: x[k], canonical_slice(x234.shape, spec)))
    a, b, c = (
        arr([[1, 2], [3, 4]], np.int32),
        arr([[5], [6]], np.int32),
        arr([[7, 8, 9], [10, 11, 12]], np.int32),
    )
    add(
        Case(
            "concat-axis1",
            "concat",
            (a, b, c),
            lambda *_: np.array([[1, 2, 5, 7, 8, 9], [3, 4, 6, 10, 11, 12]]),
            {"axis": 1},
        )
    )
    add(
        Case(
            "concat-axis0",
            "concat",
            (a, a),
            lambda *_: np.array([[1, 2], [3, 4], [1, 2], [3, 4]]),
            {"axis": 0},
        )
    )
    add(Case("concat-one", "concat", (b,), lambda *_: np.array([[5], [6]]), {"axis": 0}))
    x26 = arr(np.arange(12).reshape(2, 6), np.int32)
    add(
        Case(
            "split-axis1",
            "split",
            (x26,),
            lambda x: (x[:, :1], x[:, 1:1], x[:, 1:3], x[:, 3:]),
            {"axis": 1, "sizes": (1, 0, 2, 3)},
        )
    )
    add(Case("split-axis0", "split", (x26,), lambda x: (x[:1], x[1:]), {"axis": 0, "sizes": (1, 1)}))
    table = arr([[0.5, 1.5, 2.5], [3.5, 4.5, 5.5]], np.float32)
    idx = arr([[0, -1], [2, -3]], np.int32)
    add(
        Case("gather-axis1-negative", "gather", (table, idx), lambda x, i: gather_truth(x, i, 1), {"axis": 1})
    )
    add(
        Case(
            "gather-axis0",
            "gather",
            (table, arr([1, -2, -1], np.int64)),
            lambda x, i: gather_truth(x, i, 0),
            {"axis": 0},
        )
    )
    add(
        Case(
            "gather-i4-indices",
            "gather",
            (table, (i4, arr([-3, 2, -1], np.int8))),
            lambda x, i: gather_truth(x, i, 1),
            {"axis": 1},
        )
    )
    add(
        Case(
            "gather-u8-indices",
            "gather",
            (table, arr([[2]], np.uint8)),
            lambda x, i: gather_truth(x, i, 1),
            {"axis": 1},
        )
    )
    # The reduction of an empty set is its identity (as in ONNX): -inf / the int minimum for max.
    empty = arr(np.zeros((0, 3)), np.float32)
    add(Case("reduce-max-empty", "reduce_max", (empty,), lambda x: np.full(3, -np.inf), {"axes": (0,)}))
    add(
        Case(
            "reduce-min-empty-i4",
            "reduce_min",
            ((i4, arr(np.zeros((2, 0)), np.int8)),),
            lambda x: np.full(2, 7),
            {"axes": (1,)},
        )
    )
    qq = arr(np.linspace(-1, 1, 2 * 3 * 4).reshape(2, 3, 4), np.float32)
    kk = arr(np.linspace(1, -1, 2 * 5 * 4).reshape(2, 5, 4), np.float32)
    vv = arr(np.arange(2 * 5 * 2).reshape(2, 5, 2) % 3 - 1.0, np.float32)
    bias = arr(np.array([0.0, -1.0, 0.5, 0.0, 2.0]), np.float32)
    add(Case("attention-bias", "attention", (qq, kk, vv, bias), attention_truth(0.7, False), {"scale": 0.7}))
    add(
        Case(
            "attention-causal",
            "attention",
            (qq, kk, vv, arr(0.0, np.float32)),
            attention_truth(0.5, True),
            {"scale": 0.5, "causal": True},
        )
    )
    add(
        Case(
            "fused-add-exp",
            "fused",
            (qq, qq),
            lambda a, b: np.exp(a + b),
            {"kind": "elementwise", "body": add_exp_body()},
        )
    )
    x234 = arr(np.arange(24).reshape(2, 3, 4) * 0.5, np.float32)
    y245 = arr(np.arange(40).reshape(2, 4, 5) % 7 - 3.0, np.float32)
    add(Case("einsum-bmm", "einsum", (x234, y245), einsum_bmm_truth, {"equation": "bij,bjk->bik"}))
    add(
        Case(
            "einsum-ellipsis-sum",
            "einsum",
            (x234,),
            lambda x: np.array([[sum(x[i, j]) for j in range(3)] for i in range(2)]),
            {"equation": "...j->..."},
        )
    )
    add(
        Case(
            "gather-nd",
            "gather_nd",
            (x234, arr([[[0, 1]], [[1, -1]]], np.int64)),
            lambda x, i: np.array([[x[0, 1]], [x[1, 2]]]),
            {},
        )
    )
    add(
        Case(
            "gather-nd-batch",
            "gather_nd",
            (x234, arr([[2], [0]], np.int32)),
            lambda x, i: np.array([x[0, 2], x[1, 0]]),
            {"batch_dims": 1},
        )
    )
    add(
        Case(
            "gather-scalar-index",
            "gather",
            (table, arr(-1, np.int32)),
            lambda x, i: np.array([2.5, 5.5]),
            {"axis": 1},
        )
    )
    x1 = arr(np.arange(6).reshape(1, 2, 1, 3), np.int32)
    add(Case("squeeze", "squeeze", (x1,), lambda x: np.array([[0, 1, 2], [3, 4, 5]]), {"axes": (0, 2)}))
    add(Case("squeeze-one", "squeeze", (x1,), lambda x: np.array([[[0, 1, 2]], [[3, 4, 5]]]), {"axes": (0,)}))
    add(
        Case(
            "unsqueeze",
            "unsqueeze",
            (arr([1, 2, 3], np.int32),),
            lambda x: np.array([[[1], [2], [3]]]),
            {"axes": (0, 2)},
        )
    )
    add(
        Case(
            "unsqueeze-last",
            "unsqueeze",
            (arr([[1, 2]], np.int32),),
            lambda x: np.array([[[1, 2]]]).reshape(1, 2, 1),
            {"axes": (2,)},
        )
    )
    add(
        Case(
            "unsqueeze-scalar",
            "unsqueeze",
            (arr(4, np.float32),),
            lambda x: np.array([[4.0]]),
            {"axes": (0, 1)},
        )
    )
    iotas = [
        (0.5, 3, 0.5, kd.f32),
        (0, 1, 0.25, kd.f16),
        (-1.0, 1.0, 0.3, kd.bf16),
        (0.0, 1.0, 0.1, kd.f64),
        (0, 5, 1, kd.i32),
        (5, -2, -2, kd.i64),
        (0, 10, 3, i4),
        (3, 3, 1, kd.i32),
        (0, 7, 1, u3),
    ]
    for start, stop, step, dt in iotas:
        attrs = {"start": start, "stop": stop, "step": step, "dtype": dt}
        add(Case(f"iota-{start}:{stop}:{step}-{dt}", "iota", (), iota_truth(start, stop, step), attrs))
    add(
        Case(
            "iota-literal",
            "iota",
            (),
            lambda: np.array([5, 3, 1, -1]),
            {"start": 5, "stop": -2, "step": -2, "dtype": kd.i32},
        )
    )
    tie = arr([[3, 1, 3, 2, 1], [0, 5, 5, 5, -1]], np.int32)
    for largest in (True, False):
        for k in (0, 3, 5):
            add(
                Case(
                    f"topk-ties-largest={largest}-k{k}",
                    "topk",
                    (tie,),
                    topk_truth(k, 1, largest),
                    {"k": k, "axis": 1, "largest": largest},
                )
            )
        add(
            Case(
                f"topk-axis0-largest={largest}",
                "topk",
                (tie,),
                topk_truth(1, 0, largest),
                {"k": 1, "axis": 0, "largest": largest},
            )
        )
        for dt in (kd.f32, kd.f16, kd.bf16):
            xf = arr([[0.5, -1.0, 0.5, 2.0], [-0.0, 0.0, -3.0, 1.0]], dt)
            add(
                Case(
                    f"topk-{dt}-largest={largest}",
                    "topk",
                    (xf,),
                    topk_truth(2, 1, largest),
                    {"k": 2, "axis": 1, "largest": largest},
                )
            )
        add(
            Case(
                f"topk-i8-min-largest={largest}",
                "topk",
                (arr([-128, 5, 3, -128, 127], np.int8),),
                topk_truth(3, 0, largest),
                {"k": 3, "axis": 0, "largest": largest},
            )
        )
        add(
            Case(
                f"topk-u64-largest={largest}",
                "topk",
                (arr([2**63, 1, 2**64 - 1, 0], np.uint64),),
                topk_truth(2, 0, largest),
                {"k": 2, "axis": 0, "largest": largest},
            )
        )
        add(
            Case(
                f"topk-bool-largest={largest}",
                "topk",
                (np.array([False, True, False, True]),),
                topk_truth(3, 0, largest),
                {"k": 3, "axis": 0, "largest": largest},
            )
        )
    add(
        Case(
            "topk-literal",
            "topk",
            (tie,),
            lambda x: (np.array([[3, 3, 2], [5, 5, 5]]), np.array([[0, 2, 3], [1, 2, 3]])),
            {"k": 3, "axis": 1},
        )
    )
    for name, upper in (("triu", True), ("tril", False)):
        for k in (-1, 0, 1, 5):
            add(Case(f"{name}-k{k}", name, (x234,), tri_truth(upper, k), {"k": k}))
        add(Case(f"{name}-i4", name, ((i4, arr([[1, -2], [3, -8]], np.int8)),), tri_truth(upper, 0)))
    add(
        Case(
            "triu-literal",
            "triu",
            (arr([[1, 2, 3], [4, 5, 6]], np.int32),),
            lambda x: np.array([[0, 2, 3], [0, 0, 6]]),
            {"k": 1},
        )
    )
    add(
        Case(
            "tril-literal",
            "tril",
            (arr([[1, 2, 3], [4, 5, 6]], np.int32),),
            lambda x: np.array([[0, 0, 0], [4, 0, 0]]),
            {"k": -1},
        )
    )
    return cases


def transpose_truth(x: np.ndarray, perm: Sequence[int]) -> np.ndarray:
    out = np.empty(tuple(x.shape[p] for p in perm), dtype=object)
    for idx in itertools.product(*map(range, out.shape)):
        src = [0] * x.ndim
        for i, p in enumerate(perm):
            src[p] = idx[i]
        out[idx] = x[tuple(src)]
    return out


def attention_truth(scale: float, causal: bool) -> Callable[..., np.ndarray]:
    """Row by row, with Python floats: softmax over the visible keys of q.k * scale + bias, @ v."""

    def truth(q: np.ndarray, k: np.ndarray, v: np.ndarray, bias: np.ndarray) -> np.ndarray:
        n, sq, _ = q.shape
        sk = k.shape[1]
        b = np.broadcast_to(bias, (n, sq, sk))
        out = np.zeros((n, sq, v.shape[2]))
        for h in range(n):
            for i in range(sq):
                keys = [j for j in range(sk) if not causal or j <= i + sk - sq]
                s = [float(np.dot(q[h, i], k[h, j])) * scale + float(b[h, i, j]) for j in keys]
                m = max(s)
                w = [math.exp(x - m) for x in s]
                out[h, i] = sum(wi / sum(w) * v[h, j].astype(np.float64) for wi, j in zip(w, keys))
        return out

    return truth


def add_exp_body() -> Any:
    b = GraphBuilder("k0")
    x, y = b.input("a", TensorType(kd.f32, (2, 3, 4))), b.input("b", TensorType(kd.f32, (2, 3, 4)))
    b.output("r0", b.op("exp", b.op("add", x, y)))
    return b.build()


def einsum_bmm_truth(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    out = np.zeros((x.shape[0], x.shape[1], y.shape[2]))
    for b, i, k in itertools.product(*map(range, out.shape)):
        out[b, i, k] = sum(float(x[b, i, j]) * float(y[b, j, k]) for j in range(x.shape[2]))
    return out


def gather_truth(x: np.ndarray, idx: np.ndarray, axis: int) -> np.ndarray:
    shape = (*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :])
    out = np.empty(shape, dtype=object)
    n = x.shape[axis]
    for o in itertools.product(*map(range, shape)):
        j = idx[o[axis : axis + idx.ndim]]
        j = j + n if j < 0 else j
        out[o] = x[(*o[:axis], j, *o[axis + idx.ndim :])]
    return out


CASES = build_cases()
# Ops exercised only through other tests' graphs: ``constant`` has no operands to feed; its data
# path is covered by test_constant_passes_data_through and by test_roundtrip.py.
NOT_IN_TABLE = {"constant"}


def test_every_registered_op_has_a_reference_case() -> None:
    registered = set(default_context().ops)
    covered = {c.op for c in CASES}
    assert registered - NOT_IN_TABLE - covered == set(), "ops without a reference case"
    assert covered <= registered, f"cases for unknown ops: {covered - registered}"
    assert len({c.id for c in CASES}) == len(CASES), "duplicate case ids"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_op_matches_reference(case: Case) -> None:
    got = run_typed(case.op, *case.args, **case.attrs)
    raw = [a[1] if isinstance(a, tuple) else a for a in case.args]
    want = case.truth(*(exact(a) for a in raw))
    wants = list(want) if isinstance(want, tuple) else [want]
    assert len(got) == len(wants)
    for (g, dt), w in zip(got, wants):
        assert_matches(g, w, dt)


def test_narrow_results_use_declared_dtype() -> None:
    """The i4/u3 results above come back in int8/uint8 storage with in-range values."""
    (y,) = run("add", (i4, arr([7], np.int8)), (i4, arr([1], np.int8)))
    assert y.dtype == np.int8 and y.tolist() == [-8]
    (y,) = run("mul", (u3, arr([5, 7], np.uint8)), (u3, arr([3, 7], np.uint8)))
    assert y.dtype == np.uint8 and y.tolist() == [15 % 8, 49 % 8]
    (y,) = run("cast", arr([-0.9, 0.9, -8.9], np.float32), dtype=i4)
    assert y.tolist() == [0, 0, -8]


F32_OPS: dict[str, Callable[..., np.ndarray]] = {
    "add": np.add,
    "mul": np.multiply,
    "div": np.divide,
    "sqrt": lambda x: np.sqrt(np.abs(x)),
}


@pytest.mark.parametrize("dt", [kd.f16, kd.bf16], ids=str)
@pytest.mark.parametrize("op", list(F32_OPS))
def test_half_precision_is_float32_rounded_once(op: str, dt: DType) -> None:
    """Exact check of the documented semantics: widen to float32, compute, round once to f16/bf16."""
    x, y = rand((64,), dt, 0.5, 100.0, seed=11), rand((64,), dt, 0.5, 100.0, seed=12)
    args = (x,) if op == "sqrt" else (x, y)
    (got,) = run(op, *args)
    want = F32_OPS[op](*(a.astype(np.float32) for a in args)).astype(np.float32).astype(dt.np_dtype)
    assert got.dtype == dt.np_dtype
    assert got.tobytes() == want.tobytes()


def test_constant_passes_data_through() -> None:
    b = GraphBuilder("c")
    x = b.input("x", TensorType(kd.i8, (3,)))
    c = b.constant(np.array([1, -2, 127], np.int8), "k")
    b.output("y", b.op("add", x, c))
    b.output("k", c)
    out = interpret(b.build(), {"x": np.array([1, 1, 1], np.int8)})
    assert out["k"].tolist() == [1, -2, 127]
    assert out["y"].tolist() == [2, -1, -128]


def test_symbolic_dims_bind_at_run_time() -> None:
    b = GraphBuilder("s")
    x = b.input("x", TensorType(kd.f32, ("n", 3)))
    y = b.input("y", TensorType(kd.f32, (3,)))
    s = b.op("reduce_sum", b.op("mul", x, y), axes=(1,))
    b.output("s", s)
    g = b.build()
    for n in (1, 4):
        xv, yv = rand((n, 3), kd.f32), rand((3,), kd.f32, seed=1)
        out = interpret(g, {"x": xv, "y": yv})["s"]
        want = [math.fsum(float(a) * float(c) for a, c in zip(row, yv)) for row in xv]
        np.testing.assert_allclose(out, want, **TOL["f32"])


def test_gather_index_out_of_range_names_the_op() -> None:
    with pytest.raises(KilnError, match=r"'gather'.*out of range"):
        run("gather", arr([1.0, 2.0], np.float32), arr([2], np.int32), axis=0)
    with pytest.raises(KilnError, match="'gather'"):
        run("gather", arr([1.0, 2.0], np.float32), arr([-3], np.int32), axis=0)


# -- type inference and attribute errors -----------------------------------------------------------
def _inputs(b: GraphBuilder, *types: TensorType) -> list[Any]:
    return [b.input(f"x{i}", t) for i, t in enumerate(types)]


def f32(*shape: int) -> TensorType:
    return TensorType(kd.f32, shape)


ERROR_CASES: list[tuple[str, str, list[TensorType], dict[str, Any], type[KilnError]]] = [
    ("add-mixed-dtypes", "add", [f32(2), TensorType(kd.i32, (2,))], {}, TypeInferenceError),
    ("add-no-broadcast", "add", [f32(2, 3), f32(4)], {}, TypeInferenceError),
    ("matmul-contraction", "matmul", [f32(2, 3), f32(4, 5)], {}, TypeInferenceError),
    ("matmul-1d-contraction", "matmul", [f32(3), f32(4)], {}, TypeInferenceError),
    ("reshape-count", "reshape", [f32(2, 3)], {"shape": (4, 2)}, TypeInferenceError),
    ("transpose-perm-rank", "transpose", [f32(2, 3)], {"perm": (0, 1, 2)}, TypeInferenceError),
    ("transpose-not-a-perm", "transpose", [f32(2, 3)], {"perm": (0, 0)}, VerifyError),
    ("softmax-int", "softmax", [TensorType(kd.i32, (2,))], {"axis": 0}, TypeInferenceError),
    ("topk-k-too-big", "topk", [f32(3)], {"k": 4, "axis": 0}, TypeInferenceError),
    ("split-sizes", "split", [f32(5)], {"axis": 0, "sizes": (2, 2)}, TypeInferenceError),
    ("add-arity", "add", [f32(2)], {}, TypeInferenceError),
    ("gelu-approximate", "gelu", [f32(2)], {"approximate": "fast"}, VerifyError),
    ("iota-infinite", "iota", [], {"start": 0, "stop": math.inf, "step": 1, "dtype": kd.f32}, VerifyError),
]


@pytest.mark.parametrize(
    ("op", "types", "attrs", "error"),
    [pytest.param(*c[1:], id=c[0]) for c in ERROR_CASES],
)
def test_type_errors_name_the_op(
    op: str, types: list[TensorType], attrs: dict[str, Any], error: type
) -> None:
    b = GraphBuilder()
    with pytest.raises(error) as info:
        b.op_values(op, *_inputs(b, *types), **attrs)
    assert isinstance(info.value, KilnError)
    assert op in str(info.value), str(info.value)


def test_unknown_op_is_a_kiln_error_naming_it() -> None:
    b = GraphBuilder()
    (x,) = _inputs(b, f32(2, 2))
    with pytest.raises(UnknownOpError) as info:
        b.op("matmull", x, x)
    assert isinstance(info.value, KilnError)
    assert "'matmull'" in str(info.value) and "did you mean 'matmul'" in str(info.value)


def test_bad_attribute_keyword_is_a_kiln_error_naming_the_op() -> None:
    b = GraphBuilder()
    (x,) = _inputs(b, f32(2, 2))
    with pytest.raises(AttributeError_) as info:
        b.op("softmax", x, axes=1)
    assert isinstance(info.value, KilnError)
    assert "'softmax'" in str(info.value) and "axes" in str(info.value)
    with pytest.raises(AttributeError_, match="'neg'"):
        b.op("neg", x, axis=0)
    with pytest.raises(AttributeError_, match="'reduce_sum'"):
        b.op("reduce_sum", x)  # axes is required


def test_multi_result_op_through_op_is_an_error() -> None:
    b = GraphBuilder()
    (x,) = _inputs(b, f32(4))
    with pytest.raises(TypeInferenceError, match=r"'split'.*op_values"):
        b.op("split", x, axis=0, sizes=(2, 2))
