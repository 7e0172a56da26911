"""``kiln.ops``: NumPy-named array functions that trace into kiln ops.

Inside a ``@kiln.jit`` function they record ops; called on plain NumPy arrays they run eagerly
with the reference semantics and return NumPy arrays. Names follow NumPy where NumPy has the
operation; axes may be negative and are normalised before they reach the IR.
"""

from __future__ import annotations

import builtins
import contextvars
import functools
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from ..ir.dtypes import DType, boolean, f32, from_numpy, i64, parse_dtype
from ..ir.errors import TraceError, VerifyError
from ..ir.ops import normalize_slice
from .trace import Trace, Tracer, promote, user_location

F = TypeVar("F", bound=Callable[..., Any])

#: The trace a jitted function is being traced into (so that arange() records an iota).
CURRENT: contextvars.ContextVar[Trace | None] = contextvars.ContextVar("kiln_trace", default=None)


def _find_trace(args: Sequence[Any]) -> Trace | None:
    for a in args:
        if isinstance(a, Tracer):
            return a.trace
        if isinstance(a, list | tuple):
            t = _find_trace(a)
            if t is not None:
                return t
    return CURRENT.get()


def _api(fn: F) -> F:
    """Run ``fn`` on tracers; with none in sight, run it eagerly on NumPy and return NumPy."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _find_trace([*args, *kwargs.values()]) is not None:
            return fn(*args, **kwargs)
        trace = Trace("eager", eager=True)
        token = CURRENT.set(trace)
        try:
            out = fn(*args, **kwargs)
        finally:
            CURRENT.reset(token)
        if isinstance(out, Tracer):
            return trace.run_eager([out])[0]
        if isinstance(out, list | tuple):
            res = trace.run_eager(list(out))
            return type(out)(res)
        return out

    return wrapper  # type: ignore[return-value]


def _trace(*args: Any) -> Trace:
    t = _find_trace(args)
    assert t is not None
    return t


def _dtype_of(x: Any) -> DType | None:
    if isinstance(x, Tracer):
        return x.dtype
    if isinstance(x, np.ndarray | np.generic):
        return from_numpy(x.dtype)
    if isinstance(x, list | tuple):
        return from_numpy(np.asarray(x).dtype)
    return None  # Python scalars are weakly typed


def _common(xs: Sequence[Any]) -> DType | None:
    common: DType | None = None
    for x in xs:
        dt = _dtype_of(x)
        if dt is not None:
            common = dt if common is None else promote(common, dt)
    return common


def _cast(t: Tracer, dtype: DType) -> Tracer:
    return t if t.dtype == dtype else t.trace.emit("cast", t, dtype=dtype)


def _lift_all(xs: Sequence[Any], dtype: DType | None = None) -> list[Tracer]:
    trace = _trace(*xs)
    common = dtype or _common(xs)
    # Python floats with integer arrays promote the arrays to f32 (as NumPy promotes to float).
    if common is not None and not common.is_float and any(isinstance(x, float) for x in xs):
        common = f32
    lifted = [trace.lift(x, common) for x in xs]
    return [_cast(t, common) if common is not None else t for t in lifted]


_FLOAT_ONLY = {"exp", "log", "sqrt", "rsqrt", "reciprocal", "tanh", "erf", "sin", "cos", "sigmoid",
               "silu", "gelu", "floor", "ceil", "isnan"}  # fmt: skip


@_api
def apply(op: str, *xs: Any, **attrs: Any) -> Tracer:
    """Apply elementwise ``op`` with NumPy-style promotion and broadcasting."""
    ts = _lift_all(xs)
    if op in _FLOAT_ONLY and not ts[0].dtype.is_float:
        ts = [_cast(t, f32) for t in ts]
    return ts[0].trace.emit(op, *ts, **attrs)


def _unary(op: str) -> Callable[[Any], Any]:
    def f(x: Any) -> Any:
        return apply(op, x)

    f.__name__ = op
    f.__doc__ = f"Elementwise ``{op}`` (the kiln op of the same name)."
    return f


exp, log, sqrt, tanh, erf = (_unary(n) for n in ("exp", "log", "sqrt", "tanh", "erf"))
sin, cos, floor, ceil = (_unary(n) for n in ("sin", "cos", "floor", "ceil"))
sigmoid, relu, silu, rsqrt = (_unary(n) for n in ("sigmoid", "relu", "silu", "rsqrt"))
reciprocal, isnan, negative = _unary("reciprocal"), _unary("isnan"), _unary("neg")
abs, logical_not = _unary("abs"), _unary("logical_not")


def _binary(op: str, name: str) -> Callable[[Any, Any], Any]:
    def f(a: Any, b: Any) -> Any:
        return apply(op, a, b)

    f.__name__ = name
    f.__doc__ = f"Elementwise ``{op}`` with broadcasting."
    return f


add, subtract, multiply = _binary("add", "add"), _binary("sub", "subtract"), _binary("mul", "multiply")
power, maximum, minimum = (
    _binary("pow", "power"),
    _binary("maximum", "maximum"),
    _binary("minimum", "minimum"),
)
equal, not_equal = _binary("eq", "equal"), _binary("ne", "not_equal")
less, less_equal = _binary("lt", "less"), _binary("le", "less_equal")
greater, greater_equal = _binary("gt", "greater"), _binary("ge", "greater_equal")
logical_and, logical_or = _binary("logical_and", "logical_and"), _binary("logical_or", "logical_or")


@_api
def divide(a: Any, b: Any) -> Tracer:
    """True division: integer operands are converted to f32 first (as NumPy's ``/``)."""
    common = _common([a, b])
    if common is None or not common.is_float:
        common = f32
    ts = _lift_all([a, b], common)
    return ts[0].trace.emit("div", *ts)


true_divide = divide


@_api
def gelu(x: Any, approximate: str = "none") -> Tracer:
    """GELU: exact (``approximate="none"``, with erf) or the tanh approximation."""
    if approximate not in ("none", "tanh"):
        raise TraceError(f"gelu approximate must be 'none' or 'tanh', got {approximate!r}")
    return apply("gelu", x, approximate=approximate)


@_api
def clip(x: Any, a_min: Any, a_max: Any) -> Tracer:
    """min(max(x, a_min), a_max)."""
    return minimum(maximum(x, a_min), a_max)


@_api
def where(cond: Any, a: Any, b: Any) -> Tracer:
    """``cond ? a : b`` with broadcasting; ``cond`` is converted to bool (x != 0)."""
    trace = _trace(cond, a, b)
    c = trace.lift(cond, boolean)
    if not c.dtype.is_bool:
        c = trace.emit("cast", c, dtype=boolean)
    ta, tb = _lift_all([a, b])
    return trace.emit("where", c, ta, tb)


@_api
def matmul(a: Any, b: Any) -> Tracer:
    """NumPy matmul (batched, broadcasting leading dims)."""
    ta, tb = _lift_all([a, b])
    return ta.trace.emit("matmul", ta, tb)


def to_dtype(dtype: Any) -> DType:
    """A kiln dtype from a kiln dtype, a NumPy dtype or a name ("f16", "float16", "int4")."""
    if isinstance(dtype, DType):
        return dtype
    if isinstance(dtype, str):
        try:
            return parse_dtype(dtype)
        except VerifyError:
            for prefix, short in (("float", "f"), ("bfloat", "bf"), ("uint", "u"), ("int", "i")):
                if dtype.startswith(prefix) and dtype[len(prefix) :].isdigit():
                    return parse_dtype(short + dtype[len(prefix) :])
            if dtype == "bool":
                return boolean
    try:
        return from_numpy(np.dtype(dtype))
    except (TypeError, VerifyError):
        raise TraceError(f"unknown dtype {dtype!r}") from None


@_api
def astype(x: Any, dtype: Any) -> Tracer:
    """Convert to ``dtype`` (float->int truncates; ints wrap to their width)."""
    t = _trace(x).lift(x)
    return _cast(t, to_dtype(dtype))


def _axes(x: Tracer, axis: int | Sequence[int] | None) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(x.ndim))
    seq = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in seq:
        if not -x.ndim <= a < x.ndim:
            raise TraceError(f"axis {a} out of range for {x.type} at {user_location()}")
        out.append(a % x.ndim if x.ndim else 0)
    if len(set(out)) != len(out):
        raise TraceError(f"repeated axis in {seq} at {user_location()}")
    return tuple(sorted(out))


