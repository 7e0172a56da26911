"""Tracing Python functions into kiln graphs (like jax.jit's tracing).

A :class:`Trace` owns a graph under construction; a :class:`Tracer` stands for one of its values
and overloads Python's operators. Arithmetic on a tracer records ops; anything that needs a
concrete value (``if x > 0:``, ``int(x)``, ``np.asarray(x)``) raises a TraceError that names the
user's line. Python scalars are weakly typed: ``x * 2`` keeps ``x``'s dtype.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..ir.builder import GraphBuilder
from ..ir.core import Graph, Value
from ..ir.dtypes import DType, boolean, f32, from_numpy, i64
from ..ir.errors import KilnError, TraceError, VerifyError
from ..ir.interpret import interpret
from ..ir.registry import Context, default_context
from ..ir.types import TensorType

_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_INTERNAL = tuple(
    os.path.join(_PKG, d) + os.sep for d in ("frontends", "ir", "passes", "backends", "runtime")
) + tuple(os.path.join(_PKG, f) for f in ("__init__.py", "ops.py", "cli.py"))


def user_location() -> str | None:
    """``file:line`` of the innermost caller outside kiln's own modules."""
    frame = sys._getframe(1)
    while frame is not None:
        fname = os.path.abspath(frame.f_code.co_filename)
        if not fname.startswith(_INTERNAL) and "numpy" not in fname.split(os.sep)[-3:-1]:
            return f"{frame.f_code.co_filename}:{frame.f_lineno}"
        frame = frame.f_back  # type: ignore[assignment]
    return None


def promote(a: DType, b: DType) -> DType:
    """The common dtype of two array dtypes (NumPy-like, floats preferred, no f64 surprises)."""
    if a == b:
        return a
    if a.is_bool:
        return b
    if b.is_bool:
        return a
    if a.is_float and b.is_float:
        if a.bits == b.bits:  # f16 with bf16
            return f32
        return a if a.bits > b.bits else b
    if a.is_float:
        return a
    if b.is_float:
        return b
    if a.kind == b.kind:
        return a if a.bits > b.bits else b
    s, u = (a, b) if a.kind == "i" else (b, a)
    return DType("i", min(64, max(s.bits, u.bits + 1)))


class Trace:
    """One tracing session: a builder, the constants it captured, and eager mode for NumPy."""

    def __init__(
        self,
        name: str = "main",
        ctx: Context | None = None,
        const_names: dict[int, str] | None = None,
        eager: bool = False,
    ) -> None:
        self.builder = GraphBuilder(name, ctx or default_context())
        self.consts: dict[int, tuple[Any, Value]] = {}
        self.const_names = const_names or {}
        self.eager = eager
        self.eager_inputs: dict[str, np.ndarray] = {}

    @property
    def graph(self) -> Graph:
        return self.builder.graph

    def input(self, name: str, t: TensorType) -> Tracer:
        return Tracer(self, self.builder.input(name, t))

    def lift(self, x: Any, like: DType | None = None) -> Tracer:
        """Make a tracer of ``x``: tracers pass through, arrays become constants (or eager
        inputs), Python scalars take the dtype ``like`` of the other operand."""
        if isinstance(x, Tracer):
            if x.trace is not self:
                raise TraceError(
                    f"a value from another trace was used at {user_location()}: do not keep "
                    "traced values across calls of a jitted function"
                )
            return x
        if isinstance(x, bool | int | float | np.bool_) and not isinstance(x, np.ndarray):
            return self.scalar(bool(x) if isinstance(x, np.bool_) else x, like)
        if isinstance(x, np.ndarray | np.generic):
            arr = np.asarray(x)
            try:
                from_numpy(arr.dtype)
            except VerifyError:
                raise TraceError(
                    f"array of NumPy dtype {arr.dtype} at {user_location()} has no kiln dtype"
                ) from None
            if self.eager:
                name = f"e{len(self.eager_inputs)}"
                self.eager_inputs[name] = arr
                return self.input(name, TensorType(from_numpy(arr.dtype), tuple(arr.shape)))
            key = id(x)
            if key not in self.consts:
                hint = self.const_names.get(key, "c")
                self.consts[key] = (x, self.builder.constant(arr, name=hint))
            return Tracer(self, self.consts[key][1])
        if isinstance(x, list | tuple):
            return self.lift(np.asarray(x), like)
        raise TraceError(
            f"cannot use a {type(x).__name__} as an array at {user_location()}: pass NumPy arrays, "
            "Python numbers or traced values"
        )

    def scalar(self, x: bool | int | float, like: DType | None) -> Tracer:
        if like is None:
            like = boolean if isinstance(x, bool) else (i64 if isinstance(x, int) else f32)
        elif isinstance(x, float) and not like.is_float:
            like = f32
        elif isinstance(x, int) and not isinstance(x, bool) and like.is_bool:
            like = i64
        arr = np.asarray(x).astype(like.np_dtype)
        key = ("scalar", like, x if x == x else "nan")
        if key not in self.consts:  # type: ignore[comparison-overlap]
            self.consts[key] = (x, self.builder.constant(arr, name="s"))  # type: ignore[index]
        return Tracer(self, self.consts[key][1])  # type: ignore[index]

    def emit(self, op: str, *operands: Tracer, **attrs: Any) -> Tracer:
        return self.emit_many(op, *operands, **attrs)[0]

    def emit_many(self, op: str, *operands: Tracer, **attrs: Any) -> list[Tracer]:
        self.builder.loc = user_location()
        try:
            vals = self.builder.op_values(op, *(t.value for t in operands), **attrs)
        except KilnError as e:
            raise TraceError(str(e)) from None
        return [Tracer(self, v) for v in vals]

    def run_eager(self, outs: Sequence[Tracer]) -> list[np.ndarray]:
        for i, t in enumerate(outs):
            self.builder.output(f"out{i}", t.value)
        res = interpret(self.graph, self.eager_inputs, self.builder.ctx)
        return [res[f"out{i}"] for i in range(len(outs))]


