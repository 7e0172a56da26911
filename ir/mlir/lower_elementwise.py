"""Elementwise ops as scalar code in a ``linalg.generic`` (operands broadcast by indexing maps).

``SCALAR`` maps each elementwise op to a function writing its scalar arith/math code; the same
table lowers one op (one generic) and a fused elementwise group (one generic holding the chain,
see lower_kiln.py). f16/bf16 values are computed in f32 and rounded after every op, as the
reference does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from ..core import Attrs, Node
from ..dtypes import DType, boolean, i64
from .emit import Emitter, Operand, Region, Rule, Scalar, elem_type

#: (region, attrs, operands, result dtype) -> result. Operands are in their compute types.
ScalarFn = Callable[[Region, Attrs, Sequence[Scalar], DType], Scalar]


def _t(s: Scalar) -> str:
    return s.mlir


def _float_or_int(fop: str, sop: str, uop: str | None = None) -> ScalarFn:
    """An arith op chosen by dtype: float, signed int (and bool), unsigned int."""

    def f(r: Region, a: Attrs, xs: Sequence[Scalar], dt: DType) -> Scalar:
        x, y = xs
        d = x.dtype
        name = fop if d.is_float else (uop or sop) if d.kind == "u" else sop
        return r.op(f"{name} {x.name}, {y.name} : {_t(x)}", dt)

    return f


def _math(name: str) -> ScalarFn:
    return lambda r, a, xs, dt: r.op(f"math.{name} {xs[0].name} : {_t(xs[0])}", dt)


def _neg(r: Region, a: Attrs, xs: Sequence[Scalar], dt: DType) -> Scalar:
    (x,) = xs
    if dt.is_float:
        return r.op(f"arith.negf {x.name} : {_t(x)}", dt)
    zero = r.const(0, dt)
    return r.op(f"arith.subi {zero.name}, {x.name} : {_t(x)}", dt)


def _abs(r: Region, a: Attrs, xs: Sequence[Scalar], dt: DType) -> Scalar:
    (x,) = xs
    if dt.is_float:
        return r.op(f"math.absf {x.name} : {_t(x)}", dt)
    if dt.kind == "u" or dt.is_bool:
        return x
    return r.op(f"math.absi {x.name} : {_t(x)}", dt)


def _recip(x: Scalar, r: Region, dt: DType) -> Scalar:
    one = r.const(1.0, dt)
    return r.op(f"arith.divf {one.name}, {x.name} : {_t(x)}", dt)


def _sigmoid_of(r: Region, x: Scalar, dt: DType) -> Scalar:
    n = r.op(f"arith.negf {x.name} : {_t(x)}", dt)
    e = r.op(f"math.exp {n.name} : {_t(x)}", dt)
    one = r.const(1.0, dt)
    d = r.op(f"arith.addf {one.name}, {e.name} : {_t(x)}", dt)
    return r.op(f"arith.divf {one.name}, {d.name} : {_t(x)}", dt)


def _relu(r: Region, a: Attrs, xs: Sequence[Scalar], dt: DType) -> Scalar:
    (x,) = xs
    zero = r.const(0, dt)
    op = "arith.maximumf" if dt.is_float else "arith.maxui" if dt.kind == "u" else "arith.maxsi"
    return r.op(f"{op} {x.name}, {zero.name} : {_t(x)}", dt)


def _silu(r: Region, a: Attrs, xs: Sequence[Scalar], dt: DType) -> Scalar:
    s = _sigmoid_of(r, xs[0], dt)
    return r.op(f"arith.mulf {xs[0].name}, {s.name} : {_t(s)}", dt)


def _gelu(r: Region, a: Attrs, xs: Sequence[Scalar], dt: DType) -> Scalar:
    (x,) = xs
    t = _t(x)

    def c(v: float) -> str:
        return r.const(v, dt).name

    if getattr(a, "approximate", "none") == "tanh":
        x3 = r.op(f"arith.mulf {x.name}, {x.name} : {t}", dt)
        x3 = r.op(f"arith.mulf {x3.name}, {x.name} : {t}", dt)
        k = r.op(f"arith.mulf {x3.name}, {c(0.044715)} : {t}", dt)
        inner = r.op(f"arith.addf {x.name}, {k.name} : {t}", dt)
        inner = r.op(f"arith.mulf {inner.name}, {c(math.sqrt(2.0 / math.pi))} : {t}", dt)
        phi = r.op(f"math.tanh {inner.name} : {t}", dt)
    else:
        z = r.op(f"arith.mulf {x.name}, {c(1.0 / math.sqrt(2.0))} : {t}", dt)
        phi = r.op(f"math.erf {z.name} : {t}", dt)
    one = r.op(f"arith.addf {phi.name}, {c(1.0)} : {t}", dt)
    h = r.op(f"arith.mulf {x.name}, {c(0.5)} : {t}", dt)
    return r.op(f"arith.mulf {h.name}, {one.name} : {t}", dt)


def _isnan(r: Region, a: Attrs, xs: Sequence[Scalar], dt: DType) -> Scalar:
    return r.op(f"arith.cmpf uno, {xs[0].name}, {xs[0].name} : {_t(xs[0])}", boolean)


def _not(r: Region, a: Attrs, xs: Sequence[Scalar], dt: DType) -> Scalar:
    t = r.const(True, boolean)
    return r.op(f"arith.xori {xs[0].name}, {t.name} : i1", boolean)


def widen(r: Region, x: Scalar, to: DType) -> Scalar:
    """An integer (or bool) widened to ``to`` by its signedness."""
    if x.dtype == to or elem_type(x.dtype) == elem_type(to):
        return Scalar(x.name, to)
    ext = "arith.extsi" if x.dtype.kind == "i" else "arith.extui"
    return r.op(f"{ext} {x.name} : {_t(x)} to {elem_type(to)}", to)


def narrow(r: Region, x: Scalar, to: DType) -> Scalar:
    if elem_type(x.dtype) == elem_type(to):
        return Scalar(x.name, to)
    return r.op(f"arith.trunci {x.name} : {_t(x)} to {elem_type(to)}", to)


def _div(r: Region, a: Attrs, xs: Sequence[Scalar], dt: DType) -> Scalar:
    x, y = xs
    if dt.is_float:
        return r.op(f"arith.divf {x.name}, {y.name} : {_t(x)}", dt)
    # Integers: truncate toward zero, x / 0 = 0. Signed division runs in i64 so that
    # MIN / -1 wraps (as the reference) instead of being undefined.
    wide = i64 if dt.kind == "i" and dt.bits < 64 else dt
    xw, yw = widen(r, x, wide), widen(r, y, wide)
    zero, one = r.const(0, wide), r.const(1, wide)
    is0 = r.op(f"arith.cmpi eq, {yw.name}, {zero.name} : {_t(yw)}", boolean)
    safe = r.op(f"arith.select {is0.name}, {one.name}, {yw.name} : {_t(yw)}", wide)
    q = r.op(f"arith.{'divsi' if dt.kind == 'i' else 'divui'} {xw.name}, {safe.name} : {_t(yw)}", wide)
    q = r.op(f"arith.select {is0.name}, {zero.name}, {q.name} : {_t(yw)}", wide)
    return narrow(r, q, dt)


def _pow(r: Region, a: Attrs, xs: Sequence[Scalar], dt: DType) -> Scalar:
    x, y = xs
    if dt.is_float:
        return r.op(f"math.powf {x.name}, {y.name} : {_t(x)}", dt)
    return _int_pow(r, x, y, dt)


def _int_pow(r: Region, x: Scalar, y: Scalar, dt: DType) -> Scalar:
    """x ** y by squaring over the exponent's bits, unrolled (math.ipowi has no vector lowering
    to LLVM here). Products wrap to the width, as the reference's int64 result wrapped. Negative
    exponents give 0, except 1 ** y = 1 and (-1) ** y = +-1 (as C)."""
    t = _t(x)
    one, zero = r.const(1, dt), r.const(0, dt)
    res, base = one, x
    for i in range(dt.bits - (1 if dt.kind == "i" else 0)):
        bit = r.op(f"arith.shrui {y.name}, {r.const(i, dt).name} : {t}", dt)
        bit = r.op(f"arith.andi {bit.name}, {one.name} : {t}", dt)
        on = r.op(f"arith.cmpi ne, {bit.name}, {zero.name} : {t}", boolean)
        prod = r.op(f"arith.muli {res.name}, {base.name} : {t}", dt)
        res = r.op(f"arith.select {on.name}, {prod.name}, {res.name} : {t}", dt)
        base = r.op(f"arith.muli {base.name}, {base.name} : {t}", dt)
    if dt.kind != "i":
        return res
    minus1 = r.const(-1, dt)
    is1 = r.op(f"arith.cmpi eq, {x.name}, {one.name} : {t}", boolean)
    ism1 = r.op(f"arith.cmpi eq, {x.name}, {minus1.name} : {t}", boolean)
    odd = r.op(f"arith.andi {y.name}, {one.name} : {t}", dt)
    even = r.op(f"arith.cmpi eq, {odd.name}, {zero.name} : {t}", boolean)
    m1 = r.op(f"arith.select {even.name}, {one.name}, {minus1.name} : {t}", dt)
    neg_val = r.op(f"arith.select {ism1.name}, {m1.name}, {zero.name} : {t}", dt)
    neg_val = r.op(f"arith.select {is1.name}, {one.name}, {neg_val.name} : {t}", dt)
    neg = r.op(f"arith.cmpi slt, {y.name}, {zero.name} : {t}", boolean)
    return r.op(f"arith.select {neg.name}, {neg_val.name}, {res.name} : {t}", dt)


_CMP = {  # op -> (float predicate, signed predicate, unsigned predicate)
    "eq": ("oeq", "eq", "eq"),
    "ne": ("une", "ne", "ne"),
    "lt": ("olt", "slt", "ult"),
    "le": ("ole", "sle", "ule"),
    "gt": ("ogt", "sgt", "ugt"),
    "ge": ("oge", "sge", "uge"),
}


def _cmp(op: str) -> ScalarFn:
    fp, sp, up = _CMP[op]

    def f(r: Region, a: Attrs, xs: Sequence[Scalar], dt: DType) -> Scalar:
        x, y = xs
        if x.dtype.is_float:
            return r.op(f"arith.cmpf {fp}, {x.name}, {y.name} : {_t(x)}", boolean)
        pred = up if x.dtype.kind in ("u", "bool") else sp
        return r.op(f"arith.cmpi {pred}, {x.name}, {y.name} : {_t(x)}", boolean)

    return f


def _where(r: Region, a: Attrs, xs: Sequence[Scalar], dt: DType) -> Scalar:
    c, x, y = xs
    return r.op(f"arith.select {c.name}, {x.name}, {y.name} : {_t(x)}", dt)


def _cast(r: Region, a: Attrs, xs: Sequence[Scalar], dt: DType) -> Scalar:
    return cast(r, xs[0], dt)


def cast(r: Region, x: Scalar, to: DType) -> Scalar:
    """kiln's conversion rules: to bool is ``x != 0``; float -> int truncates toward zero and
    wraps (NaN and inf give 0); int -> int wraps or extends by the source's signedness."""
    src = x.dtype
    if to.is_bool:
        if src.is_bool:
            return x
        zero = r.const(0, src)
        if src.is_float:
            return r.op(f"arith.cmpf une, {x.name}, {zero.name} : {_t(x)}", boolean)
        return r.op(f"arith.cmpi ne, {x.name}, {zero.name} : {_t(x)}", boolean)
    if to.is_float:
        ct = elem_type(to if to.bits != 16 else DType("f", 32))
        if src.is_float:
            if _t(x) == ct:
                y = x
            elif src.bits > (32 if to.bits == 16 else to.bits):
                y = r.op(f"arith.truncf {x.name} : {_t(x)} to {ct}", to)
            else:
                y = r.op(f"arith.extf {x.name} : {_t(x)} to {ct}", to)
        else:
            conv = "arith.uitofp" if src.kind in ("u", "bool") else "arith.sitofp"
            y = r.op(f"{conv} {x.name} : {_t(x)} to {ct}", to)
        return r.round(Scalar(y.name, to), to)
    if src.is_float:
        # Truncate in f64, wrap modulo 2^64 (fmod is exact), then keep the low bits.
        xd = x if _t(x) == "f64" else r.op(f"arith.extf {x.name} : {_t(x)} to f64", DType("f", 64))
        f64 = DType("f", 64)
        t = r.op(f"math.trunc {xd.name} : f64", f64)
        ok = r.op(f"arith.cmpf one, {t.name}, {r.const(math.inf, f64).name} : f64", boolean)  # not nan/+inf
        ok2 = r.op(f"arith.cmpf one, {t.name}, {r.const(-math.inf, f64).name} : f64", boolean)
        ok = r.op(f"arith.andi {ok.name}, {ok2.name} : i1", boolean)
        m = r.op(f"arith.remf {t.name}, {r.const(2.0**64, f64).name} : f64", f64)
        m = r.op(f"arith.select {ok.name}, {m.name}, {r.const(0.0, f64).name} : f64", f64)
        big = r.op(f"arith.cmpf oge, {m.name}, {r.const(2.0**63, f64).name} : f64", boolean)
        lo = r.op(f"arith.subf {m.name}, {r.const(2.0**64, f64).name} : f64", f64)
        m = r.op(f"arith.select {big.name}, {lo.name}, {m.name} : f64", f64)
        neg = r.op(f"arith.cmpf olt, {m.name}, {r.const(-(2.0**63), f64).name} : f64", boolean)
        hi = r.op(f"arith.addf {m.name}, {r.const(2.0**64, f64).name} : f64", f64)
        m = r.op(f"arith.select {neg.name}, {hi.name}, {m.name} : f64", f64)
        v = r.op(f"arith.fptosi {m.name} : f64 to i64", i64)
        return narrow(r, v, to)
    if elem_type(src) == elem_type(to):
        return Scalar(x.name, to)
    src_bits = 1 if src.is_bool else src.bits
    if src_bits > to.bits:
        return narrow(r, x, to)
    return widen(r, x, to)


