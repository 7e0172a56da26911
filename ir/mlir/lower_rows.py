"""Row ops: argmax/argmin, cumsum, softmax, log_softmax, layer_norm and rms_norm.

The normalisations are composed of the reductions of lower_reduce.py and elementwise generics:
a max-subtracted exp and its sum for softmax, sums divided by the count for the means. f16/bf16
operands are read in f32, every intermediate stays in f32 and the result is rounded once, as the
reference computes them (ir/ops/reduce.py).

``argmax``/``argmin`` are one reduction generic with two outputs (value, index) whose combiner is
order independent: NaN beats every number (as ``np.argmax``/``np.argmin``), ties go to the lower
index (the higher one with ``select_last``).

``cumsum``: axes up to TRIANGLE_MAX (64) are one generic over (..., i, ..., j) reducing j with
j <= i masked (quadratic in the axis, but one parallel, copy-free kernel); longer axes an
``scf.for`` over the axis (moved first so that slices are contiguous) carrying the output and the
running sum of one slice, updated in place by one generic per step: linear. ``exclusive`` is the
inclusive sum minus the element, as the reference computes it (so floats round the same way).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..core import Node
from ..dtypes import DType, boolean, i64
from ..ops.reduce import ArgReduceAttrs, AxisAttrs, CumsumAttrs, NormAttrs
from .emit import (
    BodyFn,
    Emitter,
    Operand,
    Region,
    Rule,
    Scalar,
    amap,
    compute_dtype,
    elem_type,
    identity_map,
    reshape,
    tensor_type,
    transpose,
)
from .lower_reduce import reduce

Outs = list[tuple[tuple[int, ...], DType]]


def binary(op: str, t: str = "f32") -> BodyFn:
    """A generic body applying the arith op ``op`` (``addf``, ``subf``, ...) of type ``t``."""

    def body(r: Region, xs: list[Scalar]) -> list[Scalar]:
        return [r.op(f"arith.{op} {xs[0].name}, {xs[1].name} : {t}", xs[0].dtype)]

    return body


def unary(op: str, t: str = "f32") -> BodyFn:
    """A generic body applying ``op`` (``math.exp``, ...) of type ``t``."""
    return lambda r, xs: [r.op(f"{op} {xs[0].name} : {t}", xs[0].dtype)]


def kept(shape: Sequence[int], axes: Sequence[int]) -> tuple[int, ...]:
    """``shape`` with ``axes`` kept as 1 (the keepdims shape of a reduction)."""
    return tuple(1 if i in axes else d for i, d in enumerate(shape))


def reduce_keep(em: Emitter, x: Operand, axes: Sequence[int], kind: str, acc: DType) -> Operand:
    """``x`` reduced over ``axes`` with the axes kept as 1 (so that it broadcasts back over x)."""
    return reshape(em, reduce(em, x, axes, kind, acc), kept(x.shape, axes))


def softmax(em: Emitter, x: Operand, axis: int, log: bool = False) -> Operand:
    """softmax (or log_softmax) of ``x`` along ``axis`` in its compute type (f32 for f16/bf16):
    exp(x - max) / sum, or (x - max) - log(sum)."""
    acc = compute_dtype(x.dtype)
    t = elem_type(acc)
    m = reduce_keep(em, x, [axis], "max", acc)
    s = em.map([x, m], x.shape, acc, binary("subf", t))
    e = em.map([s], x.shape, acc, unary("math.exp", t))
    z = reduce_keep(em, e, [axis], "sum", acc)
    if not log:
        return em.map([e, z], x.shape, acc, binary("divf", t))
    lz = em.map([z], z.shape, acc, unary("math.log", t))
    return em.map([s, lz], x.shape, acc, binary("subf", t))


def to_dtype(em: Emitter, x: Operand, dt: DType) -> Operand:
    """A compute-type result rounded to ``dt`` (one generic; nothing when they agree)."""
    if x.dtype == dt:
        return x
    return em.map([x], x.shape, dt, lambda r, v: [v[0]])


def _softmax_rule(log: bool) -> Rule:
    def rule(em: Emitter, node: Node, ins: list[Operand], outs: Outs) -> list[Operand]:
        assert isinstance(node.attrs, AxisAttrs)
        ((_, dt),) = outs
        return [to_dtype(em, softmax(em, ins[0], node.attrs.axis, log), dt)]

    return rule


def _norm(rms: bool) -> Rule:
    """layer_norm: (x - mean) / sqrt(var + eps) * w + b; rms_norm: x / sqrt(mean(x^2) + eps) * w,
    over the axes axis..rank-1, in the reference's order of operations."""

    def rule(em: Emitter, node: Node, ins: list[Operand], outs: Outs) -> list[Operand]:
        a = node.attrs
        assert isinstance(a, NormAttrs)
        ((shape, dt),) = outs
        x, *params = ins
        acc = compute_dtype(dt)
        t = elem_type(acc)
        axes = list(range(a.axis, len(x.shape)))
        count = math.prod(x.shape[i] for i in axes)
        n = em.scalar(count, acc)
        eps = em.scalar(a.eps, acc)

        def mean_of(v: Operand) -> Operand:
            s = reduce_keep(em, v, axes, "sum", acc)
            return em.map([s], s.shape, acc, lambda r, u: [r.op(f"arith.divf {u[0].name}, {n} : {t}", acc)])

        if rms:
            centred = x
        else:
            mean = mean_of(x)
            centred = em.map(
                [x, mean],
                x.shape,
                acc,
                lambda r, u: [r.op(f"arith.subf {u[0].name}, {u[1].name} : {t}", acc)],
            )
        sq = em.map(
            [centred], x.shape, acc, lambda r, u: [r.op(f"arith.mulf {u[0].name}, {u[0].name} : {t}", acc)]
        )
        var = mean_of(sq)

        def den(r: Region, u: list[Scalar]) -> list[Scalar]:
            v = r.op(f"arith.addf {u[0].name}, {eps} : {t}", acc)
            return [r.op(f"math.sqrt {v.name} : {t}", acc)]

        sd = em.map([var], var.shape, acc, den)

        def out(r: Region, u: list[Scalar]) -> list[Scalar]:
            y = r.op(f"arith.divf {u[0].name}, {u[1].name} : {t}", acc)
            y = r.op(f"arith.mulf {y.name}, {u[2].name} : {t}", acc)
            if not rms:
                y = r.op(f"arith.addf {y.name}, {u[3].name} : {t}", acc)
            return [y]

        return [em.map([centred, sd, *params], shape, dt, out)]

    return rule


