"""Elementwise ops: unary math, binary arithmetic with NumPy broadcasting, comparisons, logic,
``where`` and ``cast``.

Primitive: neg, abs, exp, log, sqrt, tanh, erf, sin, cos, floor, ceil, isnan, logical_not, add,
sub, mul, div, pow, maximum, minimum, logical_and/or/xor, eq, ne, lt, le, gt, ge, where, cast.
Composite (defined by the primitives in their docstrings): rsqrt, reciprocal, sigmoid, relu, gelu,
silu.

Binary ops take operands of one dtype (frontends insert casts); integer results wrap to their width.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.special

from ..core import Attrs, NoAttrs
from ..dtypes import DType, boolean
from ..errors import TypeInferenceError, VerifyError
from ..registry import OpDef
from ..types import TensorType, Type
from ._util import broadcast_shapes, same_dtype, tensor_arg, tensor_args

Domain = str  # "float", "signed" (float or signed int), "number" (no bool), "bool", "any"


def _check_domain(op: str, dt: DType, domain: Domain) -> None:
    ok = {
        "float": dt.is_float,
        "signed": dt.is_float or dt.kind == "i",
        "number": not dt.is_bool,
        "bool": dt.is_bool,
        "any": True,
    }[domain]
    if not ok:
        need = {"float": "a float", "signed": "a float or signed int", "number": "a number"}.get(
            domain, "a bool"
        )
        raise TypeInferenceError(f"'{op}' needs {need} dtype, got {dt}")


def unary(
    name: str,
    fn: Callable[[np.ndarray], np.ndarray],
    doc: str,
    domain: Domain = "float",
    out_dtype: DType | None = None,
    attrs: type[Attrs] = NoAttrs,
    composite: bool = False,
) -> OpDef:
    def infer(a: Attrs, ts: Sequence[Type]) -> list[Type]:
        t = tensor_arg(name, ts[0])
        _check_domain(name, t.scalar_dtype, domain)
        return [t.with_dtype(out_dtype) if out_dtype else t]

    def ref(a: Attrs, args: Sequence[np.ndarray], out: Sequence[Type]) -> list[np.ndarray]:
        return [fn(args[0])]

    return OpDef(name, ("x",), infer, ref, attrs=attrs, composite=composite, elementwise=True, doc=doc)


def binary(
    name: str,
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    doc: str,
    domain: Domain = "number",
    out_dtype: DType | None = None,
    commutative: bool = False,
) -> OpDef:
    def infer(a: Attrs, ts: Sequence[Type]) -> list[Type]:
        x, y = tensor_args(name, ts)
        dt = same_dtype(name, [x, y])
        _check_domain(name, dt, domain)
        return [TensorType(out_dtype or dt, broadcast_shapes(name, x.shape, y.shape))]

    def ref(a: Attrs, args: Sequence[np.ndarray], out: Sequence[Type]) -> list[np.ndarray]:
        return [fn(args[0], args[1])]

    return OpDef(name, ("lhs", "rhs"), infer, ref, commutative=commutative, elementwise=True, doc=doc)


@dataclass(frozen=True)
class GeluAttrs(Attrs):
    """``approximate``: "none" (exact, with erf) or "tanh"."""

    approximate: str = "none"

    def verify(self) -> None:
        if self.approximate not in ("none", "tanh"):
            raise VerifyError(f"gelu approximate must be 'none' or 'tanh', got {self.approximate!r}")


def _gelu_ref(a: GeluAttrs, args: Sequence[np.ndarray], out: Sequence[Type]) -> list[np.ndarray]:
    x = args[0]
    if a.approximate == "tanh":
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * (x * x * x))  # x**3 is slow in NumPy
        return [0.5 * x * (1.0 + np.tanh(inner))]
    return [0.5 * x * (1.0 + scipy.special.erf(x / math.sqrt(2.0)))]


def _gelu_infer(a: GeluAttrs, ts: Sequence[Type]) -> list[Type]:
    t = tensor_arg("gelu", ts[0])
    _check_domain("gelu", t.scalar_dtype, "float")
    return [t]


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer division truncating toward zero (as C and ONNX); x / 0 is defined as 0."""
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        zero = b == 0
        safe = np.where(zero, 1, b)
        if a.dtype.kind == "u" and b.dtype.kind == "u":
            return np.where(zero, 0, a // safe)  # no sign; int64 would overflow for u64
        q = np.abs(a.astype(np.int64)) // np.abs(safe.astype(np.int64))
        q = np.where((a < 0) != (safe < 0), -q, q)
        return np.where(zero, 0, q)
    return np.divide(a, b)


def _pow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu":
        # Integer powers: negative exponents give 0 (1 for base 1, +-1 for base -1) as in C.
        b64 = b.astype(np.int64)
        r = np.power(a.astype(np.int64), np.maximum(b64, 0))
        neg = b64 < 0
        return np.where(neg, np.where(np.abs(a) == 1, np.where(b64 % 2 == 0, 1, a), 0), r)
    return np.power(a, b)


def _where_infer(a: Attrs, ts: Sequence[Type]) -> list[Type]:
    c, x, y = tensor_args("where", ts)
    if not c.scalar_dtype.is_bool:
        raise TypeInferenceError(f"'where' condition must be bool, got {c}")
    dt = same_dtype("where", [x, y])
    return [TensorType(dt, broadcast_shapes("where", c.shape, x.shape, y.shape))]


@dataclass(frozen=True)
class CastAttrs(Attrs):
    """``dtype``: the target scalar type."""

    dtype: DType

    def verify(self) -> None:
        self.dtype.verify()


def _cast_infer(a: CastAttrs, ts: Sequence[Type]) -> list[Type]:
    return [tensor_arg("cast", ts[0]).with_dtype(a.dtype)]


def _cast_ref(a: CastAttrs, args: Sequence[np.ndarray], out: Sequence[Type]) -> list[np.ndarray]:
    x = args[0]
    if a.dtype.is_bool:
        return [x != 0]
    if x.dtype == np.bool_:
        return [x.astype(np.int64) if a.dtype.is_int else x.astype(np.float32)]
    return [x]  # the interpreter converts to the result dtype (ints truncate and wrap)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(scipy.special.expit(x))


def elementwise_ops() -> list[OpDef]:
    f = "float"
    ops = [
        unary("neg", np.negative, "-x", "signed"),
        unary("abs", np.abs, "|x|", "number"),
        unary("exp", np.exp, "e^x", f),
        unary("log", np.log, "natural logarithm", f),
        unary("sqrt", np.sqrt, "square root", f),
        unary("rsqrt", lambda x: 1.0 / np.sqrt(x), "1 / sqrt(x) (composite)", f, composite=True),
        unary("reciprocal", lambda x: 1.0 / x, "1 / x (composite: div(1, x))", f, composite=True),
        unary("tanh", np.tanh, "hyperbolic tangent", f),
        unary("erf", lambda x: np.asarray(scipy.special.erf(x)), "Gauss error function", f),
        unary("sin", np.sin, "sine", f),
        unary("cos", np.cos, "cosine", f),
        unary("floor", np.floor, "round toward -inf", f),
        unary("ceil", np.ceil, "round toward +inf", f),
        unary("sigmoid", _sigmoid, "1 / (1 + exp(-x)) (composite)", f, composite=True),
        unary("relu", lambda x: np.maximum(x, 0), "max(x, 0) (composite)", "signed", composite=True),
        unary("silu", lambda x: x * _sigmoid(x), "x * sigmoid(x) (composite)", f, composite=True),
        unary("isnan", np.isnan, "x != x", f, out_dtype=boolean),
        unary("logical_not", np.logical_not, "not x", "bool"),
        OpDef(
            "gelu",
            ("x",),
            _gelu_infer,
            _gelu_ref,
            attrs=GeluAttrs,
            composite=True,
            elementwise=True,
            doc="x * Phi(x) (composite): exact with erf, or the tanh approximation",
        ),
        binary("add", np.add, "lhs + rhs", commutative=True),
        binary("sub", np.subtract, "lhs - rhs"),
        binary("mul", np.multiply, "lhs * rhs", commutative=True),
        binary("div", _int_div, "lhs / rhs (integers truncate toward zero; x / 0 = 0)"),
        binary("pow", _pow, "lhs ** rhs"),
        binary("maximum", np.maximum, "elementwise max (NaN propagates)", commutative=True),
        binary("minimum", np.minimum, "elementwise min (NaN propagates)", commutative=True),
        binary("logical_and", np.logical_and, "lhs and rhs", "bool", commutative=True),
        binary("logical_or", np.logical_or, "lhs or rhs", "bool", commutative=True),
        binary("logical_xor", np.logical_xor, "lhs xor rhs", "bool", commutative=True),
        binary("eq", np.equal, "lhs == rhs", "any", boolean, commutative=True),
        binary("ne", np.not_equal, "lhs != rhs", "any", boolean, commutative=True),
        binary("lt", np.less, "lhs < rhs", "number", boolean),
        binary("le", np.less_equal, "lhs <= rhs", "number", boolean),
        binary("gt", np.greater, "lhs > rhs", "number", boolean),
        binary("ge", np.greater_equal, "lhs >= rhs", "number", boolean),
        OpDef(
            "where",
            ("cond", "then", "else"),
            _where_infer,
            lambda a, args, out: [np.where(args[0], args[1], args[2])],
            elementwise=True,
            doc="cond ? then : else, broadcasting all three",
        ),
        OpDef(
            "cast",
            ("x",),
            _cast_infer,
            _cast_ref,
            attrs=CastAttrs,
            elementwise=True,
            doc="convert to dtype: float->int truncates toward zero and wraps; x->bool is x != 0",
        ),
    ]
    return ops
