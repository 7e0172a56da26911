"""kiln's own ops in MLIR: fused groups, attention, the quantized ops, and the ``kiln`` dialect.

- ``fused``: kind "elementwise" becomes ONE ``linalg.generic`` over the group's iteration space
  whose body is the chain of the body's scalar code (lower_elementwise.SCALAR), operands
  broadcast to the space by indexing maps; other kinds (and elementwise groups that do not fit
  one space) emit the body's nodes inline with the normal rules.
- ``attention``: q @ k^T as ``linalg.transpose`` + ``linalg.batch_matmul``, one generic for the
  scale, the bias and the end-aligned causal mask (``linalg.index``: key j is seen by query i
  when j <= i + Sk - Sq, else -inf), the row softmax of lower_rows.py, ``batch_matmul`` with v;
  f16/bf16 in f32, rounded once.
- ``qmatmul`` / ``qgather`` (``lower_kiln=True``): the codes are unpacked INSIDE linalg, a
  generic over [K, N] reading them with ``tensor.extract`` + shifts and masks (the packed
  LSB-first bit stream, codes straddling bytes at 3/5/6/7 bits; or the u64 bit planes) and
  applying ``W = s * (a*u - c)`` per group (ir/quant.py), then ``linalg.matmul``. ``act=int8``
  quantizes each activation row as ``quantize_rows_int8`` (absmax / 127, round half to even,
  clip to +-127), multiplies codes and activations in i32 per group and rescales by the group
  scale and the row scale. ``act=binary`` replaces each activation row by ``+-alpha`` as
  ``binarize_rows`` (``alpha = sum(|x|) / K``, ``+alpha`` where ``x >= 0``), then the f32
  ``linalg.matmul`` with the dequantized weight. ``qgather`` dequantizes only the gathered rows.
- ``lower_kiln=False``: ``kiln.qmatmul`` / ``kiln.qgather`` ops carrying the format as
  attributes, of the ``kiln`` dialect defined in IRDL (:func:`kiln_dialect_text`), loaded into
  every export context by :func:`load_kiln_dialect` so that they verify as registered ops. The
  dialect also defines the host types (``!kiln.str``, ...) of graph inputs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..core import Graph, Node
from ..dtypes import DType, Layout, QuantType, boolean, f32, i32, i64
from ..ops.fused import AttentionAttrs, FusedAttrs
from ..ops.quant import Act
from ..quant import affine
from ..types import HOST_KINDS, TensorType
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
    identity_map,
    reshape,
    tensor_of,
    tensor_type,
    transpose,
)
from .lower_elementwise import SCALAR, scalar_chain
from .lower_reduce import convert
from .lower_rows import softmax, to_dtype

if TYPE_CHECKING:
    from mlir import ir as mlir_ir

Outs = list[tuple[tuple[int, ...], DType]]


# -- fused -----------------------------------------------------------------------------------------
def _one_space(body: Graph, ins: list[Operand], outs: Outs) -> tuple[int, ...] | None:
    """The iteration space when the group is one elementwise generic (else None): every node
    elementwise or a scalar constant, every value broadcasting to the outputs' common shape."""
    spaces = {shape for shape, _ in outs}
    if len(spaces) != 1:
        return None
    (space,) = spaces

    def fits(shape: tuple[int, ...]) -> bool:
        off = len(space) - len(shape)
        return off >= 0 and all(d in (1, space[off + i]) for i, d in enumerate(shape))

    for n in body.nodes:
        if n.op == "constant":
            data = body.constants.get(n.attrs.ref)  # type: ignore[attr-defined]
            if data is None or np.size(data) != 1:
                return None
        elif n.op not in SCALAR:
            return None
        for r in n.results:
            t = r.type
            if not isinstance(t, TensorType) or not t.is_static or not fits(t.static_shape):
                return None
    return space if all(fits(o.shape) for o in ins) else None