def _axis(x: Tracer, axis: int) -> int:
    return _axes(x, axis)[0] if x.ndim else 0


def _reduce(op: str, x: Any, axis: Any, keepdims: bool) -> Tracer:
    t = _trace(x).lift(x)
    if op == "reduce_mean" and not t.dtype.is_float:
        t = _cast(t, f32)
    if op in ("reduce_sum", "reduce_prod") and t.dtype.is_bool:
        t = _cast(t, i64)
    return t.trace.emit(op, t, axes=_axes(t, axis), keepdims=keepdims)


@_api
def sum(x: Any, axis: Any = None, keepdims: bool = False) -> Tracer:
    """Sum over ``axis`` (all axes when None)."""
    return _reduce("reduce_sum", x, axis, keepdims)


@_api
def mean(x: Any, axis: Any = None, keepdims: bool = False) -> Tracer:
    """Mean over ``axis`` (all axes when None); integers are averaged in f32."""
    return _reduce("reduce_mean", x, axis, keepdims)


@_api
def max(x: Any, axis: Any = None, keepdims: bool = False) -> Tracer:
    """Max over ``axis`` (all axes when None)."""
    return _reduce("reduce_max", x, axis, keepdims)


@_api
def min(x: Any, axis: Any = None, keepdims: bool = False) -> Tracer:
    """Min over ``axis`` (all axes when None)."""
    return _reduce("reduce_min", x, axis, keepdims)