# -- argmax / argmin -------------------------------------------------------------------------------
def _arg_rule(largest: bool) -> Rule:
    def rule(em: Emitter, node: Node, ins: list[Operand], outs: Outs) -> list[Operand]:
        a = node.attrs
        assert isinstance(a, ArgReduceAttrs)
        ((shape, _),) = outs
        (x,) = ins
        rank, ax = len(x.shape), a.axis
        dt = x.dtype
        acc = compute_dtype(dt)
        red = tuple(d for i, d in enumerate(x.shape) if i != ax)
        if dt.is_bool:
            init: float | int | bool = not largest
        elif dt.is_float:
            init = -math.inf if largest else math.inf
        else:
            init = dt.min_value if largest else dt.max_value
        vals = em.splat(init, red, acc)
        idx = em.splat(-1 if a.select_last else 2**63 - 1, red, i64)
        out_map = amap(rank, [f"d{i}" for i in range(rank) if i != ax])
        t = elem_type(acc)

        def body(r: Region, s: list[Scalar]) -> list[Scalar]:
            x_, v, i = s
            j = r.op(f"arith.index_cast {r.index(ax)} : index to i64", i64)
            if dt.is_float:
                pred = "ogt" if largest else "olt"
                xn = r.op(f"arith.cmpf uno, {x_.name}, {x_.name} : {t}", boolean)
                vn = r.op(f"arith.cmpf uno, {v.name}, {v.name} : {t}", boolean)
                true = r.const(True, boolean)
                vok = r.op(f"arith.xori {vn.name}, {true.name} : i1", boolean)
                nan_wins = r.op(f"arith.andi {xn.name}, {vok.name} : i1", boolean)
                gt = r.op(f"arith.cmpf {pred}, {x_.name}, {v.name} : {t}", boolean)
                better = r.op(f"arith.ori {nan_wins.name}, {gt.name} : i1", boolean)
                both_nan = r.op(f"arith.andi {xn.name}, {vn.name} : i1", boolean)
                eq = r.op(f"arith.cmpf oeq, {x_.name}, {v.name} : {t}", boolean)
                tie = r.op(f"arith.ori {both_nan.name}, {eq.name} : i1", boolean)
            else:
                u = dt.kind in ("u", "bool")
                pred = ("ugt" if u else "sgt") if largest else ("ult" if u else "slt")
                better = r.op(f"arith.cmpi {pred}, {x_.name}, {v.name} : {t}", boolean)
                tie = r.op(f"arith.cmpi eq, {x_.name}, {v.name} : {t}", boolean)
            order = r.op(f"arith.cmpi {'sgt' if a.select_last else 'slt'}, {j.name}, {i.name} : i64", boolean)
            tie = r.op(f"arith.andi {tie.name}, {order.name} : i1", boolean)
            take = r.op(f"arith.ori {better.name}, {tie.name} : i1", boolean)
            nv = r.op(f"arith.select {take.name}, {x_.name}, {v.name} : {t}", acc)
            ni = r.op(f"arith.select {take.name}, {j.name}, {i.name} : i64", i64)
            return [nv, ni]

        its = ["reduction" if i == ax else "parallel" for i in range(rank)]
        _, index = em.generic([(x, identity_map(rank))], [(vals, out_map), (idx, out_map)], its, body)
        return [reshape(em, index, shape)]

    return rule


