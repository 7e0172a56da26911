"""Matmul, reductions, and the normalisations built on reductions.

Primitive: matmul, reduce_sum, reduce_max, reduce_min, reduce_prod, argmax, argmin, cumsum.
Composite: reduce_mean (sum / n), softmax (exp(x - max) / sum), log_softmax, layer_norm
((x - mean) * rsqrt(var + eps) * weight + bias), rms_norm (x * rsqrt(mean(x^2) + eps) * weight).
Axes are stored non-negative, sorted and unique (frontends normalise them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..core import Attrs, NoAttrs
from ..dtypes import i64
from ..errors import KilnError, TypeInferenceError, VerifyError
from ..registry import OpDef
from ..types import Dim, TensorType, Type
from ._util import broadcast_shapes, check_axes, check_axis, fmt_shape, same_dtype, tensor_args


def _matmul_infer(a: NoAttrs, ts: Sequence[Type]) -> list[Type]:
    x, y = tensor_args("matmul", ts)
    dt = same_dtype("matmul", [x, y])
    if dt.is_bool:
        raise TypeInferenceError("'matmul' needs numbers, got bool")
    if x.rank == 0 or y.rank == 0:
        raise TypeInferenceError(f"'matmul' needs operands of rank >= 1, got {x} and {y}")
    xs = list(x.shape) if x.rank > 1 else [1, *x.shape]
    ys = list(y.shape) if y.rank > 1 else [*y.shape, 1]
    if xs[-1] != ys[-2]:
        raise TypeInferenceError(f"'matmul' contraction mismatch: {x} @ {y} ({xs[-1]} != {ys[-2]})")
    batch = broadcast_shapes("matmul", tuple(xs[:-2]), tuple(ys[:-2]))
    out: list[Dim] = [*batch]
    if x.rank > 1:
        out.append(xs[-2])
    if y.rank > 1:
        out.append(ys[-1])
    return [TensorType(dt, tuple(out))]


def _matmul_ref(a: NoAttrs, args: Sequence[np.ndarray], out: Sequence[Type]) -> list[np.ndarray]:
    x, y = args
    if x.dtype.kind in "iu":
        return [np.matmul(x.astype(np.int64), y.astype(np.int64))]
    return [np.matmul(x, y)]


@dataclass(frozen=True)
class ReduceAttrs(Attrs):
    """``axes``: the reduced axes (non-negative, sorted, unique); ``keepdims``: keep them as 1."""

    axes: tuple[int, ...]
    keepdims: bool = False

    def verify(self) -> None:
        if list(self.axes) != sorted(set(self.axes)) or any(a < 0 for a in self.axes):
            raise VerifyError(f"reduction axes {list(self.axes)} must be non-negative, sorted, unique")


def _reduced_shape(op: str, t: TensorType, axes: Sequence[int], keepdims: bool) -> tuple[Dim, ...]:
    check_axes(op, axes, t.rank)
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(t.shape))
    return tuple(d for i, d in enumerate(t.shape) if i not in axes)


def _reduction(name: str, fn: str, doc: str, composite: bool = False) -> OpDef:
    def infer(a: ReduceAttrs, ts: Sequence[Type]) -> list[Type]:
        (t,) = tensor_args(name, ts)
        if t.scalar_dtype.is_bool:
            raise TypeInferenceError(f"'{name}' needs numbers, got {t}; cast the bools first")
        if name == "reduce_mean" and not t.scalar_dtype.is_float:
            raise TypeInferenceError(f"'reduce_mean' needs a float dtype, got {t}")
        return [t.with_shape(_reduced_shape(name, t, a.axes, a.keepdims))]

    def ref(a: ReduceAttrs, args: Sequence[np.ndarray], out: Sequence[Type]) -> list[np.ndarray]:
        x = args[0]
        if fn in ("sum", "prod") and x.dtype.kind in "iu":
            x = x.astype(np.int64)
        if fn in ("max", "min") and any(x.shape[ax] == 0 for ax in a.axes):
            # The reduction of an empty set is the identity (-inf for max), as in ONNX.
            dt = out[0].scalar_dtype  # type: ignore[union-attr]
            if dt.is_float:
                ident: float | int = -np.inf if fn == "max" else np.inf
            else:
                ident = dt.min_value if fn == "max" else dt.max_value
            return [getattr(np, fn)(x, axis=a.axes, keepdims=a.keepdims, initial=ident)]
        return [getattr(np, fn)(x, axis=a.axes, keepdims=a.keepdims)]

    return OpDef(name, ("x",), infer, ref, attrs=ReduceAttrs, composite=composite, doc=doc)


@dataclass(frozen=True)
class ArgReduceAttrs(Attrs):
    """``axis``; ``keepdims``; ``select_last``: on ties pick the last index instead of the first."""

    axis: int
    keepdims: bool = False
    select_last: bool = False


def _arg_reduction(name: str, fn: str) -> OpDef:
    def infer(a: ArgReduceAttrs, ts: Sequence[Type]) -> list[Type]:
        (t,) = tensor_args(name, ts)
        check_axis(name, a.axis, t.rank)
        return [TensorType(i64, _reduced_shape(name, t, (a.axis,), a.keepdims))]

    def ref(a: ArgReduceAttrs, args: Sequence[np.ndarray], out: Sequence[Type]) -> list[np.ndarray]:
        x = args[0]
        if x.shape[a.axis] == 0:
            raise KilnError(f"'{name}' over an empty axis has no index (shape {list(x.shape)})")
        if a.select_last:
            flipped = np.flip(x, axis=a.axis)
            idx = x.shape[a.axis] - 1 - getattr(np, fn)(flipped, axis=a.axis, keepdims=a.keepdims)
        else:
            idx = getattr(np, fn)(x, axis=a.axis, keepdims=a.keepdims)
        return [np.asarray(idx, dtype=np.int64)]

    return OpDef(name, ("x",), infer, ref, attrs=ArgReduceAttrs, doc=f"index of the {fn[3:]} along axis")


@dataclass(frozen=True)
class AxisAttrs(Attrs):
    """``axis``: the (non-negative) axis the op works along."""

    axis: int

    def verify(self) -> None:
        if self.axis < 0:
            raise VerifyError(f"axis must be non-negative in the IR, got {self.axis}")


def _float_same(name: str) -> object:
    def infer(a: AxisAttrs, ts: Sequence[Type]) -> list[Type]:
        (t,) = tensor_args(name, ts)
        if not t.scalar_dtype.is_float:
            raise TypeInferenceError(f"'{name}' needs a float dtype, got {t}")
        check_axis(name, a.axis, t.rank)
        return [t]

    return infer


def _softmax(a: AxisAttrs, args: Sequence[np.ndarray], out: Sequence[Type]) -> list[np.ndarray]:
    x = args[0]
    if x.size == 0:
        return [x.copy()]  # nothing to normalise (np.max of an empty axis would raise)
    m = np.max(x, axis=a.axis, keepdims=True)
    e = np.exp(x - m)
    return [e / np.sum(e, axis=a.axis, keepdims=True)]


def _log_softmax(a: AxisAttrs, args: Sequence[np.ndarray], out: Sequence[Type]) -> list[np.ndarray]:
    x = args[0]
    if x.size == 0:
        return [x.copy()]  # nothing to normalise (np.max of an empty axis would raise)
    m = np.max(x, axis=a.axis, keepdims=True)
    s = x - m
    return [s - np.log(np.sum(np.exp(s), axis=a.axis, keepdims=True))]


@dataclass(frozen=True)
class CumsumAttrs(Attrs):
    """``axis``; ``exclusive``: shift by one (first element 0); ``reverse``: sum from the end."""

    axis: int
    exclusive: bool = False
    reverse: bool = False


def _cumsum_infer(a: CumsumAttrs, ts: Sequence[Type]) -> list[Type]:
    (t,) = tensor_args("cumsum", ts)
    check_axis("cumsum", a.axis, t.rank)
    if t.scalar_dtype.is_bool:
        raise TypeInferenceError("'cumsum' needs numbers, got bool")
    return [t]


def _cumsum_ref(a: CumsumAttrs, args: Sequence[np.ndarray], out: Sequence[Type]) -> list[np.ndarray]:
    x = args[0]
    if x.dtype.kind in "iu":
        x = x.astype(np.int64)
    if a.reverse:
        x = np.flip(x, a.axis)
    y = np.cumsum(x, axis=a.axis)
    if a.exclusive:
        y = y - x
    if a.reverse:
        y = np.flip(y, a.axis)
    return [y]


@dataclass(frozen=True)
class NormAttrs(Attrs):
    """``axis``: normalise over axes axis..rank-1; ``eps``: added to the variance."""

    axis: int
    eps: float = 1e-5

    def verify(self) -> None:
        if self.axis < 0:
            raise VerifyError(f"axis must be non-negative in the IR, got {self.axis}")
        if not self.eps >= 0:
            raise VerifyError(f"eps must be >= 0, got {self.eps}")


def _norm_infer(name: str, n_params: int) -> object:
    def infer(a: NormAttrs, ts: Sequence[Type]) -> list[Type]:
        x, *params = tensor_args(name, ts)
        if not x.scalar_dtype.is_float:
            raise TypeInferenceError(f"'{name}' needs a float dtype, got {x}")
        same_dtype(name, [x, *params])
        check_axis(name, a.axis, x.rank)
        want = x.shape[a.axis :]
        for pname, p in zip(("weight", "bias"), params, strict=False):
            if p.shape != want:
                raise TypeInferenceError(
                    f"'{name}' {pname} shape {fmt_shape(p.shape)} must equal the normalised "
                    f"shape {fmt_shape(want)} of {x}"
                )
        return [x]

    return infer


def _layer_norm(a: NormAttrs, args: Sequence[np.ndarray], out: Sequence[Type]) -> list[np.ndarray]:
    x, w, b = args
    axes = tuple(range(a.axis, x.ndim))
    mean = np.mean(x, axis=axes, keepdims=True)
    var = np.mean(np.square(x - mean), axis=axes, keepdims=True)
    return [(x - mean) / np.sqrt(var + a.eps) * w + b]


def _rms_norm(a: NormAttrs, args: Sequence[np.ndarray], out: Sequence[Type]) -> list[np.ndarray]:
    x, w = args
    axes = tuple(range(a.axis, x.ndim))
    ms = np.mean(np.square(x), axis=axes, keepdims=True)
    return [x / np.sqrt(ms + a.eps) * w]


def reduce_ops() -> list[OpDef]:
    return [
        OpDef(
            "matmul",
            ("lhs", "rhs"),
            _matmul_infer,
            _matmul_ref,
            doc="NumPy matmul: batched with broadcasting over leading dims; 1-D operands promoted",
        ),
        _reduction("reduce_sum", "sum", "sum over axes"),
        _reduction("reduce_mean", "mean", "mean over axes (composite: sum / n)", composite=True),
        _reduction("reduce_max", "max", "max over axes (-inf, or the int minimum, over none)"),
        _reduction("reduce_min", "min", "min over axes (+inf, or the int maximum, over none)"),
        _reduction("reduce_prod", "prod", "product over axes"),
        _arg_reduction("argmax", "argmax"),
        _arg_reduction("argmin", "argmin"),
        OpDef("cumsum", ("x",), _cumsum_infer, _cumsum_ref, attrs=CumsumAttrs, doc="running sum"),
        OpDef(
            "softmax",
            ("x",),
            _float_same("softmax"),  # type: ignore[arg-type]
            _softmax,
            attrs=AxisAttrs,
            composite=True,
            doc="exp(x - max) / sum(exp(x - max)) along axis (composite)",
        ),
        OpDef(
            "log_softmax",
            ("x",),
            _float_same("log_softmax"),  # type: ignore[arg-type]
            _log_softmax,
            attrs=AxisAttrs,
            composite=True,
            doc="x - max - log(sum(exp(x - max))) along axis (composite)",
        ),
        OpDef(
            "layer_norm",
            ("x", "weight", "bias"),
            _norm_infer("layer_norm", 2),  # type: ignore[arg-type]
            _layer_norm,
            attrs=NormAttrs,
            composite=True,
            doc="(x - mean) / sqrt(var + eps) * weight + bias over axes axis.. (composite)",
        ),
        OpDef(
            "rms_norm",
            ("x", "weight"),
            _norm_infer("rms_norm", 1),  # type: ignore[arg-type]
            _rms_norm,
            attrs=NormAttrs,
            composite=True,
            doc="x / sqrt(mean(x^2) + eps) * weight over axes axis.. (composite)",
        ),
    ]