@_api
def prod(x: Any, axis: Any = None, keepdims: bool = False) -> Tracer:
    """Product over ``axis`` (all axes when None)."""
    return _reduce("reduce_prod", x, axis, keepdims)


def _arg(op: str, x: Any, axis: int | None, keepdims: bool) -> Tracer:
    t = _trace(x).lift(x)
    if axis is None:
        t = reshape(t, (-1,))
        axis = 0
    return t.trace.emit(op, t, axis=_axis(t, axis), keepdims=keepdims)


@_api
def argmax(x: Any, axis: int | None = None, keepdims: bool = False) -> Tracer:
    """Index (i64) of the first maximum along ``axis`` (of the flattened array when None)."""
    return _arg("argmax", x, axis, keepdims)


@_api
def argmin(x: Any, axis: int | None = None, keepdims: bool = False) -> Tracer:
    """Index (i64) of the first minimum along ``axis`` (of the flattened array when None)."""
    return _arg("argmin", x, axis, keepdims)


@_api
def cumsum(x: Any, axis: int = 0) -> Tracer:
    """Running sum along ``axis``."""
    t = _trace(x).lift(x)
    return t.trace.emit("cumsum", t, axis=_axis(t, axis))


def _float_lift(x: Any) -> Tracer:
    t = _trace(x).lift(x)
    return t if t.dtype.is_float else _cast(t, f32)


@_api
def softmax(x: Any, axis: int = -1) -> Tracer:
    """exp(x - max) / sum(exp(x - max)) along ``axis``."""
    t = _float_lift(x)
    return t.trace.emit("softmax", t, axis=_axis(t, axis))


@_api
def log_softmax(x: Any, axis: int = -1) -> Tracer:
    """log(softmax(x)) along ``axis``, computed stably."""
    t = _float_lift(x)
    return t.trace.emit("log_softmax", t, axis=_axis(t, axis))


def _norm_params(t: Tracer, axis: int, params: Sequence[Any], op: str) -> list[Tracer]:
    ax = _axis(t, axis)
    want = t.shape[ax:]
    out = []
    for p in params:
        pt = _lift_all([p], t.dtype)[0]
        if pt.shape != want:
            raise TraceError(
                f"{op}: parameter of shape {list(pt.shape)} must have the normalised shape "
                f"{list(want)} of {t.type} at {user_location()}"
            )
        out.append(pt)
    return out


@_api
def layer_norm(x: Any, weight: Any, bias: Any = None, eps: float = 1e-5, axis: int = -1) -> Tracer:
    """(x - mean) / sqrt(var + eps) * weight + bias over axes ``axis``.. (the last by default)."""
    t = _float_lift(x)
    ax = _axis(t, axis)
    if bias is None:
        bias = np.zeros(t.shape[ax:], dtype=t.dtype.np_dtype)
    w, b = _norm_params(t, ax, [weight, bias], "layer_norm")
    return t.trace.emit("layer_norm", t, w, b, axis=ax, eps=float(eps))


@_api
def rms_norm(x: Any, weight: Any, eps: float = 1e-6, axis: int = -1) -> Tracer:
    """x / sqrt(mean(x^2) + eps) * weight over axes ``axis``.. (the last by default)."""
    t = _float_lift(x)
    ax = _axis(t, axis)
    (w,) = _norm_params(t, ax, [weight], "rms_norm")
    return t.trace.emit("rms_norm", t, w, axis=ax, eps=float(eps))