SCALAR: dict[str, ScalarFn] = {
    "neg": _neg,  # -x; integers: 0 - x (wraps)
    "abs": _abs,
    "exp": _math("exp"),
    "log": _math("log"),
    "sqrt": _math("sqrt"),
    "rsqrt": _math("rsqrt"),
    "reciprocal": lambda r, a, xs, dt: _recip(xs[0], r, dt),  # 1 / x
    "tanh": _math("tanh"),
    "erf": _math("erf"),
    "sin": _math("sin"),
    "cos": _math("cos"),
    "floor": _math("floor"),
    "ceil": _math("ceil"),
    "sigmoid": lambda r, a, xs, dt: _sigmoid_of(r, xs[0], dt),  # 1 / (1 + exp(-x))
    "relu": _relu,  # max(x, 0), NaN propagates
    "silu": _silu,  # x * sigmoid(x)
    "gelu": _gelu,  # x/2 (1 + erf(x/sqrt2)), or the tanh form
    "isnan": _isnan,  # x unordered with x
    "logical_not": _not,  # x xor true
    "add": _float_or_int("arith.addf", "arith.addi"),
    "sub": _float_or_int("arith.subf", "arith.subi"),
    "mul": _float_or_int("arith.mulf", "arith.muli"),
    "div": _div,
    "pow": _pow,
    "maximum": _float_or_int("arith.maximumf", "arith.maxsi", "arith.maxui"),  # NaN propagates
    "minimum": _float_or_int("arith.minimumf", "arith.minsi", "arith.minui"),
    "logical_and": _float_or_int("", "arith.andi"),
    "logical_or": _float_or_int("", "arith.ori"),
    "logical_xor": _float_or_int("", "arith.xori"),
    **{op: _cmp(op) for op in _CMP},
    "where": _where,
    "cast": _cast,
}


def scalar_chain(r: Region, node: Node, xs: Sequence[Scalar], dt: DType) -> Scalar:
    """One elementwise node's scalar code, its result rounded to its dtype."""
    return r.round(SCALAR[node.op](r, node.attrs, xs, dt), dt)


def _elementwise(
    em: Emitter, node: Node, ins: list[Operand], outs: list[tuple[tuple[int, ...], DType]]
) -> list[Operand]:
    ((shape, dt),) = outs
    return [em.map(ins, shape, dt, lambda r, xs: [scalar_chain(r, node, xs, dt)])]


RULES: dict[str, Rule] = {op: _elementwise for op in SCALAR}
