"""Data movement and indexing: reshape / squeeze / unsqueeze (tensor.expand_shape /
collapse_shape), broadcast_to, transpose (linalg.transpose), slice and split
(tensor.extract_slice), concat (tensor.concat), gather and gather_nd (``linalg.generic`` +
``tensor.extract``), iota, triu / tril (``linalg.index`` compares), topk (an ``scf.for`` over the k
picks, each one reduction), and einsum (one ``linalg.generic`` whose indexing maps come from the
equation).

Data movement keeps values in their storage type (no f16/bf16 widening: a copy is exact). Gather
indices may be negative (``i + n``); indices outside ``[-n, n)`` (an error in the reference) are
clamped into range, so that a bad index reads a wrong element but never outside the tensor.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

from ..core import Node
from ..dtypes import DType, boolean, f32, f64, i64
from ..ops.contract import EinsumAttrs, GatherNdAttrs
from ..ops.reduce import AxisAttrs
from ..ops.shape import IotaAttrs, PermAttrs, SliceAttrs, SplitAttrs, TopkAttrs, TriAttrs, slice_length
from .emit import (
    Emitter,
    MlirExportError,
    Operand,
    Region,
    Rule,
    Scalar,
    amap,
    broadcast_map,
    compute_dtype,
    elem_type,
    float_literal,
    identity_map,
    reshape,
    tensor_type,
    transpose,
)
from .lower_elementwise import cast
from .lower_reduce import convert

Outs = list[tuple[tuple[int, ...], DType]]

#: The body of a data-movement generic: (region, block argument names in storage types) -> yields.
RawBody = Callable[[Region, list[str]], list[str]]


def move_generic(
    em: Emitter,
    ins: Sequence[tuple[Operand, str]],
    outs: Sequence[tuple[Operand, str]],
    iterators: Sequence[str],
    body: RawBody,
) -> list[Operand]:
    """``linalg.generic`` whose body sees its block arguments in their storage types (no f16/bf16
    widening: for code that only selects, compares indices and moves values)."""

    def scalar_body(r: Region, xs: list[Scalar]) -> list[Scalar]:
        names = body(r, [x.name for x in xs])
        return [Scalar(n, o.dtype) for n, (o, _) in zip(names, outs, strict=True)]

    return em.generic(ins, outs, iterators, scalar_body, widen=False)


def _literal(value: float | int | bool, dt: DType) -> str:
    """``arith.constant`` operands for a value of storage type ``dt``."""
    if dt.is_bool:
        return "true" if value else "false"  # a bool attribute carries its type
    if dt.is_float:
        return f"{float_literal(float(value), dt)} : {elem_type(dt)}"
    v = int(value) % (1 << dt.bits)  # two's complement, printed signed
    return f"{v - (1 << dt.bits) if v >= 1 << (dt.bits - 1) else v} : {elem_type(dt)}"


def _rconst(r: Region, value: float | int | bool, dt: DType) -> str:
    return r.op(f"arith.constant {_literal(value, dt)}", dt).name


def _index_const(r: Region, value: int) -> str:
    return r.op(f"arith.constant {value} : index", i64).name


def _empty_if_no_elements(em: Emitter, shape: Sequence[int], dt: DType) -> Operand | None:
    return em.empty(shape, dt) if math.prod(shape) == 0 else None


def _index_of(r: Region, raw: str, dt: DType, n: int) -> str:
    """An index value read from an integer tensor as ``index``: negative indices count from the
    end (``i + n``); out-of-range indices are clamped into ``[0, n)``."""
    if dt.is_bool:
        raise MlirExportError(f"indices must be integers, got {dt}")
    t = elem_type(dt)
    cast_op = "arith.index_castui" if dt.kind == "u" else "arith.index_cast"
    i = r.op(f"{cast_op} {raw} : {t} to index", i64).name
    zero, last = _index_const(r, 0), _index_const(r, n - 1)
    if dt.kind != "u":
        neg = r.op(f"arith.cmpi slt, {i}, {zero} : index", boolean).name
        n_c = _index_const(r, n)
        wrapped = r.op(f"arith.addi {i}, {n_c} : index", i64).name
        i = r.op(f"arith.select {neg}, {wrapped}, {i} : index", i64).name
    i = r.op(f"arith.maxsi {i}, {zero} : index", i64).name
    return r.op(f"arith.minsi {i}, {last} : index", i64).name


def _extract(r: Region, x: Operand, indices: Sequence[str]) -> str:
    return r.op(f"tensor.extract {x.name}[{', '.join(indices)}] : {x.type}", x.dtype).name


# -- views -----------------------------------------------------------------------------------------
def _reshape(em: Emitter, node: Node, ins: list[Operand], outs: Outs) -> list[Operand]:
    ((shape, _),) = outs
    return [reshape(em, ins[0], shape)]


def broadcast(em: Emitter, x: Operand, shape: Sequence[int]) -> Operand:
    """``x`` broadcast to ``shape`` (NumPy rules)."""
    shape = tuple(shape)
    if x.shape == shape:
        return x
    init = em.empty(shape, x.dtype)
    if math.prod(shape) == 0:
        return init
    rank = len(shape)
    (y,) = move_generic(
        em,
        [(x, broadcast_map(x.shape, shape))],
        [(init, identity_map(rank))],
        ["parallel"] * rank,
        lambda r, a: [a[0]],
    )
    return y


def _broadcast_to(em: Emitter, node: Node, ins: list[Operand], outs: Outs) -> list[Operand]:
    ((shape, _),) = outs
    return [broadcast(em, ins[0], shape)]


def _transpose(em: Emitter, node: Node, ins: list[Operand], outs: Outs) -> list[Operand]:
    a = node.attrs
    assert isinstance(a, PermAttrs)
    return [transpose(em, ins[0], a.perm)]


def extract_slice(
    em: Emitter, x: Operand, offsets: Sequence[int], sizes: Sequence[int], strides: Sequence[int]
) -> Operand:
    """``tensor.extract_slice`` with static offsets, sizes and (positive) strides."""
    if tuple(sizes) == x.shape:
        return x
    shape = tuple(sizes)

    def fmt(v: Sequence[int]) -> str:
        return f"[{', '.join(map(str, v))}]"

    return em.op(
        f"tensor.extract_slice {x.name}{fmt(offsets)} {fmt(sizes)} {fmt(strides)} "
        f": {x.type} to {tensor_type(shape, x.dtype)}",
        shape,
        x.dtype,
    )


def _slice(em: Emitter, node: Node, ins: list[Operand], outs: Outs) -> list[Operand]:
    a = node.attrs
    assert isinstance(a, SliceAttrs)
    (x,) = ins
    ((shape, dt),) = outs
    if (e := _empty_if_no_elements(em, shape, dt)) is not None:
        return [e]
    rank = len(x.shape)
    start, step = [0] * rank, [1] * rank
    for ax, s, e_, st in zip(a.axes, a.starts, a.stops, a.steps, strict=True):
        assert slice_length(s, e_, st) == shape[ax]
        start[ax], step[ax] = s, st
    if all(st > 0 for st in step):
        return [extract_slice(em, x, start, shape, step)]
    # Negative steps: element j of an axis is x[start + step * j]; read with tensor.extract.
    init = em.empty(shape, dt)

    def body(r: Region, args: list[str]) -> list[str]:
        idx = []
        for d in range(rank):
            j = r.index(d)
            if step[d] != 1:
                j = r.op(f"arith.muli {j}, {_index_const(r, step[d])} : index", i64).name
            if start[d] != 0:
                j = r.op(f"arith.addi {j}, {_index_const(r, start[d])} : index", i64).name
            idx.append(j)
        return [_extract(r, x, idx)]

    return move_generic(em, [], [(init, identity_map(rank))], ["parallel"] * rank, body)


def _concat(em: Emitter, node: Node, ins: list[Operand], outs: Outs) -> list[Operand]:
    """Each piece copied (``linalg.copy``) into its slice of one destination, in
    destination-passing style: extract_slice, copy, insert_slice at the same offsets. Bufferized,
    the copies write straight into the result; no ``memref.copy`` (whose strided form is a call
    into the MLIR runtime library) is left."""
    a = node.attrs
    assert isinstance(a, AxisAttrs)
    ((shape, dt),) = outs
    parts = [x for x in ins if x.shape[a.axis] != 0]
    if not parts:
        return [em.empty(shape, dt)]
    if len(parts) == 1:
        return [parts[0]]
    rank = len(shape)
    dest, at = em.empty(shape, dt), 0
    for x in parts:
        offsets = [at if d == a.axis else 0 for d in range(rank)]
        where = (
            f"[{', '.join(map(str, offsets))}] [{', '.join(map(str, x.shape))}] [{', '.join(['1'] * rank)}]"
        )
        slot = em.op(f"tensor.extract_slice {dest.name}{where} : {dest.type} to {x.type}", x.shape, dt)
        piece = em.op(
            f"linalg.copy ins({x.name} : {x.type}) outs({slot.name} : {slot.type}) -> {x.type}", x.shape, dt
        )
        dest = em.op(
            f"tensor.insert_slice {piece.name} into {dest.name}{where} : {x.type} into {dest.type}", shape, dt
        )
        at += x.shape[a.axis]
    return [dest]


def _split(em: Emitter, node: Node, ins: list[Operand], outs: Outs) -> list[Operand]:
    a = node.attrs
    assert isinstance(a, SplitAttrs)
    (x,) = ins
    rank = len(x.shape)
    ys, at = [], 0
    for shape, dt in outs:
        if math.prod(shape) == 0:
            ys.append(em.empty(shape, dt))
        else:
            offsets = [at if d == a.axis else 0 for d in range(rank)]
            ys.append(extract_slice(em, x, offsets, shape, [1] * rank))
        at += shape[a.axis]
    return ys


# -- indexing --------------------------------------------------------------------------------------
def _gather(em: Emitter, node: Node, ins: list[Operand], outs: Outs) -> list[Operand]:
    """``np.take(x, idx, axis)``: one generic over the result reading ``idx`` through its indexing
    map and ``x`` with ``tensor.extract``."""
    a = node.attrs
    assert isinstance(a, AxisAttrs)
    x, idx = ins
    ((shape, dt),) = outs
    if math.prod(shape) == 0:
        return [em.empty(shape, dt)]
    n, ax, ri = x.shape[a.axis], a.axis, len(idx.shape)
    if n == 0:  # every index is out of range (the reference raises)
        return [em.splat(0, shape, dt)]
    rank = len(shape)
    init = em.empty(shape, dt)

    def body(r: Region, args: list[str]) -> list[str]:
        at = _index_of(r, args[0], idx.dtype, n)
        pos = (
            [r.index(d) for d in range(ax)]
            + [at]
            + [r.index(ax + ri + d) for d in range(len(x.shape) - ax - 1)]
        )
        return [_extract(r, x, pos)]

    idx_map = amap(rank, [f"d{ax + d}" for d in range(ri)])
    return move_generic(em, [(idx, idx_map)], [(init, identity_map(rank))], ["parallel"] * rank, body)


def _gather_nd(em: Emitter, node: Node, ins: list[Operand], outs: Outs) -> list[Operand]:
    """ONNX GatherND: result[b..., i..., t...] = x[b..., idx[b..., i..., :], t...]. The k index
    columns are read through k indexing maps (one per column, the column a constant)."""
    a = node.attrs
    assert isinstance(a, GatherNdAttrs)
    x, idx = ins
    ((shape, dt),) = outs
    if math.prod(shape) == 0:
        return [em.empty(shape, dt)]
    b, k = a.batch_dims, idx.shape[-1]
    lead = len(idx.shape) - 1  # result dims from the indices (batch dims first)
    lims = x.shape[b : b + k]
    if 0 in lims:  # every index is out of range (the reference raises)
        return [em.splat(0, shape, dt)]
    rank = len(shape)
    init = em.empty(shape, dt)
    pre = [f"d{d}" for d in range(lead)]
    cols = [(idx, amap(rank, [*pre, q])) for q in range(k)]

    def body(r: Region, args: list[str]) -> list[str]:
        batch = [r.index(d) for d in range(b)]
        picked = [_index_of(r, args[q], idx.dtype, lims[q]) for q in range(k)]
        tail = [r.index(lead + d) for d in range(len(x.shape) - b - k)]
        return [_extract(r, x, [*batch, *picked, *tail])]

    return move_generic(em, cols, [(init, identity_map(rank))], ["parallel"] * rank, body)


# -- generated values and masks --------------------------------------------------------------------
def _iota(em: Emitter, node: Node, ins: list[Operand], outs: Outs) -> list[Operand]:
    """``start + step * i``: integers in i64 (wrapping to the result type), floats in f64 rounded
    once to the result type (as the reference)."""
    a = node.attrs
    assert isinstance(a, IotaAttrs)
    ((shape, dt),) = outs
    init = em.empty(shape, dt)
    if shape[0] == 0:
        return [init]

    def body(r: Region, args: list[str]) -> list[str]:
        i = r.op(f"arith.index_cast {r.index(0)} : index to i64", i64).name
        if dt.is_int:
            v = r.op(f"arith.muli {i}, {_rconst(r, a.step, i64)} : i64", i64).name
            v = r.op(f"arith.addi {v}, {_rconst(r, a.start, i64)} : i64", i64).name
            return [v if dt.bits == 64 else r.op(f"arith.trunci {v} : i64 to {elem_type(dt)}", dt).name]
        f = r.op(f"arith.sitofp {i} : i64 to f64", f64).name
        f = r.op(f"arith.mulf {f}, {_rconst(r, float(a.step), f64)} : f64", f64).name
        f = r.op(f"arith.addf {f}, {_rconst(r, float(a.start), f64)} : f64", f64).name
        if dt.bits == 64:
            return [f]
        f = r.op(f"arith.truncf {f} : f64 to f32", f32).name  # f16/bf16 through f32 (as casts do)
        return [f if dt == f32 else r.op(f"arith.truncf {f} : f32 to {elem_type(dt)}", dt).name]

    return move_generic(em, [], [(init, identity_map(1))], ["parallel"], body)


def _tri(upper: bool) -> Rule:
    """triu keeps ``j - i >= k`` of the last two axes, tril keeps ``j - i <= k``; the rest is 0."""

    def rule(em: Emitter, node: Node, ins: list[Operand], outs: Outs) -> list[Operand]:
        a = node.attrs
        assert isinstance(a, TriAttrs)
        (x,) = ins
        ((shape, dt),) = outs
        if math.prod(shape) == 0:
            return [x]
        rank = len(shape)
        init = em.empty(shape, dt)

        def body(r: Region, args: list[str]) -> list[str]:
            i, j = r.index(rank - 2), r.index(rank - 1)
            diff = r.op(f"arith.subi {j}, {i} : index", i64).name
            pred = "sge" if upper else "sle"
            keep = r.op(f"arith.cmpi {pred}, {diff}, {_index_const(r, a.k)} : index", boolean).name
            zero = _rconst(r, 0, dt)
            return [r.op(f"arith.select {keep}, {args[0]}, {zero} : {elem_type(dt)}", dt).name]

        ident = identity_map(rank)
        return move_generic(em, [(x, ident)], [(init, ident)], ["parallel"] * rank, body)

    return rule


# -- topk ------------------------------------------------------------------------------------------
def _before(r: Region, a: tuple[Scalar, str], b: tuple[Scalar, str], largest: bool) -> str:
    """Whether (value, i64 index) ``a`` comes before ``b`` in topk's order: larger (or smaller)
    values first, NaNs after every number, ties by the lower index (the reference's stable
    argsort of -x or x)."""
    (av, ai), (bv, bi) = a, b
    dt, t = av.dtype, av.mlir
    if dt.is_float:
        better = r.op(f"arith.cmpf {'ogt' if largest else 'olt'}, {av.name}, {bv.name} : {t}", boolean).name
        a_num = r.op(f"arith.cmpf ord, {av.name}, {av.name} : {t}", boolean).name
        b_nan = r.op(f"arith.cmpf uno, {bv.name}, {bv.name} : {t}", boolean).name
        num_first = r.op(f"arith.andi {a_num}, {b_nan} : i1", boolean).name
        better = r.op(f"arith.ori {better}, {num_first} : i1", boolean).name
        same = r.op(f"arith.cmpf oeq, {av.name}, {bv.name} : {t}", boolean).name
        a_nan = r.op(f"arith.cmpf uno, {av.name}, {av.name} : {t}", boolean).name
        both_nan = r.op(f"arith.andi {a_nan}, {b_nan} : i1", boolean).name
        same = r.op(f"arith.ori {same}, {both_nan} : i1", boolean).name
    else:
        sign = "u" if dt.kind in ("u", "bool") else "s"
        pred = f"{sign}{'gt' if largest else 'lt'}"
        better = r.op(f"arith.cmpi {pred}, {av.name}, {bv.name} : {t}", boolean).name
        same = r.op(f"arith.cmpi eq, {av.name}, {bv.name} : {t}", boolean).name
    lower = r.op(f"arith.cmpi slt, {ai}, {bi} : i64", boolean).name
    tie = r.op(f"arith.andi {same}, {lower} : i1", boolean).name
    return r.op(f"arith.ori {better}, {tie} : i1", boolean).name


def _topk(em: Emitter, node: Node, ins: list[Operand], outs: Outs) -> list[Operand]:
    """topk as ``scf.for`` over the k picks. Pick t is one reduction along the axis: the first
    element, in topk's order, of those after pick t-1. The (value, index) pairs are totally
    ordered, so the picks are the sorted top k with the reference's tie order.

    Destination-passing style throughout, so that bufferization leaves no copy or allocation in
    the loop: pick t is reduced straight into slice t of the results (extract_slice, fill,
    reduce, insert_slice at the same offsets), and copied into two row tensors carried by the
    loop that the next pick reads as "the previous pick"."""
    a = node.attrs
    assert isinstance(a, TopkAttrs)
    (x,) = ins
    (vshape, dt), (ishape, idt) = outs
    if math.prod(vshape) == 0:
        return [em.empty(vshape, dt), em.empty(ishape, idt)]
    ax, rank = a.axis, len(x.shape)
    rows = tuple(d for i, d in enumerate(x.shape) if i != ax)
    row_map = amap(rank, [f"d{d}" for d in range(rank) if d != ax])
    c0, c1, ck = (_index_scalar(em, v) for v in (0, 1, a.k))
    inits = [em.empty(vshape, dt), em.empty(ishape, idt), em.splat(0, rows, dt), em.splat(-1, rows, i64)]
    t, res = em.fresh("t"), em.fresh("r")
    carried = [Operand(em.fresh(h), o.shape, o.dtype) for h, o in zip(("vals", "idxs", "pv", "pi"), inits)]
    iter_args = ", ".join(f"{c.name} = {o.name}" for c, o in zip(carried, inits, strict=True))
    em.lines.append(
        f"{em.indent}{res}:4 = scf.for {t} = {c0} to {ck} step {c1} iter_args({iter_args}) -> "
        f"({', '.join(o.type for o in inits)}) {{"
    )
    vals, idxs, prev_v, prev_i = carried
    first = em.fresh("first")
    em.line(f"{first} = arith.cmpi eq, {t}, {c0} : index")
    offsets = ", ".join(t if d == ax else "0" for d in range(rank))
    sizes = ", ".join("1" if d == ax else str(n) for d, n in enumerate(x.shape))
    where = f"[{offsets}] [{sizes}] [{', '.join(['1'] * rank)}]"

    def slot(src: Operand) -> Operand:
        """Slice t of a result along the axis, as a row tensor (rank-reduced)."""
        row_t = tensor_type(rows, src.dtype)
        return em.op(f"tensor.extract_slice {src.name}{where} : {src.type} to {row_t}", rows, src.dtype)

    init_v, init_i = _fill(em, slot(vals), 0), _fill(em, slot(idxs), -1)

    def body(r: Region, s: list[Scalar]) -> list[Scalar]:
        xv, pv, pi, bv, bi = s
        j = r.op(f"arith.index_cast {r.index(ax)} : index to i64", i64).name
        after = _before(r, (pv, pi.name), (xv, j), a.largest)
        eligible = r.op(f"arith.ori {first}, {after} : i1", boolean).name
        none = r.op(f"arith.cmpi eq, {bi.name}, {_rconst(r, -1, i64)} : i64", boolean).name
        beats = _before(r, (xv, j), (bv, bi.name), a.largest)
        better = r.op(f"arith.ori {none}, {beats} : i1", boolean).name
        take = r.op(f"arith.andi {eligible}, {better} : i1", boolean).name
        nv = r.op(f"arith.select {take}, {xv.name}, {bv.name} : {xv.mlir}", dt)
        ni = r.op(f"arith.select {take}, {j}, {bi.name} : i64", i64)
        return [nv, ni]

    best_v, best_i = em.generic(
        [(x, identity_map(rank)), (prev_v, row_map), (prev_i, row_map)],
        [(init_v, row_map), (init_i, row_map)],
        ["reduction" if d == ax else "parallel" for d in range(rank)],
        body,
    )
    next_pv, next_pi = (
        em.op(f"linalg.copy ins({b.name} : {b.type}) outs({p.name} : {p.type}) -> {p.type}", rows, p.dtype)
        for b, p in ((best_v, prev_v), (best_i, prev_i))
    )
    new_vals, new_idxs = (
        em.op(f"tensor.insert_slice {b.name} into {o.name}{where} : {b.type} into {o.type}", o.shape, o.dtype)
        for b, o in ((best_v, vals), (best_i, idxs))
    )
    yielded = [new_vals, new_idxs, next_pv, next_pi]
    em.line(f"scf.yield {', '.join(y.name for y in yielded)} : {', '.join(y.type for y in yielded)}")
    em.lines.append(f'{em.indent}}} loc("{em.loc}")')
    return [Operand(f"{res}#0", vshape, dt), Operand(f"{res}#1", ishape, idt)]


def _index_scalar(em: Emitter, v: int) -> str:
    c = em.fresh("c")
    em.line(f"{c} = arith.constant {v} : index")
    return c


def _fill(em: Emitter, dest: Operand, value: int) -> Operand:
    c = em.fresh("c")
    em.line(f"{c} = arith.constant {_literal(value, dest.dtype)}")
    return em.op(
        f"linalg.fill ins({c} : {elem_type(dest.dtype)}) outs({dest.name} : {dest.type}) -> {dest.type}",
        dest.shape,
        dest.dtype,
    )


# -- einsum ----------------------------------------------------------------------------------------
def _einsum(em: Emitter, node: Node, ins: list[Operand], outs: Outs) -> list[Operand]:
    """One generic: loops over the output's dims (``...`` broadcast dims and letters) then the
    summed ones; each operand's map names its letters' loops (a repeated letter reads a
    diagonal; a size-1 dim that broadcasts reads index 0). The product of the operands is added
    into the output: floats in their compute type (f16/bf16 in f32), integers in i64 (as the
    reference), bools with and/or."""
    a = node.attrs
    assert isinstance(a, EinsumAttrs)
    ((shape, dt),) = outs
    lhs, out_term = a.equation.replace(" ", "").split("->")
    terms = lhs.split(",")
    out_letters = out_term.replace("...", "")
    if len(set(out_letters)) != len(out_letters):
        raise MlirExportError(f"einsum output {out_term!r} repeats an index")
    sizes: dict[str, int] = {}
    ells: list[tuple[int, ...]] = []
    layouts: list[list[str | int]] = []  # per operand dim: a letter, or the position in its '...'
    for term, x in zip(terms, ins, strict=True):
        letters = term.replace("...", "")
        n_ell = len(x.shape) - len(letters)
        pre = term.index("...") if "..." in term else len(term)
        layout: list[str | int] = [*letters[:pre], *range(n_ell), *letters[pre:]]
        layouts.append(layout)
        ells.append(tuple(x.shape[pre : pre + n_ell]))
        for c, d in zip(layout, x.shape, strict=True):
            if isinstance(c, str):
                sizes[c] = d if sizes.get(c, 1) == 1 else sizes[c]
    nb = max((len(e) for e in ells), default=0)
    bshape = [1] * nb
    for e in ells:
        for p, d in enumerate(e, start=nb - len(e)):
            bshape[p] = d if bshape[p] == 1 else bshape[p]
    # Loops: the output's dims in order, then the summed letters, then '...' dims not in the output.
    loops: dict[str | tuple[str, int], int] = {}
    for part in re.split(r"(\.\.\.)", out_term):
        keys: list[str | tuple[str, int]] = [("...", p) for p in range(nb)] if part == "..." else list(part)
        for k in keys:
            loops[k] = len(loops)
    n_par = len(loops)
    for term in terms:
        for c in term.replace("...", ""):
            loops.setdefault(c, len(loops))
    for p in range(nb):
        loops.setdefault(("...", p), len(loops))
    rank = len(loops)
    extent = {k: sizes[k] if isinstance(k, str) else bshape[k[1]] for k in loops}

    maps = []
    for x, layout in zip(ins, layouts, strict=True):
        n_ell = sum(isinstance(c, int) for c in layout)
        exprs: list[str | int] = []
        for c, d in zip(layout, x.shape, strict=True):
            key = c if isinstance(c, str) else ("...", nb - n_ell + c)
            exprs.append(0 if d == 1 and extent[key] != 1 else f"d{loops[key]}")
        maps.append(amap(rank, exprs))
    acc = boolean if dt.is_bool else compute_dtype(dt) if dt.is_float else i64
    init = em.splat(0, shape, acc)

    def body(r: Region, s: list[Scalar]) -> list[Scalar]:
        *xs, total = s
        vals = [v if v.dtype == acc or dt.is_float else cast(r, v, acc) for v in xs]
        t = elem_type(acc)
        mul, add = ("andi", "ori") if acc.is_bool else ("mulf", "addf") if acc.is_float else ("muli", "addi")
        p = vals[0]
        for v in vals[1:]:
            p = r.op(f"arith.{mul} {p.name}, {v.name} : {t}", acc)
        return [r.op(f"arith.{add} {total.name}, {p.name} : {t}", acc)]

    (y,) = em.generic(
        [(x, m) for x, m in zip(ins, maps, strict=True)],
        [(init, amap(rank, [f"d{i}" for i in range(n_par)]))],
        ["parallel"] * n_par + ["reduction"] * (rank - n_par),
        body,
    )
    return [convert(em, y, dt)]


RULES: dict[str, Rule] = {
    "reshape": _reshape,
    "squeeze": _reshape,
    "unsqueeze": _reshape,
    "broadcast_to": _broadcast_to,
    "transpose": _transpose,
    "slice": _slice,
    "concat": _concat,
    "split": _split,
    "gather": _gather,
    "gather_nd": _gather_nd,
    "iota": _iota,
    "triu": _tri(True),
    "tril": _tri(False),
    "topk": _topk,
    "einsum": _einsum,
}

__all__ = ["RULES", "broadcast", "extract_slice", "move_generic", "transpose"]