@_api
def reshape(x: Any, shape: Any) -> Tracer:
    """Reshape (row-major); one dim may be -1."""
    t = _trace(x).lift(x)
    dims = [int(shape)] if isinstance(shape, int) else [int(d) for d in shape]
    if dims.count(-1) > 1:
        raise TraceError(f"reshape to {dims}: only one dim may be -1 (at {user_location()})")
    if -1 in dims:
        known = math.prod(d for d in dims if d != -1)
        if known == 0 or t.size % known:
            raise TraceError(f"cannot reshape {t.type} to {dims} at {user_location()}")
        dims[dims.index(-1)] = t.size // known
    return t.trace.emit("reshape", t, shape=tuple(dims))


@_api
def transpose(x: Any, axes: Sequence[int] | None = None) -> Tracer:
    """Permute axes (reverse them when ``axes`` is None)."""
    t = _trace(x).lift(x)
    perm = tuple(reversed(range(t.ndim))) if axes is None else tuple(a % t.ndim for a in axes)
    return t.trace.emit("transpose", t, perm=perm)


def swapaxes(x: Any, a: int, b: int) -> Any:
    """Exchange two axes."""
    n = np.ndim(x) if not isinstance(x, Tracer) else x.ndim
    perm = list(range(n))
    perm[a], perm[b] = perm[b], perm[a]
    return transpose(x, perm)


@_api
def concatenate(xs: Sequence[Any], axis: int = 0) -> Tracer:
    """Join along ``axis``."""
    ts = _lift_all(list(xs))
    return ts[0].trace.emit("concat", *ts, axis=_axis(ts[0], axis))