def _elementwise_group(
    em: Emitter, body: Graph, ins: list[Operand], outs: Outs, space: tuple[int, ...]
) -> list[Operand]:
    inits = [(em.empty(shape, dt), identity_map(len(space))) for shape, dt in outs]
    pairs = [(o, broadcast_map(o.shape, space)) for o in ins]

    def chain(r: Region, xs: list[Scalar]) -> list[Scalar]:
        env = {v.id: s for v, s in zip(body.inputs, xs, strict=False)}
        for n in body.nodes:
            dt = n.results[0].tensor_type.scalar_dtype
            if n.op == "constant":
                value = np.asarray(body.constants[n.attrs.ref]).reshape(()).item()  # type: ignore[attr-defined]
                env[n.results[0].id] = r.const(value, dt)
                continue
            env[n.results[0].id] = scalar_chain(r, n, [env[v.id] for v in n.operands], dt)
        return [env[v.id] for _, v in body.outputs]

    return em.generic(pairs, inits, ["parallel"] * len(space), chain)


def _bind_dims(body: Graph, ins: list[Operand], outs: Outs) -> dict[str, int]:
    """The body's symbolic dims, read off the fused node's concrete operands and results."""
    dims: dict[str, int] = {}
    typed = [(v.type, o.shape) for v, o in zip(body.inputs, ins, strict=True)]
    typed += [(v.type, shape) for (_, v), (shape, _) in zip(body.outputs, outs, strict=True)]
    for t, shape in typed:
        if isinstance(t, TensorType):
            for d, n in zip(t.shape, shape, strict=False):
                if isinstance(d, str):
                    dims[d] = n
    return dims


def _inline(em: Emitter, body: Graph, ins: list[Operand], outs: Outs, lower_kiln: bool) -> list[Operand]:
    """The body's nodes, each with its own rule (and location), on the fused node's operands."""
    from . import _dense
    from .rules import lowering_rules

    rules = lowering_rules(lower_kiln)
    dims = _bind_dims(body, ins, outs)
    outer = em.loc
    for v, o in zip(body.inputs, ins, strict=True):
        em.bind(v, o)
    for n in body.nodes:
        em.at(n)
        if n.op == "constant":
            data = body.constants.get(n.attrs.ref)  # type: ignore[attr-defined]
            if data is None:
                raise MlirExportError(f"constant @{n.attrs.ref} of the fused body has no data")  # type: ignore[attr-defined]
            shape, dt = tensor_of(n.result.tensor_type, dims)
            lit = _dense(np.asarray(data).reshape(shape), dt)
            em.bind(n.result, em.op(f"arith.constant {lit} : {tensor_type(shape, dt)}", shape, dt))
            continue
        if n.op not in rules:
            raise MlirExportError(f"no MLIR lowering for op {n.op} inside the fused group ({n.describe()})")
        res = rules[n.op](
            em, n, [em.get(v) for v in n.operands], [tensor_of(r.tensor_type, dims) for r in n.results]
        )
        for r, y in zip(n.results, res, strict=True):
            em.bind(r, y)
    em.loc = outer
    return [em.get(v) for _, v in body.outputs]


def _fused_rule(lower_kiln: bool) -> Rule:
    def rule(em: Emitter, node: Node, ins: list[Operand], outs: Outs) -> list[Operand]:
        a = node.attrs
        assert isinstance(a, FusedAttrs)
        if a.kind == "elementwise" and (space := _one_space(a.body, ins, outs)) is not None:
            return _elementwise_group(em, a.body, ins, outs, space)
        return _inline(em, a.body, ins, outs, lower_kiln)

    return rule


# -- attention -------------------------------------------------------------------------------------
def _batch_matmul(em: Emitter, a: Operand, b: Operand) -> Operand:
    (bs, m, _), (_, _, n) = a.shape, b.shape
    init = em.splat(0, (bs, m, n), a.dtype)
    return em.op(
        f"linalg.batch_matmul ins({a.name}, {b.name} : {a.type}, {b.type}) outs({init.name} : {init.type}) "
        f"-> {init.type}",
        (bs, m, n),
        a.dtype,
    )