_UFUNCS: dict[str, str] = {
    "add": "add",
    "subtract": "sub",
    "multiply": "mul",
    "true_divide": "div",
    "divide": "div",
    "power": "pow",
    "maximum": "maximum",
    "minimum": "minimum",
    "negative": "neg",
    "absolute": "abs",
    "exp": "exp",
    "log": "log",
    "sqrt": "sqrt",
    "tanh": "tanh",
    "sin": "sin",
    "cos": "cos",
    "floor": "floor",
    "ceil": "ceil",
    "equal": "eq",
    "not_equal": "ne",
    "less": "lt",
    "less_equal": "le",
    "greater": "gt",
    "greater_equal": "ge",
    "logical_and": "logical_and",
    "logical_or": "logical_or",
    "logical_not": "logical_not",
    "isnan": "isnan",
    "matmul": "matmul",
}


class Tracer:
    """A traced array: shape and dtype are static; operators record ops in its trace."""

    __array_priority__ = 1000  # NumPy defers ``ndarray + tracer`` to ``Tracer.__radd__``
    __hash__ = None  # type: ignore[assignment]  # == is elementwise, as on arrays

    def __init__(self, trace: Trace, value: Value) -> None:
        self.trace = trace
        self.value = value

    # -- static facts ------------------------------------------------------------------------
    @property
    def type(self) -> TensorType:
        return self.value.tensor_type

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else -1 for d in self.type.shape)

    @property
    def dtype(self) -> DType:
        return self.type.scalar_dtype

    @property
    def ndim(self) -> int:
        return self.type.rank

    @property
    def size(self) -> int:
        return self.type.size

    def __len__(self) -> int:
        if not self.shape:
            raise TraceError(f"len() of a 0-d traced value at {user_location()}")
        return self.shape[0]

    def __repr__(self) -> str:
        return f"Tracer({self.type})"

    # -- concrete-value escapes are errors ---------------------------------------------------
    def _concrete(self, what: str) -> TraceError:
        return TraceError(
            f"{what} on a traced value at {user_location()}: the value is not known while tracing. "
            "Python control flow cannot depend on traced arrays; use kiln.ops.where for "
            "elementwise choices, or pass the value as a static (non-array) argument"
        )

    def __bool__(self) -> bool:
        raise self._concrete("bool() (an `if`, `while`, `and`/`or` or `assert`)")

    def __int__(self) -> int:
        raise self._concrete("int()")

    def __float__(self) -> float:
        raise self._concrete("float()")

    def __index__(self) -> int:
        raise self._concrete("use as an index")

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise self._concrete("conversion to a NumPy array (a NumPy function that is not a ufunc?)")

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        if method != "__call__" or kwargs or ufunc.__name__ not in _UFUNCS:
            raise TraceError(
                f"NumPy {ufunc.__name__}.{method} on a traced value at {user_location()} has no "
                "kiln equivalent; use kiln.ops"
            )
        from . import numpy_api

        return numpy_api.apply(_UFUNCS[ufunc.__name__], *inputs)

    def __iter__(self) -> Iterator[Tracer]:
        for i in range(len(self)):
            yield self[i]

    # -- operators ---------------------------------------------------------------------------
    def __add__(self, o: Any) -> Tracer:
        from .numpy_api import apply

        return apply("add", self, o)

    def __radd__(self, o: Any) -> Tracer:
        from .numpy_api import apply

        return apply("add", o, self)

    def __sub__(self, o: Any) -> Tracer:
        from .numpy_api import apply

        return apply("sub", self, o)

    def __rsub__(self, o: Any) -> Tracer:
        from .numpy_api import apply

        return apply("sub", o, self)

    def __mul__(self, o: Any) -> Tracer:
        from .numpy_api import apply

        return apply("mul", self, o)

    def __rmul__(self, o: Any) -> Tracer:
        from .numpy_api import apply

        return apply("mul", o, self)

    def __truediv__(self, o: Any) -> Tracer:
        from .numpy_api import divide

        return divide(self, o)

    def __rtruediv__(self, o: Any) -> Tracer:
        from .numpy_api import divide

        return divide(o, self)

    def __pow__(self, o: Any) -> Tracer:
        from .numpy_api import apply

        return apply("pow", self, o)

    def __rpow__(self, o: Any) -> Tracer:
        from .numpy_api import apply

        return apply("pow", o, self)

    def __matmul__(self, o: Any) -> Tracer:
        from .numpy_api import matmul

        return matmul(self, o)

    def __rmatmul__(self, o: Any) -> Tracer:
        from .numpy_api import matmul

        return matmul(o, self)

    def __neg__(self) -> Tracer:
        return self.trace.emit("neg", self)

    def __pos__(self) -> Tracer:
        return self

    def __abs__(self) -> Tracer:
        return self.trace.emit("abs", self)

    def __invert__(self) -> Tracer:
        if not self.dtype.is_bool:
            raise TraceError(f"~ on {self.type} at {user_location()}: only bools are supported")
        return self.trace.emit("logical_not", self)

    def __and__(self, o: Any) -> Tracer:
        from .numpy_api import apply

        return apply("logical_and", self, o)

    __rand__ = __and__

    def __or__(self, o: Any) -> Tracer:
        from .numpy_api import apply

        return apply("logical_or", self, o)

    __ror__ = __or__

    def __xor__(self, o: Any) -> Tracer:
        from .numpy_api import apply

        return apply("logical_xor", self, o)

    __rxor__ = __xor__

    def __lt__(self, o: Any) -> Tracer:
        from .numpy_api import apply

        return apply("lt", self, o)

    def __le__(self, o: Any) -> Tracer:
        from .numpy_api import apply

        return apply("le", self, o)

    def __gt__(self, o: Any) -> Tracer:
        from .numpy_api import apply

        return apply("gt", self, o)

    def __ge__(self, o: Any) -> Tracer:
        from .numpy_api import apply

        return apply("ge", self, o)

    def __eq__(self, o: Any) -> Tracer:  # type: ignore[override]
        from .numpy_api import apply

        return apply("eq", self, o)

    def __ne__(self, o: Any) -> Tracer:  # type: ignore[override]
        from .numpy_api import apply

        return apply("ne", self, o)

    def __getitem__(self, idx: Any) -> Tracer:
        from .numpy_api import getitem

        return getitem(self, idx)

    # -- NumPy-style methods -----------------------------------------------------------------
    def astype(self, dtype: Any) -> Tracer:
        from .numpy_api import astype

        return astype(self, dtype)

    def reshape(self, *shape: Any) -> Tracer:
        from .numpy_api import reshape

        return reshape(self, shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape)

    def transpose(self, *axes: Any) -> Tracer:
        from .numpy_api import transpose

        return transpose(self, (axes[0] if len(axes) == 1 and not isinstance(axes[0], int) else axes) or None)

    @property
    def T(self) -> Tracer:  # noqa: N802 - NumPy's name
        from .numpy_api import transpose

        return transpose(self)

    def sum(self, axis: Any = None, keepdims: bool = False) -> Tracer:
        from .numpy_api import sum as _sum

        return _sum(self, axis, keepdims=keepdims)

    def mean(self, axis: Any = None, keepdims: bool = False) -> Tracer:
        from .numpy_api import mean

        return mean(self, axis, keepdims=keepdims)

    def max(self, axis: Any = None, keepdims: bool = False) -> Tracer:
        from .numpy_api import max as _max

        return _max(self, axis, keepdims=keepdims)

    def min(self, axis: Any = None, keepdims: bool = False) -> Tracer:
        from .numpy_api import min as _min

        return _min(self, axis, keepdims=keepdims)

    def argmax(self, axis: int | None = None) -> Tracer:
        from .numpy_api import argmax

        return argmax(self, axis)
