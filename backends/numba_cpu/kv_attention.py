"""Decode attention that appends to the KV cache in the same pass.

A decode step computes ``K = concat(past_k, k_new)``, ``V = concat(past_v, v_new)`` (both outputs
of the step: the next step's cache) and then attends one query per head over them. Run as written
that is a copy of the cache on one thread followed by a second read of it from memory; here one
task per head copies its past and new rows into the present cache and reads them back while they
are still in L1/L2 (scores for K, ``p @ V`` for V). The heads are split over libomp's team
(``omp_fork``), whose workers are still spinning from the quantized GEMV that produced q, k and v.

The executor routes an ``attention`` node here when ``find_kv_appends`` accepts it (K and V
two-operand concats along the key axis, sq = 1); the concats then only name their buffers.
Numerics match ``attention.py``'s decode path (same summation order per key block, same ``fexp``).
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from functools import cache

import numba
import numpy as np
from numba import carray, cfunc, njit, types

from ...ir.core import Graph, Node, Value
from ...ir.dtypes import f32
from ...ir.errors import BackendError
from . import omp_fork
from .ffi import call_i64, ptr_of
from .mathlib import fexp

# the parameter block (int64 each): addresses, then strides in elements (head, row) per array
PARAMS = ("q", "q_hs", "pk", "pk_hs", "pk_rs", "nk", "nk_hs", "nk_rs", "pv", "pv_hs", "pv_rs",
          "nv", "nv_hs", "nv_rs", "ok", "ov", "bias", "out", "nb", "t", "s", "d", "dv", "scale")  # fmt: skip
N_PARAMS = len(PARAMS)


@njit(inline="always")
def _arr(addr, n):  # type: ignore[no-untyped-def]
    return carray(ptr_of(addr, np.float32(0)), (n,))  # type: ignore[call-arg]


@njit(inline="always")
def _copy_rows(dst, at, src, rs, rows, d):  # type: ignore[no-untyped-def]
    """``rows`` rows of ``d`` floats, ``rs`` apart in ``src``, to ``dst[at:]`` back to back."""
    to = dst[at:]  # indices that are loop counters vectorise (see _head)
    if rs == d:  # one run (a slice assignment per row costs more than the row)
        for i in range(rows * d):
            to[i] = src[i]
        return
    for b in range(rows):
        row, at_b = src[b * rs :], to[b * d :]
        for e in range(d):
            at_b[e] = row[e]


@njit(fastmath=True, error_model="numpy", cache=False)
def _head(n, p):  # type: ignore[no-untyped-def]
    """Head ``n``: copy its past and new rows into the present caches, attend, write out[n]."""
    t, s, d, dv = p[19], p[20], p[21], p[22]
    sk = t + s
    scale = _arr(p[23], 1)[0]
    q = _arr(p[0] + 4 * n * p[1], d)
    pk = _arr(p[2] + 4 * n * p[3], (t - 1) * p[4] + d if t else 0)
    nk = _arr(p[5] + 4 * n * p[6], (s - 1) * p[7] + d)
    pv = _arr(p[8] + 4 * n * p[9], (t - 1) * p[10] + dv if t else 0)
    nv = _arr(p[11] + 4 * n * p[12], (s - 1) * p[13] + dv)
    ok = _arr(p[14] + 4 * n * sk * d, sk * d)
    ov = _arr(p[15] + 4 * n * sk * dv, sk * dv)
    # the same rows as 2-D arrays for the dot products: row and column indices that are loop
    # counters are known to be non-negative (flat offsets are not: Numba's wraparound check
    # on them blocks vectorisation, 3x slower)
    k2 = carray(ptr_of(p[14] + 4 * n * sk * d, np.float32(0)), (sk, d))  # type: ignore[call-arg]
    v2 = carray(ptr_of(p[15] + 4 * n * sk * dv, np.float32(0)), (sk, dv))  # type: ignore[call-arg]
    out = _arr(p[17] + 4 * n * dv, dv)
    qs = np.empty(d, np.float32)
    for e in range(d):
        qs[e] = q[e] * scale
    sc = np.empty(sk, np.float32)
    # each key row is copied into the present cache, then read back from L1 for the scores (a
    # loop that loads, stores and sums at once does not vectorise: the arrays may alias)
    _copy_rows(ok, 0, pk, p[4], t, d)
    _copy_rows(ok, t * d, nk, p[7], s, d)
    b = 0
    while b + 4 <= sk:  # four keys per pass: four independent sums
        x0 = np.float32(0.0)
        x1 = np.float32(0.0)
        x2 = np.float32(0.0)
        x3 = np.float32(0.0)
        for e in range(d):
            qe = qs[e]
            x0 += qe * k2[b, e]
            x1 += qe * k2[b + 1, e]
            x2 += qe * k2[b + 2, e]
            x3 += qe * k2[b + 3, e]
        sc[b] = x0
        sc[b + 1] = x1
        sc[b + 2] = x2
        sc[b + 3] = x3
        b += 4
    while b < sk:
        x = np.float32(0.0)
        for e in range(d):
            x += qs[e] * k2[b, e]
        sc[b] = x
        b += 1
    mx = np.float32(-np.inf)
    if p[16] != 0:
        bias = _arr(p[16] + 4 * n * sk, sk)
        for b in range(sk):
            sc[b] += bias[b]
    for b in range(sk):
        mx = max(mx, sc[b])
    total = np.float32(0.0)
    for b in range(sk):
        e_ = fexp(sc[b] - mx)
        sc[b] = e_
        total += e_
    o = np.zeros(dv, np.float32)
    _copy_rows(ov, 0, pv, p[10], t, dv)
    _copy_rows(ov, t * dv, nv, p[13], s, dv)
    b = 0
    while b + 8 <= sk:  # eight keys per update of o (one per key would chain through o)
        p0, p1, p2, p3 = sc[b], sc[b + 1], sc[b + 2], sc[b + 3]
        p4, p5, p6, p7 = sc[b + 4], sc[b + 5], sc[b + 6], sc[b + 7]
        for e in range(dv):
            o[e] += (p0 * v2[b, e] + p1 * v2[b + 1, e] + p2 * v2[b + 2, e] + p3 * v2[b + 3, e]) + (
                p4 * v2[b + 4, e] + p5 * v2[b + 5, e] + p6 * v2[b + 6, e] + p7 * v2[b + 7, e]
            )
        b += 8
    while b < sk:
        p0 = sc[b]
        for e in range(dv):
            o[e] += p0 * v2[b, e]
        b += 1
    inv = np.float32(1.0) / total
    for e in range(dv):
        out[e] = o[e] * inv


@cfunc(types.void(types.int64, types.int64))
def _task(c, params):  # type: ignore[no-untyped-def]
    """One head, called on libomp's threads (omp_fork.kiln_fork)."""
    _head(c, carray(ptr_of(params, np.int64(0)), (N_PARAMS,)))  # type: ignore[call-arg]


