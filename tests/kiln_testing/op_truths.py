"""Hand-written truths for the per-op reference tests (see tests/ir/test_ops_reference.py):
Python scalars, math, exact integers and explicit loops, never the ops' own reference functions."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import ml_dtypes
import numpy as np

from kiln.ir import dtypes as kd
from kiln.ir.builder import GraphBuilder
from kiln.ir.dtypes import DType
from kiln.ir.interpret import interpret
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