def _attention(em: Emitter, node: Node, ins: list[Operand], outs: Outs) -> list[Operand]:
    a = node.attrs
    assert isinstance(a, AttentionAttrs)
    ((shape, dt),) = outs
    acc = compute_dtype(dt)
    t = elem_type(acc)
    q, k, v, bias = (convert(em, x, acc) for x in ins)
    *batch, sq, d = q.shape
    sk, dv = k.shape[-2], v.shape[-1]
    b = math.prod(batch)
    k3 = reshape(em, k, (b, sk, d))
    kt = transpose(em, k3, (0, 2, 1))
    s = reshape(em, _batch_matmul(em, reshape(em, q, (b, sq, d)), kt), (*batch, sq, sk))
    rank = len(s.shape)
    scale = em.scalar(a.scale, acc)
    neg_inf = em.scalar(-math.inf, acc)

    def scores(r: Region, xs: list[Scalar]) -> list[Scalar]:
        y = r.op(f"arith.mulf {xs[0].name}, {scale} : {t}", acc)
        y = r.op(f"arith.addf {y.name}, {xs[1].name} : {t}", acc)
        if a.causal:  # query i sees keys j <= i + (Sk - Sq)
            i, j = r.index(rank - 2), r.index(rank - 1)
            off = r.op(f"arith.constant {sk - sq} : index", i64)
            lim = r.op(f"arith.addi {i}, {off.name} : index", i64)
            keep = r.op(f"arith.cmpi sle, {j}, {lim.name} : index", i64)
            y = r.op(f"arith.select {keep.name}, {y.name}, {neg_inf} : {t}", acc)
        return [y]

    init = em.empty(s.shape, acc)
    (masked,) = em.generic(
        [(s, identity_map(rank)), (bias, broadcast_map(bias.shape, s.shape))],
        [(init, identity_map(rank))],
        ["parallel"] * rank,
        scores,
    )
    p = reshape(em, softmax(em, masked, rank - 1), (b, sq, sk))
    y = _batch_matmul(em, p, reshape(em, v, (b, sk, dv)))
    return [to_dtype(em, reshape(em, y, shape), dt)]


# -- quantized ops ---------------------------------------------------------------------------------
def _i(r: Region, text: str, dt: DType = i64) -> str:
    """One region op, by name (index arithmetic and raw integer ops)."""
    return r.op(text, dt).name


def _index(r: Region, value: int) -> str:
    return _i(r, f"arith.constant {value} : index")


