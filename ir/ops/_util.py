"""Shared helpers for op definitions: operand checks, axis normalisation, broadcasting."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..dtypes import DType
from ..errors import TypeInferenceError
from ..types import Dim, Shape, TensorType, Type


def tensor_arg(op: str, t: Type, what: str = "operand") -> TensorType:
    if not isinstance(t, TensorType):
        raise TypeInferenceError(f"'{op}' needs a tensor {what}, got {t}")
    if not isinstance(t.dtype, DType):
        raise TypeInferenceError(
            f"'{op}' cannot take quantized {what} {t}; dequantize it or use a quantized op"
        )
    return t


def tensor_args(op: str, ts: Sequence[Type]) -> list[TensorType]:
    return [tensor_arg(op, t, f"operand #{i}") for i, t in enumerate(ts)]


def same_dtype(op: str, ts: Sequence[TensorType]) -> DType:
    dts = {t.scalar_dtype for t in ts}
    if len(dts) != 1:
        got = ", ".join(str(t) for t in ts)
        raise TypeInferenceError(f"'{op}' needs operands of one dtype, got {got}; insert a cast")
    return ts[0].scalar_dtype


def check_axis(op: str, axis: int, rank: int, what: str = "axis") -> None:
    if not 0 <= axis < rank:
        raise TypeInferenceError(f"'{op}' {what} {axis} out of range for rank {rank}")


def check_axes(op: str, axes: Sequence[int], rank: int) -> None:
    for a in axes:
        check_axis(op, a, rank)
    if list(axes) != sorted(set(axes)):
        raise TypeInferenceError(f"'{op}' axes {list(axes)} must be sorted and unique")


def normalize_axis(axis: int, rank: int) -> int:
    """Map a possibly negative axis to 0..rank-1 (frontends call this; the IR stores the result)."""
    return axis + rank if axis < 0 else axis


def broadcast_dims(op: str, a: Dim, b: Dim) -> Dim:
    if a == b:
        return a
    if a == 1:
        return b
    if b == 1:
        return a
    raise TypeInferenceError(f"'{op}' cannot broadcast dims {a} and {b}")


def broadcast_shapes(op: str, *shapes: Shape) -> Shape:
    """NumPy broadcasting over static and symbolic dims."""
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for i in range(rank):
        d: Dim = 1
        for s in shapes:
            j = i - (rank - len(s))
            if j >= 0:
                try:
                    d = broadcast_dims(op, d, s[j])
                except TypeInferenceError:
                    got = " and ".join(f"[{','.join(map(str, s))}]" for s in shapes)
                    raise TypeInferenceError(f"'{op}' cannot broadcast shapes {got}") from None
        out.append(d)
    return tuple(out)


def shape_product(shape: Shape) -> tuple[int, tuple[str, ...]]:
    """(product of the static dims, sorted symbolic dims): equal for equal-sized shapes."""
    static = math.prod(d for d in shape if isinstance(d, int))
    symbols = tuple(sorted(d for d in shape if isinstance(d, str)))
    return static, symbols


def fmt_shape(shape: Shape) -> str:
    return f"[{','.join(map(str, shape))}]"