# -- cumsum ------------------------------------------------------------------------------------------
#: Axes up to this length are summed by one triangular generic (quadratic work, but parallel and
#: copy-free); longer ones by a loop over the axis.
TRIANGLE_MAX = 64


def _triangle(em: Emitter, x: Operand, ax: int, reverse: bool, acc: DType) -> Operand:
    """y[.., i, ..] = sum over j <= i (j >= i reversed) of x[.., j, ..]: a generic over x's dims
    and a reduction dim j, masking the other half."""
    rank = len(x.shape)
    t = elem_type(acc)
    j = f"d{rank}"
    x_map = amap(rank + 1, [j if d == ax else f"d{d}" for d in range(rank)])
    init = em.splat(0, x.shape, acc)
    zero = em.scalar(0, acc)

    def body(r: Region, v: list[Scalar]) -> list[Scalar]:
        i, jj = r.index(ax), r.index(rank)
        keep = r.op(f"arith.cmpi {'uge' if reverse else 'ule'}, {jj}, {i} : index", acc)
        val = r.op(f"arith.select {keep.name}, {v[0].name}, {zero} : {t}", acc)
        add = "arith.addf" if acc.is_float else "arith.addi"
        return [r.op(f"{add} {v[1].name}, {val.name} : {t}", acc)]

    (y,) = em.generic(
        [(x, x_map)],
        [(init, amap(rank + 1, [f"d{d}" for d in range(rank)]))],
        ["parallel"] * rank + ["reduction"],
        body,
    )
    return y