def code_at(r: Region, q: QuantType, codes: Operand, n: str, k: str) -> str:
    """The unsigned code u[n, k] (an i32) read from the stored ``codes`` (``n``, ``k``: index)."""
    bits, mask = q.bits, (1 << q.bits) - 1
    ct = codes.type
    if q.layout == Layout.BITSLICED:
        word = _i(r, f"arith.shrui {k}, {_index(r, 6)} : index")
        sh = _i(r, f"arith.andi {k}, {_index(r, 63)} : index")
        sh64 = _i(r, f"arith.index_cast {sh} : index to i64")
        one = _i(r, "arith.constant 1 : i64")
        code = _i(r, "arith.constant 0 : i64")
        for plane in range(bits):
            w = _i(r, f"tensor.extract {codes.name}[{n}, {_index(r, plane)}, {word}] : {ct}")
            bit = _i(r, f"arith.shrui {w}, {sh64} : i64")
            bit = _i(r, f"arith.andi {bit}, {one} : i64")
            if plane:
                bit = _i(r, f"arith.shli {bit}, {_i(r, f'arith.constant {plane} : i64')} : i64")
            code = _i(r, f"arith.ori {code}, {bit} : i64")
        return _i(r, f"arith.trunci {code} : i64 to i32", i32)
    if 8 % bits == 0:  # 1, 2, 4, 8 bits: a code never straddles two bytes
        per = 8 // bits
        byte = _i(r, f"arith.shrui {k}, {_index(r, per.bit_length() - 1)} : index") if per > 1 else k
        slot = _i(r, f"arith.andi {k}, {_index(r, per - 1)} : index")
        off = _i(r, f"arith.muli {slot}, {_index(r, bits)} : index")
        b0 = _i(r, f"tensor.extract {codes.name}[{n}, {byte}] : {ct}", i32)
        v = _i(r, f"arith.extui {b0} : i8 to i32", i32)
    else:  # 3, 5, 6, 7 bits: the code's bits may continue in the next byte
        pos = _i(r, f"arith.muli {k}, {_index(r, bits)} : index")
        byte = _i(r, f"arith.shrui {pos}, {_index(r, 3)} : index")
        off = _i(r, f"arith.andi {pos}, {_index(r, 7)} : index")
        nxt = _i(r, f"arith.addi {byte}, {_index(r, 1)} : index")
        nxt = _i(r, f"arith.minui {nxt}, {_index(r, codes.shape[1] - 1)} : index")
        lo = _i(
            r, f"arith.extui {_i(r, f'tensor.extract {codes.name}[{n}, {byte}] : {ct}')} : i8 to i32", i32
        )
        hi = _i(r, f"arith.extui {_i(r, f'tensor.extract {codes.name}[{n}, {nxt}] : {ct}')} : i8 to i32", i32)
        hi = _i(r, f"arith.shli {hi}, {_i(r, 'arith.constant 8 : i32')} : i32", i32)
        v = _i(r, f"arith.ori {lo}, {hi} : i32", i32)
    off32 = _i(r, f"arith.index_cast {off} : index to i32", i32)
    v = _i(r, f"arith.shrui {v}, {off32} : i32", i32)
    return _i(r, f"arith.andi {v}, {_i(r, f'arith.constant {mask} : i32', i32)} : i32", i32)


def level(r: Region, q: QuantType, code: str, zero: Scalar | None) -> str:
    """The integer level ``a*u - c`` (an i32) of a code: c is the zero point for asym."""
    a, c = affine(q)
    au = _i(r, f"arith.muli {code}, {_i(r, f'arith.constant {a} : i32', i32)} : i32", i32) if a != 1 else code
    if c is None:
        assert zero is not None
        cz = _i(r, f"arith.extui {zero.name} : i8 to i32", i32)
    else:
        cz = _i(r, f"arith.constant {c} : i32", i32)
    return _i(r, f"arith.subi {au}, {cz} : i32", i32)


def _group_map(q: QuantType, k: int) -> str:
    """The map of a [K, N] iteration reading ``[N, G]`` scales (or zeros) at (n, k // group)."""
    gl = q.group or k
    return amap(2, ["d1", 0 if gl == k else f"d0 floordiv {gl}"])


def _weight_levels(
    em: Emitter, q: QuantType, codes: Operand, zeros: Operand | None, k: int, n: int
) -> Operand:
    """The i32 levels ``a*u - c`` as a [K, N] tensor (for integer activations)."""
    ins = [] if zeros is None else [(zeros, _group_map(q, k))]
    init = em.empty((k, n), i32)

    def body(r: Region, xs: list[Scalar]) -> list[Scalar]:
        kk, nn = r.index(0), r.index(1)
        lv = level(r, q, code_at(r, q, codes, nn, kk), xs[0] if zeros is not None else None)
        return [Scalar(lv, i32)]

    (w,) = em.generic(ins, [(init, identity_map(2))], ["parallel", "parallel"], body)
    return w


