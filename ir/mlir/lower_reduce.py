"""Contractions and reductions: ``matmul`` as linalg.matmul / batch_matmul (a generic
contraction when batch dims broadcast), ``reduce_*`` as generics with reduction iterators.

f16/bf16 accumulate in f32 and round once at the end, as the reference does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..core import Node
from ..dtypes import DType
from ..ops.reduce import ReduceAttrs
from .emit import (
    Emitter,
    Operand,
    Region,
    Rule,
    Scalar,
    amap,
    compute_dtype,
    identity_map,
    reshape,
    tensor_type,
)
from .lower_elementwise import cast

Outs = list[tuple[tuple[int, ...], DType]]


def convert(em: Emitter, x: Operand, dt: DType) -> Operand:
    """``x`` converted elementwise to ``dt`` (kiln cast rules)."""
    if x.dtype == dt:
        return x
    return em.map([x], x.shape, dt, lambda r, xs: [cast(r, xs[0], dt)])


def _named_matmul(
    em: Emitter, op: str, a: Operand, b: Operand, shape: tuple[int, ...], acc: DType
) -> Operand:
    init = em.splat(0, shape, acc)
    return em.op(
        f"linalg.{op} ins({a.name}, {b.name} : {a.type}, {b.type}) outs({init.name} : {init.type}) "
        f"-> {init.type}",
        shape,
        acc,
    )


def _matmul(em: Emitter, node: Node, ins: list[Operand], outs: Outs) -> list[Operand]:
    ((shape, dt),) = outs
    x, y = ins
    acc = compute_dtype(dt)
    if x.dtype != acc:  # f16/bf16: widen once so that the contraction runs in f32
        x, y = convert(em, x, acc), convert(em, y, acc)
    if len(x.shape) == 1:
        x = reshape(em, x, (1, *x.shape))
    if len(y.shape) == 1:
        y = reshape(em, y, (*y.shape, 1))
    (*xb, m, k), (*yb, _, n) = x.shape, y.shape
    if not yb:  # [..., M, K] @ [K, N]: the batch folds into M (one large matmul)
        rows = math.prod(xb) * m
        z = _named_matmul(em, "matmul", reshape(em, x, (rows, k)), y, (rows, n), acc)
    elif xb == yb:
        b = math.prod(xb)
        x3, y3 = reshape(em, x, (b, m, k)), reshape(em, y, (b, k, n))
        z = _named_matmul(em, "batch_matmul", x3, y3, (b, m, n), acc)
    else:
        z = _broadcast_contraction(em, x, y, acc)
    return [convert(em, reshape(em, z, shape), dt)]


def _broadcast_contraction(em: Emitter, x: Operand, y: Operand, acc: DType) -> Operand:
    """A matmul whose batch dims broadcast: one generic over (batch..., m, n, k)."""
    (*xb, m, _), (*yb, _, n) = x.shape, y.shape
    nb = max(len(xb), len(yb))
    batch = [max(a, b) for a, b in zip([1] * (nb - len(xb)) + xb, [1] * (nb - len(yb)) + yb, strict=True)]
    rank = nb + 3
    bd = [f"d{i}" for i in range(nb)]
    md, nd, kd = f"d{nb}", f"d{nb + 1}", f"d{nb + 2}"

    def bmap(own: list[int]) -> list[str | int]:
        off = nb - len(own)
        return [0 if d == 1 and batch[off + i] != 1 else bd[off + i] for i, d in enumerate(own)]

    out_shape = (*batch, m, n)
    init = em.splat(0, out_shape, acc)
    (z,) = em.generic(
        [(x, amap(rank, [*bmap(xb), md, kd])), (y, amap(rank, [*bmap(yb), kd, nd]))],
        [(init, amap(rank, [*bd, md, nd]))],
        ["parallel"] * (nb + 2) + ["reduction"],
        lambda r, s: [_fma(r, s[0], s[1], s[2], acc)],
    )
    return z


def _fma(r: Region, a: Scalar, b: Scalar, c: Scalar, dt: DType) -> Scalar:
    f = dt.is_float
    p = r.op(f"arith.{'mulf' if f else 'muli'} {a.name}, {b.name} : {a.mlir}", dt)
    return r.op(f"arith.{'addf' if f else 'addi'} {c.name}, {p.name} : {a.mlir}", dt)


# -- reductions ------------------------------------------------------------------------------------
def _combine(kind: str, r: Region, x: Scalar, acc: Scalar, dt: DType) -> Scalar:
    t = x.mlir
    if kind in ("sum", "mean"):
        return r.op(f"arith.{'addf' if dt.is_float else 'addi'} {acc.name}, {x.name} : {t}", dt)
    if kind == "prod":
        return r.op(f"arith.{'mulf' if dt.is_float else 'muli'} {acc.name}, {x.name} : {t}", dt)
    if dt.is_float:  # NaN propagates, as np.max / np.min
        return r.op(f"arith.{'maximumf' if kind == 'max' else 'minimumf'} {acc.name}, {x.name} : {t}", dt)
    sign = "u" if dt.kind in ("u", "bool") else "s"
    return r.op(f"arith.{kind}{sign}i {acc.name}, {x.name} : {t}", dt)


def _identity(kind: str, dt: DType) -> float | int | bool:
    if kind in ("sum", "mean"):
        return 0
    if kind == "prod":
        return 1
    if dt.is_bool:
        return kind == "min"
    if dt.is_float:
        return -math.inf if kind == "max" else math.inf
    return dt.min_value if kind == "max" else dt.max_value


def reduce(em: Emitter, x: Operand, axes: Sequence[int], kind: str, acc: DType) -> Operand:
    """``x`` reduced over ``axes`` (dropped from the shape) in the accumulator type ``acc``."""
    rank = len(x.shape)
    kept = [i for i in range(rank) if i not in axes]
    out_shape = tuple(x.shape[i] for i in kept)
    init = em.splat(_identity(kind, acc), out_shape, acc)
    its = ["reduction" if i in axes else "parallel" for i in range(rank)]

    def body(r: Region, s: list[Scalar]) -> list[Scalar]:
        v = cast(r, s[0], acc) if s[0].dtype != acc else s[0]
        return [_combine(kind, r, v, s[1], acc)]

    (y,) = em.generic([(x, identity_map(rank))], [(init, amap(rank, [f"d{i}" for i in kept]))], its, body)
    return y


def _reduction(kind: str) -> Rule:
    def rule(em: Emitter, node: Node, ins: list[Operand], outs: Outs) -> list[Operand]:
        ((shape, dt),) = outs
        a = node.attrs
        assert isinstance(a, ReduceAttrs)
        (x,) = ins
        acc = compute_dtype(dt)
        y = reduce(em, x, a.axes, kind, acc)
        if kind == "mean":
            count = math.prod(x.shape[i] for i in a.axes)
            c = em.scalar(count, acc)
            y = em.map([y], y.shape, acc, lambda r, s: [_div_by(r, s[0], c, acc)])
        return [convert(em, reshape(em, y, shape), dt)]

    return rule


def _div_by(r: Region, x: Scalar, c: str, dt: DType) -> Scalar:
    return r.op(f"arith.{'divf' if dt.is_float else 'divsi'} {x.name}, {c} : {x.mlir}", dt)


RULES: dict[str, Rule] = {
    "matmul": _matmul,
    **{f"reduce_{k}": _reduction(k) for k in ("sum", "mean", "max", "min", "prod")},
}

__all__ = ["RULES", "convert", "reduce", "tensor_type"]