def _scan(em: Emitter, x: Operand, ax: int, reverse: bool, acc: DType) -> Operand:
    """The running sum as an ``scf.for`` over the axis, moved first so that each step's slice is
    contiguous; one generic per step updates the running sum and writes the step's slice of the
    output, both in place after bufferization (destination-passing style)."""
    perm = [ax, *(d for d in range(len(x.shape)) if d != ax)]
    xt = transpose(em, x, perm)
    n, *rest = xt.shape
    sl = tuple(rest)
    t = elem_type(acc)
    out0 = em.empty(xt.shape, acc)
    acc0 = em.splat(0, sl, acc)
    c0, c1, cn, last = (em.fresh("c") for _ in range(4))
    for name, value in ((c0, 0), (c1, 1), (cn, n), (last, n - 1)):
        em.line(f"{name} = arith.constant {value} : index")
    res, i, o, s = em.fresh("scan"), em.fresh("i"), em.fresh("o"), em.fresh("s")
    out_t, acc_t = tensor_type(xt.shape, acc), tensor_type(sl, acc)
    em.lines.append(
        f"{em.indent}{res}:2 = scf.for {i} = {c0} to {cn} step {c1} iter_args({o} = {out0.name}, "
        f"{s} = {acc0.name}) -> ({out_t}, {acc_t}) {{"
    )
    p = i
    if reverse:
        p = em.fresh("p")
        em.line(f"{p} = arith.subi {last}, {i} : index")
    offs = ", ".join([p] + ["0"] * len(sl))
    sizes = ", ".join(["1", *map(str, sl)])
    strides = ", ".join("1" for _ in xt.shape)
    at = f"[{offs}] [{sizes}] [{strides}]"
    xs = em.op(f"tensor.extract_slice {xt.name}{at} : {xt.type} to {tensor_type(sl, xt.dtype)}", sl, xt.dtype)
    dst = em.op(f"tensor.extract_slice {o}{at} : {out_t} to {acc_t}", sl, acc)
    ident = identity_map(len(sl))

    def step(r: Region, v: list[Scalar]) -> list[Scalar]:
        total = r.op(f"arith.{'addf' if acc.is_float else 'addi'} {v[1].name}, {v[0].name} : {t}", acc)
        return [total, total]

    total, ys = em.generic(
        [(xs, ident)], [(Operand(s, sl, acc), ident), (dst, ident)], ["parallel"] * len(sl), step
    )
    o2 = em.op(f"tensor.insert_slice {ys.name} into {o}{at} : {acc_t} into {out_t}", xt.shape, acc)
    em.line(f"scf.yield {o2.name}, {total.name} : {out_t}, {acc_t}")
    em.lines.append(f'{em.indent}}} loc("{em.loc}")')
    back = [perm.index(d) for d in range(len(perm))]
    return transpose(em, Operand(f"{res}#0", xt.shape, acc), back)


def _cumsum(em: Emitter, node: Node, ins: list[Operand], outs: Outs) -> list[Operand]:
    """The inclusive sum in the compute type (f32 for f16/bf16), then ``exclusive`` as the
    inclusive sum minus the element and one rounding, as the reference computes it."""
    a = node.attrs
    assert isinstance(a, CumsumAttrs)
    ((shape, dt),) = outs
    (x,) = ins
    acc = compute_dtype(dt)
    if x.shape[a.axis] <= TRIANGLE_MAX:
        incl = _triangle(em, x, a.axis, a.reverse, acc)
    else:
        incl = _scan(em, x, a.axis, a.reverse, acc)
    if not a.exclusive:
        return [to_dtype(em, incl, dt)]
    sub = "arith.subf" if acc.is_float else "arith.subi"
    t = elem_type(acc)
    return [em.map([incl, x], shape, dt, lambda r, v: [r.op(f"{sub} {v[0].name}, {v[1].name} : {t}", acc)])]


RULES: dict[str, Rule] = {
    "argmax": _arg_rule(True),
    "argmin": _arg_rule(False),
    "cumsum": _cumsum,
    "softmax": _softmax_rule(False),
    "log_softmax": _softmax_rule(True),
    "layer_norm": _norm(False),
    "rms_norm": _norm(True),
}

__all__ = ["RULES", "binary", "kept", "reduce_keep", "softmax", "to_dtype", "unary"]