def dequantized(
    em: Emitter, q: QuantType, codes: Operand, scales: Operand, zeros: Operand | None, k: int, n: int
) -> Operand:
    """The f32 weight ``W[k, n] = s[n, g] * (a*u[n, k] - c)`` as a [K, N] tensor."""
    gm = _group_map(q, k)
    ins = [(scales, gm)] + ([] if zeros is None else [(zeros, gm)])
    init = em.empty((k, n), f32)

    def body(r: Region, xs: list[Scalar]) -> list[Scalar]:
        kk, nn = r.index(0), r.index(1)
        lv = level(r, q, code_at(r, q, codes, nn, kk), xs[1] if zeros is not None else None)
        lf = _i(r, f"arith.sitofp {lv} : i32 to f32", f32)
        s = xs[0] if xs[0].mlir == "f32" else r.op(f"arith.truncf {xs[0].name} : f64 to f32", f32)
        return [r.op(f"arith.mulf {s.name}, {lf} : f32", f32)]

    (w,) = em.generic(ins, [(init, identity_map(2))], ["parallel", "parallel"], body)
    return w


def _qweights(
    node: Node, ins: list[Operand], first: int
) -> tuple[QuantType, Operand, Operand, Operand | None]:
    t = node.operands[first].type
    assert isinstance(t, TensorType) and isinstance(t.dtype, QuantType)
    zeros = ins[first + 2] if len(ins) == 4 else None  # qmatmul (x, w, s[, z]); qgather (w, s[, z], idx)
    return t.dtype, ins[first], ins[first + 1], zeros


def _matmul(em: Emitter, x: Operand, w: Operand) -> Operand:
    (m, _), (_, n) = x.shape, w.shape
    init = em.splat(0, (m, n), f32)
    return em.op(
        f"linalg.matmul ins({x.name}, {w.name} : {x.type}, {w.type}) outs({init.name} : {init.type}) -> {init.type}",
        (m, n),
        f32,
    )


def _row_scales(em: Emitter, x: Operand) -> Operand:
    """Per-row int8 scales of ``x: f32[M, K]`` as quantize_rows_int8: absmax / 127, or 1 when the
    row is all zeros. Returned as [M, 1]."""
    m = x.shape[0]
    init = em.splat(0.0, (m,), f32)

    def absmax(r: Region, xs: list[Scalar]) -> list[Scalar]:
        ab = r.op(f"math.absf {xs[0].name} : f32", f32)
        return [r.op(f"arith.maximumf {xs[1].name}, {ab.name} : f32", f32)]

    (amax,) = em.generic([(x, identity_map(2))], [(init, amap(2, ["d0"]))], ["parallel", "reduction"], absmax)

    def scale(r: Region, xs: list[Scalar]) -> list[Scalar]:
        zero, one, c127 = r.const(0.0, f32), r.const(1.0, f32), r.const(127.0, f32)
        pos = r.op(f"arith.cmpf ogt, {xs[0].name}, {zero.name} : f32", f32)
        s = r.op(f"arith.divf {xs[0].name}, {c127.name} : f32", f32)
        return [r.op(f"arith.select {pos.name}, {s.name}, {one.name} : f32", f32)]

    return reshape(em, em.map([amax], (m,), f32, scale), (m, 1))


def _quantize_rows(em: Emitter, x: Operand, sx: Operand) -> Operand:
    """``clip(rint(x / s), -127, 127)`` as i8 (round half to even, as np.rint)."""

    def body(r: Region, xs: list[Scalar]) -> list[Scalar]:
        y = r.op(f"arith.divf {xs[0].name}, {xs[1].name} : f32", f32)
        y = r.op(f"math.roundeven {y.name} : f32", f32)
        y = r.op(f"arith.maximumf {y.name}, {r.const(-127.0, f32).name} : f32", f32)
        y = r.op(f"arith.minimumf {y.name}, {r.const(127.0, f32).name} : f32", f32)
        return [r.op(f"arith.fptosi {y.name} : f32 to i8", DType("i", 8))]

    return em.map([x, sx], x.shape, DType("i", 8), body)


