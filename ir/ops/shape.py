"""Data-movement ops: reshape, transpose, slice, concat, split, gather, broadcast_to, squeeze,
unsqueeze, iota, topk, triu/tril, and constants. All primitive.

Attributes hold canonical values (non-negative axes, slices clamped to the dim) so that equal
computations print equal text and CSE finds them; frontends normalise Python/ONNX conventions with
:func:`normalize_slice` and :func:`~kiln.ir.ops._util.normalize_axis`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..core import Attrs
from ..dtypes import DType, i64
from ..errors import TypeInferenceError, VerifyError
from ..registry import OpDef
from ..types import Dim, Shape, TensorType, Type
from ._util import check_axes, check_axis, fmt_shape, same_dtype, shape_product, tensor_arg, tensor_args
from .reduce import AxisAttrs


@dataclass(frozen=True)
class ShapeAttrs(Attrs):
    """``shape``: the result shape (ints and symbolic dim names)."""

    shape: Shape


def _reshape_infer(a: ShapeAttrs, ts: Sequence[Type]) -> list[Type]:
    t = tensor_arg("reshape", ts[0])
    if shape_product(t.shape) != shape_product(a.shape):
        raise TypeInferenceError(
            f"'reshape' cannot reshape {t} to {fmt_shape(a.shape)}: element counts differ"
        )
    return [t.with_shape(a.shape)]


def _broadcast_infer(a: ShapeAttrs, ts: Sequence[Type]) -> list[Type]:
    t = tensor_arg("broadcast_to", ts[0])
    if t.rank > len(a.shape):
        raise TypeInferenceError(f"'broadcast_to' cannot lower rank: {t} to {fmt_shape(a.shape)}")
    for d, o in zip(reversed(t.shape), reversed(a.shape), strict=False):
        if d != o and d != 1:
            raise TypeInferenceError(f"'broadcast_to' cannot broadcast {t} to {fmt_shape(a.shape)}")
    return [t.with_shape(a.shape)]


@dataclass(frozen=True)
class PermAttrs(Attrs):
    """``perm``: result axis i is operand axis perm[i]."""

    perm: tuple[int, ...]

    def verify(self) -> None:
        if sorted(self.perm) != list(range(len(self.perm))):
            raise VerifyError(f"transpose perm {list(self.perm)} is not a permutation")


def _transpose_infer(a: PermAttrs, ts: Sequence[Type]) -> list[Type]:
    t = tensor_arg("transpose", ts[0])
    if len(a.perm) != t.rank:
        raise TypeInferenceError(f"'transpose' perm {list(a.perm)} does not match rank of {t}")
    return [t.with_shape(tuple(t.shape[p] for p in a.perm))]


def normalize_slice(dim: int, start: int | None, stop: int | None, step: int) -> tuple[int, int]:
    """Python slice semantics -> canonical (start, stop); stop is -1 for 'before index 0'."""
    s, e, _ = slice(start, stop, step).indices(dim)
    return s, e


def slice_length(start: int, stop: int, step: int) -> int:
    """The number of elements of a canonical slice (stop -1 with a negative step: to index 0)."""
    return len(range(start, stop, step))


@dataclass(frozen=True)
class SliceAttrs(Attrs):
    """Per listed axis: start, stop, step (canonical: as ``slice(...).indices(dim)`` returns)."""

    axes: tuple[int, ...]
    starts: tuple[int, ...]
    stops: tuple[int, ...]
    steps: tuple[int, ...]

    def verify(self) -> None:
        n = len(self.axes)
        if not len(self.starts) == len(self.stops) == len(self.steps) == n:
            raise VerifyError("slice axes, starts, stops and steps must have one entry per axis")
        if list(self.axes) != sorted(set(self.axes)) or any(a < 0 for a in self.axes):
            raise VerifyError(f"slice axes {list(self.axes)} must be non-negative, sorted, unique")
        if 0 in self.steps:
            raise VerifyError("slice step cannot be 0")


def _slice_infer(a: SliceAttrs, ts: Sequence[Type]) -> list[Type]:
    t = tensor_arg("slice", ts[0])
    check_axes("slice", a.axes, t.rank)
    shape = list(t.shape)
    for ax, s, e, st in zip(a.axes, a.starts, a.stops, a.steps, strict=True):
        d = t.shape[ax]
        if not isinstance(d, int):
            raise TypeInferenceError(f"'slice' on symbolic dim {d} of {t}: bind the dim first")
        lo, hi = (0, d) if st > 0 else (-1, d - 1)
        if not (lo <= s <= hi and lo <= e <= hi):
            raise TypeInferenceError(
                f"'slice' bounds {s}:{e}:{st} on axis {ax} of {t} are not canonical for dim {d}"
            )
        shape[ax] = slice_length(s, e, st)
    return [t.with_shape(tuple(shape))]


def _slice_ref(a: SliceAttrs, args: Sequence[np.ndarray], out: Sequence[Type]) -> list[np.ndarray]:
    idx: list[slice] = [slice(None)] * args[0].ndim
    for ax, s, e, st in zip(a.axes, a.starts, a.stops, a.steps, strict=True):
        if slice_length(s, e, st) == 0:
            idx[ax] = slice(0, 0)  # Python would read a start of -1 as the last element
        else:
            idx[ax] = slice(s, None if e < 0 else e, st)
    return [args[0][tuple(idx)]]


def _concat_infer(a: AxisAttrs, ts: Sequence[Type]) -> list[Type]:
    xs = tensor_args("concat", ts)
    dt = same_dtype("concat", xs)
    rank = xs[0].rank
    check_axis("concat", a.axis, rank)
    total: Dim = 0
    for x in xs:
        if x.rank != rank or any(x.shape[i] != xs[0].shape[i] for i in range(rank) if i != a.axis):
            got = ", ".join(str(x) for x in xs)
            raise TypeInferenceError(f"'concat' along axis {a.axis} needs matching other dims: {got}")
        d = x.shape[a.axis]
        if not isinstance(d, int) or not isinstance(total, int):
            raise TypeInferenceError(f"'concat' along symbolic dim {d}: bind the dim first")
        total += d
    return [TensorType(dt, tuple(total if i == a.axis else d for i, d in enumerate(xs[0].shape)))]


@dataclass(frozen=True)
class SplitAttrs(Attrs):
    """``axis``; ``sizes``: the length of each piece (one result per piece)."""

    axis: int
    sizes: tuple[int, ...]

    def verify(self) -> None:
        if not self.sizes or any(s < 0 for s in self.sizes):
            raise VerifyError(f"split sizes {list(self.sizes)} must be a non-empty list of sizes >= 0")


def _split_infer(a: SplitAttrs, ts: Sequence[Type]) -> list[Type]:
    t = tensor_arg("split", ts[0])
    check_axis("split", a.axis, t.rank)
    if t.shape[a.axis] != sum(a.sizes):
        raise TypeInferenceError(
            f"'split' sizes {list(a.sizes)} sum to {sum(a.sizes)}, not dim {t.shape[a.axis]} of {t}"
        )
    return [t.with_shape(tuple(s if i == a.axis else d for i, d in enumerate(t.shape))) for s in a.sizes]


def _split_ref(a: SplitAttrs, args: Sequence[np.ndarray], out: Sequence[Type]) -> list[np.ndarray]:
    cuts = np.cumsum(a.sizes)[:-1]
    return list(np.split(args[0], cuts, axis=a.axis))


def _gather_infer(a: AxisAttrs, ts: Sequence[Type]) -> list[Type]:
    x, idx = tensor_args("gather", ts)
    check_axis("gather", a.axis, x.rank)
    if not idx.scalar_dtype.is_int:
        raise TypeInferenceError(f"'gather' indices must be integers, got {idx}")
    return [x.with_shape((*x.shape[: a.axis], *idx.shape, *x.shape[a.axis + 1 :]))]


def _gather_ref(a: AxisAttrs, args: Sequence[np.ndarray], out: Sequence[Type]) -> list[np.ndarray]:
    from ..errors import KilnError

    x, idx = args
    n = x.shape[a.axis]
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise KilnError(f"'gather' index out of range [{-n}, {n}) on axis {a.axis}")
    return [np.take(x, idx.astype(np.int64), axis=a.axis)]


@dataclass(frozen=True)
class AxesAttrs(Attrs):
    """``axes``: non-negative, sorted, unique axes."""

    axes: tuple[int, ...]

    def verify(self) -> None:
        if list(self.axes) != sorted(set(self.axes)) or any(a < 0 for a in self.axes):
            raise VerifyError(f"axes {list(self.axes)} must be non-negative, sorted, unique")


def _squeeze_infer(a: AxesAttrs, ts: Sequence[Type]) -> list[Type]:
    t = tensor_arg("squeeze", ts[0])
    check_axes("squeeze", a.axes, t.rank)
    for ax in a.axes:
        if t.shape[ax] != 1:
            raise TypeInferenceError(f"'squeeze' axis {ax} of {t} has size {t.shape[ax]}, not 1")
    return [t.with_shape(tuple(d for i, d in enumerate(t.shape) if i not in a.axes))]


def _unsqueeze_infer(a: AxesAttrs, ts: Sequence[Type]) -> list[Type]:
    t = tensor_arg("unsqueeze", ts[0])
    rank = t.rank + len(a.axes)
    check_axes("unsqueeze", a.axes, rank)
    it = iter(t.shape)
    return [t.with_shape(tuple(1 if i in a.axes else next(it) for i in range(rank)))]


@dataclass(frozen=True)
class IotaAttrs(Attrs):
    """``arange(start, stop, step)`` with ``dtype``."""

    start: int | float
    stop: int | float
    step: int | float
    dtype: DType

    def verify(self) -> None:
        if self.step == 0:
            raise VerifyError("iota step cannot be 0")
        if not all(math.isfinite(v) for v in (self.start, self.stop, self.step)):
            raise VerifyError("iota start, stop and step must be finite")
        if self.dtype.is_bool:
            raise VerifyError("iota dtype cannot be bool")
        if self.dtype.is_int and not all(isinstance(v, int) for v in (self.start, self.stop, self.step)):
            raise VerifyError(f"iota with integer dtype {self.dtype} needs integer start/stop/step")

    @property
    def length(self) -> int:
        return max(0, math.ceil((self.stop - self.start) / self.step))


def _iota_infer(a: IotaAttrs, ts: Sequence[Type]) -> list[Type]:
    return [TensorType(a.dtype, (a.length,))]


def _iota_ref(a: IotaAttrs, args: Sequence[np.ndarray], out: Sequence[Type]) -> list[np.ndarray]:
    steps = np.arange(a.length, dtype=np.float64 if a.dtype.is_float else np.int64)
    return [np.asarray(a.start + a.step * steps)]  # type: ignore[operator]


@dataclass(frozen=True)
class TopkAttrs(Attrs):
    """``k`` along ``axis``; ``largest`` (else smallest); ties pick the lower index first."""

    k: int
    axis: int
    largest: bool = True

    def verify(self) -> None:
        if self.k < 0:
            raise VerifyError(f"topk k must be >= 0, got {self.k}")


def _topk_infer(a: TopkAttrs, ts: Sequence[Type]) -> list[Type]:
    t = tensor_arg("topk", ts[0])
    check_axis("topk", a.axis, t.rank)
    d = t.shape[a.axis]
    if isinstance(d, int) and a.k > d:
        raise TypeInferenceError(f"'topk' k={a.k} exceeds dim {d} of axis {a.axis} of {t}")
    shape = tuple(a.k if i == a.axis else s for i, s in enumerate(t.shape))
    return [t.with_shape(shape), TensorType(i64, shape)]


def _topk_ref(a: TopkAttrs, args: Sequence[np.ndarray], out: Sequence[Type]) -> list[np.ndarray]:
    x = args[0]
    if x.dtype.kind == "b":
        key = -x.astype(np.int8) if a.largest else x.astype(np.int8)
    elif a.largest and x.dtype.kind in "iu":
        key = ~x  # -x - 1: reverses the order like -x without overflowing at the type's minimum
    else:
        key = -x if a.largest else x
    order = np.argsort(key, axis=a.axis, kind="stable")
    idx = np.take(order, np.arange(a.k), axis=a.axis)
    return [np.take_along_axis(x, idx, axis=a.axis), idx.astype(np.int64)]


@dataclass(frozen=True)
class TriAttrs(Attrs):
    """``k``: the diagonal offset (0 main, > 0 above, < 0 below)."""

    k: int = 0


def _tri_infer(name: str) -> object:
    def infer(a: TriAttrs, ts: Sequence[Type]) -> list[Type]:
        t = tensor_arg(name, ts[0])
        if t.rank < 2:
            raise TypeInferenceError(f"'{name}' needs rank >= 2, got {t}")
        return [t]

    return infer


@dataclass(frozen=True)
class ConstantAttrs(Attrs):
    """``ref``: the key of the constant's data in the graph's constant table."""

    ref: str

    def verify(self) -> None:
        if not self.ref:
            raise VerifyError("constant ref cannot be empty")


def _constant_ref(a: ConstantAttrs, args: Sequence[np.ndarray], out: Sequence[Type]) -> list[np.ndarray]:
    raise AssertionError("the interpreter reads constants from the graph's table")


def _constant_infer(a: ConstantAttrs, ts: Sequence[Type]) -> list[Type]:
    raise AssertionError("a constant's type is the type of its data")


def shape_ops() -> list[OpDef]:
    return [
        OpDef(
            "reshape",
            ("x",),
            _reshape_infer,
            lambda a, args, out: [np.reshape(args[0], out[0].static_shape)],  # type: ignore[union-attr]
            attrs=ShapeAttrs,
            doc="same elements, row-major, new shape",
        ),
        OpDef(
            "broadcast_to",
            ("x",),
            _broadcast_infer,
            lambda a, args, out: [np.broadcast_to(args[0], out[0].static_shape)],  # type: ignore[union-attr]
            attrs=ShapeAttrs,
            doc="NumPy broadcast_to",
        ),
        OpDef(
            "transpose",
            ("x",),
            _transpose_infer,
            lambda a, args, out: [np.transpose(args[0], a.perm)],
            attrs=PermAttrs,
            doc="permute axes",
        ),
        OpDef("slice", ("x",), _slice_infer, _slice_ref, attrs=SliceAttrs, doc="strided slice"),
        OpDef(
            "concat",
            ("x",),
            _concat_infer,
            lambda a, args, out: [np.concatenate(list(args), axis=a.axis)],
            attrs=AxisAttrs,
            variadic=True,
            doc="join along axis",
        ),
        OpDef("split", ("x",), _split_infer, _split_ref, attrs=SplitAttrs, doc="cut along axis"),
        OpDef(
            "gather",
            ("x", "indices"),
            _gather_infer,
            _gather_ref,
            attrs=AxisAttrs,
            doc="np.take(x, indices, axis): embedding lookup; indices may be negative",
        ),
        OpDef(
            "squeeze",
            ("x",),
            _squeeze_infer,
            lambda a, args, out: [np.squeeze(args[0], axis=a.axes)],
            attrs=AxesAttrs,
            doc="drop size-1 axes",
        ),
        OpDef(
            "unsqueeze",
            ("x",),
            _unsqueeze_infer,
            lambda a, args, out: [np.expand_dims(args[0], a.axes)],
            attrs=AxesAttrs,
            doc="insert size-1 axes (axes index the result)",
        ),
        OpDef("iota", (), _iota_infer, _iota_ref, attrs=IotaAttrs, doc="arange(start, stop, step)"),
        OpDef(
            "topk",
            ("x",),
            _topk_infer,
            _topk_ref,
            attrs=TopkAttrs,
            doc="the k largest (or smallest) values along axis and their i64 indices, sorted",
        ),
        OpDef(
            "triu",
            ("x",),
            _tri_infer("triu"),  # type: ignore[arg-type]
            lambda a, args, out: [np.triu(args[0], a.k)],
            attrs=TriAttrs,
            doc="zero below diagonal k of the last two axes",
        ),
        OpDef(
            "tril",
            ("x",),
            _tri_infer("tril"),  # type: ignore[arg-type]
            lambda a, args, out: [np.tril(args[0], a.k)],
            attrs=TriAttrs,
            doc="zero above diagonal k of the last two axes",
        ),
        OpDef(
            "constant",
            (),
            _constant_infer,
            _constant_ref,
            attrs=ConstantAttrs,
            doc="a constant (weight) whose data lives in the graph's constant table",
        ),
    ]