_TASK = _task.address


@njit(cache=False)
def _run(q, pk, nk, pv, nv, ok, ov, bias, out, scale, fork, threads):  # type: ignore[no-untyped-def]
    """Fill the parameter block from the arrays (3-D ``[nb, rows, d]``, unit stride along d; ``ok``,
    ``ov``, ``out`` and a non-empty ``bias`` C-contiguous) and run every head."""
    nb, t, s = q.shape[0], pk.shape[1], nk.shape[1]
    p = np.empty(N_PARAMS, np.int64)
    p[0], p[1] = q.ctypes.data, q.strides[0] // 4
    p[2], p[3], p[4] = pk.ctypes.data, pk.strides[0] // 4, pk.strides[1] // 4
    p[5], p[6], p[7] = nk.ctypes.data, nk.strides[0] // 4, nk.strides[1] // 4
    p[8], p[9], p[10] = pv.ctypes.data, pv.strides[0] // 4, pv.strides[1] // 4
    p[11], p[12], p[13] = nv.ctypes.data, nv.strides[0] // 4, nv.strides[1] // 4
    p[14], p[15] = ok.ctypes.data, ov.ctypes.data
    p[16] = bias.ctypes.data if bias.size else 0
    p[17] = out.ctypes.data
    p[18], p[19], p[20], p[21], p[22] = nb, t, s, q.shape[2], pv.shape[2]
    p[23] = scale.ctypes.data
    if threads <= 1 or fork == 0 or nb == 1:
        for c in range(nb):
            _head(c, p)
    else:
        call_i64(fork, (_TASK, p.ctypes.data, nb, threads), (q, pk, nk, pv, nv, ok, ov, bias, out, scale, p))  # type: ignore[call-arg]