def _binarize_rows(em: Emitter, x: Operand) -> Operand:
    """``x: f32[M, K]`` as binarize_rows: ``alpha = sum(|x|) / K`` per row, then ``+alpha`` where
    ``x >= 0`` (0 and -0.0 included) and ``-alpha`` elsewhere (NaN: ordered compare is false)."""
    m, k = x.shape
    init = em.splat(0.0, (m,), f32)

    def abssum(r: Region, xs: list[Scalar]) -> list[Scalar]:
        ab = r.op(f"math.absf {xs[0].name} : f32", f32)
        return [r.op(f"arith.addf {xs[1].name}, {ab.name} : f32", f32)]

    (total,) = em.generic(
        [(x, identity_map(2))], [(init, amap(2, ["d0"]))], ["parallel", "reduction"], abssum
    )
    # divide (not multiply by 1/K) like NumPy's mean, so an exact sum gives the same alpha
    alpha = em.map(
        [total],
        (m,),
        f32,
        lambda r, xs: [r.op(f"arith.divf {xs[0].name}, {r.const(k, f32).name} : f32", f32)],
    )

    def pick(r: Region, xs: list[Scalar]) -> list[Scalar]:
        nonneg = r.op(f"arith.cmpf oge, {xs[0].name}, {r.const(0.0, f32).name} : f32", boolean)
        neg = r.op(f"arith.negf {xs[1].name} : f32", f32)
        return [r.op(f"arith.select {nonneg.name}, {xs[1].name}, {neg.name} : f32", f32)]

    return em.map([x, reshape(em, alpha, (m, 1))], (m, k), f32, pick)


def _int8_product(
    em: Emitter, q: QuantType, x: Operand, codes: Operand, scales: Operand, zeros: Operand | None, n: int
) -> Operand:
    """y[m, n] = sx[m] * sum_g s[n, g] * sum_{k in g} xq[m, k] * (a*u[n, k] - c), the sums in i32."""
    m, k = x.shape
    sx = _row_scales(em, x)
    xq = _quantize_rows(em, x, sx)
    gl = q.group or k
    g = k // gl
    wl = _weight_levels(em, q, codes, zeros, k, n)
    xq3, wl3 = reshape(em, xq, (m, g, gl)), reshape(em, wl, (g, gl, n))
    acc = em.splat(0, (m, n, g), i32)

    def dot(r: Region, xs: list[Scalar]) -> list[Scalar]:
        a = _i(r, f"arith.extsi {xs[0].name} : i8 to i32", i32)
        p = _i(r, f"arith.muli {a}, {xs[1].name} : i32", i32)
        return [r.op(f"arith.addi {xs[2].name}, {p} : i32", i32)]

    (sums,) = em.generic(
        [(xq3, amap(4, ["d0", "d2", "d3"])), (wl3, amap(4, ["d2", "d3", "d1"]))],
        [(acc, amap(4, ["d0", "d1", "d2"]))],
        ["parallel", "parallel", "parallel", "reduction"],
        dot,
    )
    init = em.splat(0.0, (m, n), f32)

    def rescale(r: Region, xs: list[Scalar]) -> list[Scalar]:
        p = _i(r, f"arith.sitofp {xs[0].name} : i32 to f32", f32)
        s = xs[1] if xs[1].mlir == "f32" else r.op(f"arith.truncf {xs[1].name} : f64 to f32", f32)
        y = r.op(f"arith.mulf {s.name}, {p} : f32", f32)
        return [r.op(f"arith.addf {xs[2].name}, {y.name} : f32", f32)]

    (y,) = em.generic(
        [(sums, identity_map(3)), (scales, amap(3, ["d1", "d2"]))],
        [(init, amap(3, ["d0", "d1"]))],
        ["parallel", "parallel", "reduction"],
        rescale,
    )
    return em.map(
        [y, sx], (m, n), f32, lambda r, xs: [r.op(f"arith.mulf {xs[0].name}, {xs[1].name} : f32", f32)]
    )


