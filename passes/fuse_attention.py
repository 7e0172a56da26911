"""fuse-attention: recognise scaled dot-product attention and replace it by one ``attention`` op.

Matched, however it was written or exported (the forms torch.onnx, Hugging Face and hand-written
NumPy-style code produce)::

    s = (q [* c1]) @ (kT [* c2])          kT: any value whose last two axes are k's, swapped
    s = s [* c3 | / c3]                   scalar constant scales, on either side of the matmul
    s = s [+ bias]                        an additive mask (anything broadcasting to s)
    s = where(keep, s, -big)              a boolean constant mask: causal (end-aligned) or general
    p = softmax(s, axis=-1)
    p = where(isnan(p), 0, p)             torch's guard for fully masked rows (kept, after)
    o = p @ v

Every intermediate must have no other user. The result is ``attention(q, k, v, bias)`` with
``scale = c1*c2*c3`` and ``causal`` set when the boolean mask is exactly the causal one; ``k`` is
``transpose(kT)`` (canonicalize cancels it when kT was itself a transpose).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.core import Graph, Node, Value
from ..ir.registry import Context
from .base import Pass, Rewriter


def _scalar(rw: Rewriter, v: Value) -> float | None:
    node = rw.producer.get(v)
    if node is None or node.op != "constant":
        return None
    data = rw.graph.constants.get(node.attrs.ref)  # type: ignore[attr-defined]
    if data is None or data.size != 1:
        return None
    return float(np.ravel(data)[0])


def _const(rw: Rewriter, v: Value) -> np.ndarray | None:
    node = rw.producer.get(v)
    if node is None or node.op != "constant":
        return None
    return rw.graph.constants.get(node.attrs.ref)  # type: ignore[attr-defined]


@dataclass
class _Match:
    q: Value
    kt: Value
    v: Value
    scale: float
    bias: Value | None
    keep: np.ndarray | None
    nan_guard: bool
    removed: list[Node]


class _Matcher:
    def __init__(self, rw: Rewriter, users: dict[Value, list[Node]]) -> None:
        self.rw = rw
        self.users = users

    def single_use(self, v: Value) -> bool:
        return len(self.users.get(v, [])) == 1

    def producer(self, v: Value, op: str) -> Node | None:
        n = self.rw.producer.get(v)
        return n if n is not None and n.op == op and self.single_use(v) else None

    def peel_scale(self, v: Value) -> tuple[Value, float, list[Node]]:
        """Strip scalar multiplications (and divisions) off ``v``."""
        scale, nodes = 1.0, list[Node]()
        while True:
            n = self.rw.producer.get(v)
            if n is None or n.op not in ("mul", "div") or not self.single_use(v):
                return v, scale, nodes
            a, b = n.operands
            cb = _scalar(self.rw, b)
            ca = _scalar(self.rw, a) if n.op == "mul" else None
            if cb is not None and n.results[0].type == a.type:
                scale *= cb if n.op == "mul" else 1.0 / cb
                v = a
            elif ca is not None and n.results[0].type == b.type:
                scale *= ca
                v = b
            else:
                return v, scale, nodes
            nodes.append(n)

    def match(self, out: Node) -> _Match | None:
        """``out`` is the final matmul p @ v."""
        p, v = out.operands
        removed = [out]
        nan_guard = False
        guard = self.producer(p, "where")
        if guard is not None:
            cond, zero, inner = guard.operands
            isnan = self.producer(cond, "isnan")
            guarded = isnan is not None and isnan.operands[0] is inner and _scalar(self.rw, zero) == 0.0
            if guarded and len(self.users.get(inner, [])) == 2:  # users: isnan and the where itself
                nan_guard, p = True, inner
                removed += [guard, isnan]  # type: ignore[list-item]
        sm = self.rw.producer.get(p) if nan_guard else self.producer(p, "softmax")
        if sm is None or sm.op != "softmax" or sm.attrs.axis != p.tensor_type.rank - 1:  # type: ignore[attr-defined]
            return None
        removed.append(sm)
        s = sm.operands[0]
        keep: np.ndarray | None = None
        w = self.producer(s, "where")
        if w is not None:
            cond, kept, fill = w.operands
            mask = _const(self.rw, cond)
            big = _scalar(self.rw, fill)
            if (
                mask is not None
                and mask.dtype == np.bool_
                and big is not None
                and big <= -1e4
                and kept.type == s.type
            ):
                keep, s = mask, kept
                removed.append(w)
        bias: Value | None = None
        add = self.producer(s, "add")
        if add is not None:
            a, b = add.operands
            for x, m in ((a, b), (b, a)):
                if (
                    x.type == s.type
                    and self.rw.producer.get(x) is not None
                    and self.rw.producer[x].op in ("matmul", "mul", "div")
                ):
                    bias, s = m, x
                    removed.append(add)
                    break
        s, c3, scale_nodes = self.peel_scale(s)
        removed += scale_nodes
        mm = self.producer(s, "matmul")
        if mm is None:
            return None
        removed.append(mm)
        q, kt = mm.operands
        q, c1, n1 = self.peel_scale(q)
        kt, c2, n2 = self.peel_scale(kt)
        removed += n1 + n2
        qt, ktt, vt = q.tensor_type, kt.tensor_type, v.tensor_type
        if (
            not (qt.rank == ktt.rank == vt.rank >= 2)
            or qt.shape[:-2] != vt.shape[:-2]
            or ktt.shape[:-2] != vt.shape[:-2]
        ):
            return None
        return _Match(q, kt, v, c1 * c2 * c3, bias, keep, nan_guard, removed)


def _additive_causal(rw: Rewriter, bias: Value, node: Node) -> bool:
    data = _const(rw, bias)
    if data is None or data.ndim < 2:
        return False
    keep = data == 0
    masked = data <= -1e30
    return bool(np.all(keep | masked)) and _is_causal(keep)


def _is_causal(keep: np.ndarray) -> bool:
    sq, sk = keep.shape[-2], keep.shape[-1]
    causal = np.arange(sk)[None, :] <= np.arange(sq)[:, None] + (sk - sq)
    return bool(np.all(keep == np.broadcast_to(causal, keep.shape)))


@dataclass(frozen=True)
class FuseAttention(Pass):
    """Replace q @ k^T -> scale -> mask -> softmax -> @ v by one streaming ``attention`` op."""

    name = "fuse-attention"
    summary = "recognise scaled dot-product attention and make it one attention kernel"

    def run(self, graph: Graph, ctx: Context) -> Graph:
        users = graph.users()
        out_values = {v for _, v in graph.outputs}

        def visit(node: Node, rw: Rewriter) -> list[Value] | None:
            if node.op != "matmul":
                return None
            m = _Matcher(rw, users).match(node)
            if m is None or any(r in out_values for n in m.removed[1:] for r in n.results):
                return None
            dt = m.q.tensor_type.scalar_dtype
            kt_t = m.kt.tensor_type
            perm = (*range(kt_t.rank - 2), kt_t.rank - 1, kt_t.rank - 2)
            k = rw.op("transpose", m.kt, perm=perm)
            causal = False
            bias = m.bias
            if m.keep is not None:
                if _is_causal(m.keep) and bias is None:
                    causal = True
                else:
                    add = np.where(m.keep, 0.0, -np.inf).astype(dt.np_dtype)
                    mask = rw.constant(add, "mask")
                    bias = mask if bias is None else rw.op("add", bias, mask)
            if bias is not None and not causal and _additive_causal(rw, bias, node):
                bias, causal = None, True  # a constant 0 / -big mask that is exactly causal
            bias_is_zero = bias is None
            if bias is None:
                bias = rw.constant(np.zeros((), dt.np_dtype), "no_bias")
            try:
                out = rw.op(
                    "attention", m.q, k, m.v, bias, scale=float(str(np.float32(m.scale))), causal=causal
                )
            except Exception:  # shapes that attention does not accept: leave the graph alone
                return None
            fully_masked_possible = not (causal and bias_is_zero)
            if m.nan_guard and fully_masked_possible:  # softmax of a fully masked row is NaN; torch made it 0
                zero = rw.constant(np.zeros((), dt.np_dtype), "zero")
                out = rw.op("where", rw.op("isnan", out), zero, out)
            if out.type != node.results[0].type:
                return None
            return [out]

        Rewriter(graph, ctx).run(visit)
        from .simplify import DCE

        DCE().run(graph, ctx)
        return graph