@dataclass
class KvAttention:
    """``run(q, past_k, new_k, past_v, new_v, k_out, v_out, bias, out)``: see the module docstring.
    Arrays are 3-D ``[heads, rows, d]`` with unit stride along d; ``k_out``, ``v_out``, ``out`` and
    a non-empty ``bias`` (``[heads, keys]``) C-contiguous. ``parallel``: split the heads over the
    libomp team (``numba.get_num_threads()`` threads), else run them on the calling thread."""

    scale: float
    parallel: bool = True

    def __post_init__(self) -> None:
        self._scale = np.array([self.scale], np.float32)
        self._fork = 0
        if self.parallel:
            # no libomp: one thread (the qmatmul kernels warn about it already)
            with contextlib.suppress(BackendError):
                self._fork = omp_fork.compiled_fork().address

    def run(self, q: np.ndarray, pk: np.ndarray, nk: np.ndarray, pv: np.ndarray, nv: np.ndarray,
            ok: np.ndarray, ov: np.ndarray, bias: np.ndarray, out: np.ndarray) -> None:  # fmt: skip
        threads = numba.get_num_threads() if self._fork else 1
        _run(q, pk, nk, pv, nv, ok, ov, bias, out, self._scale, self._fork, threads)


@cache
def kernel_source() -> str:
    """The Python source of the per-head kernel (what ``kiln show`` prints for this step)."""
    return "\n\n".join(inspect.getsource(f.py_func) for f in (_copy_rows, _head))


@dataclass(frozen=True)
class KvAppend:
    """An ``attention`` node whose K and V are the concats that append this step's rows."""

    attention: Node
    k_concat: Node
    v_concat: Node


def find_kv_appends(graph: Graph, view_ops: frozenset[str]) -> list[KvAppend]:
    """The decode attentions the fused kernel can take: one query row (sq = 1), float32, K and V
    each a concat of two operands along the key axis (past, then new), and nothing but views
    reading either concat before the attention runs (the concats' buffers are filled there)."""
    producer, users = graph.producers(), graph.users()
    order = {n: i for i, n in enumerate(graph.nodes)}
    found = []
    for n in graph.nodes:
        if n.op != "attention" or any(v.tensor_type.scalar_dtype != f32 for v in n.operands[:3]):
            continue
        q, k, v = (x.tensor_type.static_shape for x in n.operands[:3])
        if len(q) < 2 or q[-2] != 1:
            continue
        cats = [producer.get(x) for x in n.operands[1:3]]
        if not all(c is not None and c.op == "concat" and len(c.operands) == 2 for c in cats):
            continue
        k_cat, v_cat = cats
        assert k_cat is not None and v_cat is not None
        if k_cat is v_cat or any(c.attrs.axis % len(shape) != len(shape) - 2  # type: ignore[attr-defined]
                                 for c, shape in ((k_cat, k), (v_cat, v))):  # fmt: skip
            continue
        if all(_read_after(c.result, n, order, users, view_ops) for c in (k_cat, v_cat)):
            found.append(KvAppend(n, k_cat, v_cat))
    return found


def _read_after(
    v: Value, at: Node, order: dict[Node, int], users: dict[Value, list[Node]], view_ops: frozenset[str]
) -> bool:
    """Whether every node that reads ``v``'s data (through views) runs after ``at`` or is ``at``."""
    for u in users.get(v, []):
        if u is at:
            continue
        if u.op in view_ops:
            if not all(_read_after(r, at, order, users, view_ops) for r in u.results):
                return False
        elif order[u] < order[at]:
            return False
    return True