def _qmatmul(em: Emitter, node: Node, ins: list[Operand], outs: Outs) -> list[Operand]:
    ((shape, dt),) = outs
    q, codes, scales, zeros = _qweights(node, ins, 1)
    x = ins[0]
    k, n = x.shape[-1], shape[-1]
    x2 = convert(em, reshape(em, x, (math.prod(x.shape[:-1]), k)), f32)
    if node.attrs.act == Act.INT8:  # type: ignore[attr-defined]
        y = _int8_product(em, q, x2, codes, scales, zeros, n)
    elif node.attrs.act == Act.BINARY:  # type: ignore[attr-defined]
        y = _matmul(em, _binarize_rows(em, x2), dequantized(em, q, codes, scales, zeros, k, n))
    else:
        y = _matmul(em, x2, dequantized(em, q, codes, scales, zeros, k, n))
    return [convert(em, reshape(em, y, shape), dt)]


def _qgather(em: Emitter, node: Node, ins: list[Operand], outs: Outs) -> list[Operand]:
    """out[..., d] = W[d, row] for row = indices[...] (negative from the end; clamped into the
    table, where the reference raises): only the gathered rows are dequantized."""
    ((shape, _),) = outs
    q, codes, scales, zeros = _qweights(node, ins, 0)
    idx = ins[-1]
    rows, k = codes.shape[0], shape[-1]
    gl = q.group or k
    rank = len(shape)
    it = elem_type(idx.dtype)
    init = em.empty(shape, f32)

    def body(r: Region, xs: list[Scalar]) -> list[Scalar]:
        i = xs[0].name
        if idx.dtype.bits < 64 or idx.dtype.kind == "u":
            ext = "arith.extui" if idx.dtype.kind in ("u", "bool") else "arith.extsi"
            i = _i(r, f"{ext} {i} : {it} to i64")
        if idx.dtype.kind == "i":
            neg = _i(r, f"arith.cmpi slt, {i}, {_i(r, 'arith.constant 0 : i64')} : i64")
            wrapped = _i(r, f"arith.addi {i}, {_i(r, f'arith.constant {rows} : i64')} : i64")
            i = _i(r, f"arith.select {neg}, {wrapped}, {i} : i64")
            i = _i(r, f"arith.maxsi {i}, {_i(r, 'arith.constant 0 : i64')} : i64")
        i = _i(r, f"arith.minui {i}, {_i(r, f'arith.constant {rows - 1} : i64')} : i64")
        row = _i(r, f"arith.index_cast {i} : i64 to index")
        d = r.index(rank - 1)
        g = _index(r, 0) if gl == k else _i(r, f"arith.divui {d}, {_index(r, gl)} : index")
        s = _i(r, f"tensor.extract {scales.name}[{row}, {g}] : {scales.type}", scales.dtype)
        if scales.dtype != f32:
            s = _i(
                r,
                f"arith.{'truncf' if scales.dtype.bits > 32 else 'extf'} {s} : {elem_type(scales.dtype)} to f32",
                f32,
            )
        z = None
        if zeros is not None:
            z = Scalar(_i(r, f"tensor.extract {zeros.name}[{row}, {g}] : {zeros.type}"), zeros.dtype)
        lv = level(r, q, code_at(r, q, codes, row, d), z)
        lf = _i(r, f"arith.sitofp {lv} : i32 to f32", f32)
        return [r.op(f"arith.mulf {s}, {lf} : f32", f32)]

    in_map = amap(rank, [f"d{i}" for i in range(rank - 1)])
    (y,) = em.generic([(idx, in_map)], [(init, identity_map(rank))], ["parallel"] * rank, body)
    return [y]


# -- the kiln dialect ------------------------------------------------------------------------------
def _format_attrs(q: QuantType) -> dict[str, str]:
    return {
        "bits": f"{q.bits} : i64",
        "scheme": f'"{q.scheme}"',
        "group": f"{q.group} : i64",
        "layout": f'"{q.layout}"',
        "scale_dtype": elem_type(q.scale_dtype),
    }