@_api
def split(x: Any, indices_or_sections: int | Sequence[int], axis: int = 0) -> list[Tracer]:
    """NumPy split: N equal sections, or cut at the given indices."""
    t = _trace(x).lift(x)
    ax = _axis(t, axis)
    n = t.shape[ax]
    if isinstance(indices_or_sections, int):
        if indices_or_sections <= 0 or n % indices_or_sections:
            raise TraceError(
                f"cannot split dim {n} into {indices_or_sections} equal parts at {user_location()}"
            )
        sizes = [n // indices_or_sections] * indices_or_sections
    else:
        cuts = [0, *(builtins.min(builtins.max(int(c), 0), n) for c in indices_or_sections), n]
        sizes = [builtins.max(b - a, 0) for a, b in itertools.pairwise(cuts)]
    return t.trace.emit_many("split", t, axis=ax, sizes=tuple(sizes))


@_api
def take(x: Any, indices: Any, axis: int | None = None) -> Tracer:
    """``x[indices]`` along ``axis`` (of the flattened array when None): embedding lookup."""
    t = _trace(x, indices).lift(x)
    if axis is None:
        t = reshape(t, (-1,))
        axis = 0
    idx = t.trace.lift(indices, i64)
    if not idx.dtype.is_int:
        raise TraceError(f"take: indices must be integers, got {idx.type} at {user_location()}")
    return t.trace.emit("gather", t, idx, axis=_axis(t, axis))


@_api
def broadcast_to(x: Any, shape: Sequence[int]) -> Tracer:
    """NumPy broadcast_to."""
    t = _trace(x).lift(x)
    return t.trace.emit("broadcast_to", t, shape=tuple(int(d) for d in shape))


@_api
def expand_dims(x: Any, axis: int | Sequence[int]) -> Tracer:
    """Insert size-1 axes at ``axis`` (positions in the result)."""
    t = _trace(x).lift(x)
    seq = (axis,) if isinstance(axis, int) else tuple(axis)
    rank = t.ndim + len(seq)
    axes = tuple(sorted(a % rank for a in seq))
    return t.trace.emit("unsqueeze", t, axes=axes)


@_api
def squeeze(x: Any, axis: int | Sequence[int] | None = None) -> Tracer:
    """Drop size-1 axes (all of them when ``axis`` is None)."""
    t = _trace(x).lift(x)
    axes = tuple(i for i, d in enumerate(t.shape) if d == 1) if axis is None else _axes(t, axis)
    return t.trace.emit("squeeze", t, axes=axes)


@_api
def triu(x: Any, k: int = 0) -> Tracer:
    """Zero the elements below diagonal ``k`` of the last two axes."""
    t = _trace(x).lift(x)
    return t.trace.emit("triu", t, k=int(k))


@_api
def tril(x: Any, k: int = 0) -> Tracer:
    """Zero the elements above diagonal ``k`` of the last two axes."""
    t = _trace(x).lift(x)
    return t.trace.emit("tril", t, k=int(k))


@_api
def arange(
    start: int | float, stop: int | float | None = None, step: int | float = 1, dtype: Any = None
) -> Tracer:
    """``[start, stop)`` by ``step``; i64 for integer bounds, f32 otherwise (unless ``dtype``)."""
    if stop is None:
        start, stop = 0, start
    trace = CURRENT.get()
    assert trace is not None
    is_int = all(isinstance(v, int) for v in (start, stop, step))
    dt = to_dtype(dtype) if dtype is not None else (i64 if is_int else f32)
    if dt.is_float:
        start, stop, step = float(start), float(stop), float(step)
    trace.builder.loc = user_location()
    (v,) = trace.builder.op_values("iota", start=start, stop=stop, step=step, dtype=dt)
    return Tracer(trace, v)


@_api
def topk(x: Any, k: int, axis: int = -1, largest: bool = True) -> tuple[Tracer, Tracer]:
    """The ``k`` largest (or smallest) values along ``axis``, sorted, and their i64 indices."""
    t = _trace(x).lift(x)
    vals, idx = t.trace.emit_many("topk", t, k=int(k), axis=_axis(t, axis), largest=bool(largest))
    return vals, idx


@_api
def getitem(x: Any, idx: Any) -> Tracer:
    """Basic NumPy indexing (ints, slices, None, ...) plus one integer-array index (a gather)."""
    t = _trace(x).lift(x)
    items = list(idx) if isinstance(idx, tuple) else [idx]
    n_used = builtins.sum(1 for i in items if i is not None and i is not Ellipsis)
    if n_used > t.ndim:
        raise TraceError(f"too many indices for {t.type} at {user_location()}")
    ellipses = [k for k, i in enumerate(items) if i is Ellipsis]
    if len(ellipses) > 1:
        raise TraceError(f"an index can only have a single ellipsis (at {user_location()})")
    fill = [slice(None)] * (t.ndim - n_used)
    if ellipses:
        items[ellipses[0] : ellipses[0] + 1] = fill
    else:
        items += fill
    axes, starts, stops, steps, drop, gathers = [], [], [], [], [], []
    new_axes: list[int] = []
    ax, out_pos = 0, 0
    for it in items:
        if it is None:
            new_axes.append(out_pos)
            out_pos += 1
            continue
        d = t.shape[ax]
        if isinstance(it, slice):
            s, e = normalize_slice(d, it.start, it.stop, it.step or 1)
            if (s, e, it.step or 1) != (0, d, 1):
                axes.append(ax)
                starts.append(s)
                stops.append(e)
                steps.append(it.step or 1)
            out_pos += 1
        elif isinstance(it, int | np.integer):
            i = int(it)
            if not -d <= i < d:
                raise TraceError(f"index {i} out of range for axis {ax} of {t.type} at {user_location()}")
            i %= d
            axes.append(ax)
            starts.append(i)
            stops.append(i + 1)
            steps.append(1)
            drop.append(ax)
        else:
            gathers.append((ax, it))
            out_pos += 1
        ax += 1
    if len(gathers) > 1 or (gathers and new_axes):
        raise TraceError(
            f"indexing with several arrays (or arrays and None) is not supported at {user_location()}"
        )
    out = t
    if axes:
        out = t.trace.emit(
            "slice", out, axes=tuple(axes), starts=tuple(starts), stops=tuple(stops), steps=tuple(steps)
        )
    if gathers:
        gax, garr = gathers[0]
        idx_t = t.trace.lift(garr, i64)
        if idx_t.dtype.is_bool:
            raise TraceError(f"boolean mask indexing has a data-dependent shape (at {user_location()})")
        out = out.trace.emit("gather", out, idx_t, axis=gax)
        shift = idx_t.ndim - 1
        drop = [a + shift if a > gax else a for a in drop]
    if drop:
        out = out.trace.emit("squeeze", out, axes=tuple(sorted(drop)))
    if new_axes:
        out = out.trace.emit("unsqueeze", out, axes=tuple(new_axes))
    return out