def _kiln_op(name: str) -> Rule:
    """``"kiln.<name>"(operands) {format attributes}`` (lower_kiln=False)."""

    def rule(em: Emitter, node: Node, ins: list[Operand], outs: Outs) -> list[Operand]:
        ((shape, dt),) = outs
        q, *_ = _qweights(node, ins, 1 if name == "qmatmul" else 0)
        attrs = _format_attrs(q)
        if name == "qmatmul":
            attrs["act"] = f'"{node.attrs.act}"'  # type: ignore[attr-defined]
        body = ", ".join(f"{k} = {v}" for k, v in sorted(attrs.items()))
        y = tensor_type(shape, dt)
        return [
            em.op(
                f'"kiln.{name}"({", ".join(o.name for o in ins)}) {{{body}}} : '
                f"({', '.join(o.type for o in ins)}) -> {y}",
                shape,
                dt,
            )
        ]

    return rule


def _enum(name: str, values: list[str]) -> list[str]:
    lines = [f'    %{name}_{i} = irdl.is "{v}"' for i, v in enumerate(values)]
    lines.append(f"    %{name} = irdl.any_of({', '.join(f'%{name}_{i}' for i in range(len(values)))})")
    return lines


def _irdl_op(name: str, operands: list[str], attrs: dict[str, list[str] | str]) -> list[str]:
    out = [f"  irdl.operation @{name} {{"]
    ops = []
    for i, o in enumerate([*operands, "y"]):
        out.append(f'    %t{i} = irdl.base "!builtin.tensor"')
        ops.append(f"{o.removesuffix('?')}: {'optional ' if o.endswith('?') else ''}%t{i}")
    out.append(f"    irdl.operands({', '.join(ops[:-1])})")
    out.append(f"    irdl.results({ops[-1]})")
    refs = []
    for k, v in attrs.items():  # one constraint variable each: a shared one would force equal values
        out += _enum(k, v) if isinstance(v, list) else [f'    %{k} = irdl.base "#builtin.{v}"']
        refs.append(f'"{k}" = %{k}')
    out.append(f"    irdl.attributes {{{', '.join(refs)}}}")
    out.append("  }")
    return out


def kiln_dialect_text() -> str:
    """The ``kiln`` dialect as an IRDL module: ``qmatmul``/``qgather`` (operands in the order of
    the kiln ops, zero points optional; the quantization format as attributes) and the host
    types of graph inputs."""
    fmt: dict[str, list[str] | str] = {
        "bits": "integer",
        "scheme": ["sym", "asym", "bipolar"],
        "group": "integer",
        "layout": [str(v) for v in Layout],
        "scale_dtype": "type",
    }
    lines = ["module {", "irdl.dialect @kiln {"]
    lines += [f"  irdl.type @{kind}" for kind in HOST_KINDS]
    lines += _irdl_op("qmatmul", ["x", "w", "scales", "zeros?"], {**fmt, "act": [str(v) for v in Act]})
    lines += _irdl_op("qgather", ["w", "scales", "zeros?", "indices"], fmt)
    return "\n".join([*lines, "}", "}", ""])


def load_kiln_dialect(context: mlir_ir.Context) -> None:
    """Register the kiln dialect (IRDL) in ``context``, once (a second load would abort)."""
    from mlir import ir as mlir_ir
    from mlir.dialects import irdl

    if context.is_registered_operation("kiln.qmatmul"):
        return
    with context, mlir_ir.Location.unknown():
        irdl.load_dialects(mlir_ir.Module.parse(kiln_dialect_text()))


def rules(lower_kiln: bool = True) -> dict[str, Rule]:
    quant: dict[str, Rule] = (
        {"qmatmul": _qmatmul, "qgather": _qgather}
        if lower_kiln
        else {"qmatmul": _kiln_op("qmatmul"), "qgather": _kiln_op("qgather")}
    )
    return {"fused": _fused_rule(lower_kiln), "attention": _attention, **quant}


__all__ = ["code_at", "dequantized", "kiln_dialect_text", "level", "load_kiln_dialect", "rules"]
