"""Bit-serial popcount kernels: bit-sliced weights times bit-sliced int8 activations.

A bit-sliced weight row holds one 64-bit word per 64 weights for each bit ``i`` of the code ``u``
(plane ``P_i``); an int8 activation row is sliced the same way into planes ``X_j`` of its two's
complement bytes, so ``x = sum_{j<7} 2^j X_j - 2^7 X_7``. The integer dot product of a group is

    sum_k u_k x_k = sum_i sum_j 2^(i+j) sgn_j popcount(P_i & X_j & group_mask)     (sgn_7 = -1)

and the scheme's offset and scale are applied per group exactly as the other int8 kernels do
(``s * (a * acc - c * sum(x))``), so the results are the same integers. The work is
``bits * 8`` AND+POPCNT per 64 weights: it scales with the weight width, and it is what a CPU
without integer dot-product instructions (no AVX-512 VNNI) runs fastest; LLVM vectorises the word
loops into ``vpopcntq`` where AVX-512 VPOPCNTDQ exists.

Binary activations (``x ~= alpha * s``, ``s`` in {-1, +1}, sign bits ``B``: 1 where ``s = +1``) need
one plane of the activations: ``sum_k u_k s_k = 2 sum_i 2^i popcount(P_i & B) - sum_i 2^i
popcount(P_i)`` and ``sum_k s_k = 2 popcount(B) - gl``, so a group costs ``2 * bits`` popcounts
per 64 weights and its offset term uses the sum of signs.

Groups must be whole words (``gl % 64 == 0``) or divide a word (``64 % gl == 0``): a group is
then one masked part of a word.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from ...ir.dtypes import Layout, QuantType


def supports(q: QuantType, k: int, gl: int, act: str) -> bool:
    """Whether these kernels cover this weight structure."""
    words = k % 64 == 0 and (gl % 64 == 0 or 64 % gl == 0)
    return q.layout == Layout.BITSLICED and act in ("int8", "binary") and words


@intrinsic
def _popcnt(typingctx, x):  # type: ignore[no-untyped-def]
    """The number of set bits of a uint64 (llvm.ctpop.i64: one POPCNT, or vpopcntq when vectorised)."""
    sig = types.int64(types.uint64)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.ctpop(args[0])

    return sig, codegen


@njit(fastmath=True)
def slice_activations(xq: np.ndarray, xplanes: np.ndarray) -> None:
    """``xplanes[m, j, w]``: bit ``t`` is bit ``j`` of the byte of ``xq[m, 64 w + t]``."""
    m_rows, k = xq.shape
    for m in range(m_rows):
        for w in range(k // 64):
            for j in range(8):
                word = np.uint64(0)
                for t in range(64):
                    byte = np.uint64(np.uint8(xq[m, w * 64 + t]))
                    word |= ((byte >> np.uint64(j)) & np.uint64(1)) << np.uint64(t)
                xplanes[m, j, w] = word


@njit(parallel=True, fastmath=True)
def popcount_int8(xplanes, sx, xs, planes, gl, scales, cvals, a, out):  # type: ignore[no-untyped-def]
    """``out[m, n] = xs[m] * sum_g scales[n, g] * (a * acc - cvals[n, g] * sx[m, g])`` with
    ``acc`` the integer dot product of group g from popcounts (module docstring)."""
    m_rows = xplanes.shape[0]
    n_rows, bits, words = planes.shape
    groups = scales.shape[1]
    for n in prange(n_rows):
        wacc = np.empty(words, np.int64)
        for m in range(m_rows):
            if gl >= 64:
                # per word, all plane pairs: the word loops vectorise (vpopcntq, shifts, adds)
                wacc[:] = 0
                for i in range(bits):
                    for j in range(7):
                        for w in range(words):
                            wacc[w] += _popcnt(planes[n, i, w] & xplanes[m, j, w]) << (i + j)  # type: ignore[call-arg]
                    for w in range(words):  # the sign plane of the activations weighs -2^7
                        wacc[w] -= _popcnt(planes[n, i, w] & xplanes[m, 7, w]) << (i + 7)  # type: ignore[call-arg]
            tot = 0.0  # float64, as the Numba int8 kernel: exact for any integer sum
            for g in range(groups):
                acc = 0
                if gl >= 64:
                    for w in range(g * (gl // 64), (g + 1) * (gl // 64)):
                        acc += wacc[w]
                else:  # groups inside a word: one masked part of it
                    w = g * gl // 64
                    mask = ((np.uint64(1) << np.uint64(gl)) - np.uint64(1)) << np.uint64(g * gl % 64)
                    for i in range(bits):
                        for j in range(8):
                            c: int = _popcnt(planes[n, i, w] & xplanes[m, j, w] & mask)  # type: ignore[call-arg]
                            acc += -(c << (i + 7)) if j == 7 else c << (i + j)
                tot += scales[n, g] * (a * acc - cvals[n, g] * sx[m, g])
            out[m, n] = tot * xs[m]


@njit(inline="always", fastmath=True)
def row_alpha(row: np.ndarray) -> np.float32:
    """The binary-activation scale of one row, as ``ir.ops.quant.binarize_rows``: float32 mean(|x|)."""
    return np.float32(np.abs(row).astype(np.float32).sum() / np.float32(row.shape[0]))


@njit(fastmath=True)
def slice_signs(x: np.ndarray, xbits: np.ndarray, alpha: np.ndarray) -> None:
    """Binary activations (``ir.ops.quant.binarize_rows``): ``xbits[m, w]`` bit ``t`` is set where
    ``x[m, 64 w + t] >= 0``; ``alpha[m]`` is the float32 mean of ``|x[m]|``."""
    m_rows, k = x.shape
    for m in range(m_rows):
        alpha[m] = row_alpha(x[m])
        for w in range(k // 64):
            word = np.uint64(0)
            for t in range(64):
                if x[m, w * 64 + t] >= 0:
                    word |= np.uint64(1) << np.uint64(t)
            xbits[m, w] = word


ROW_BLOCK = 16  # weight rows per parallel task of popcount_binary


@njit(parallel=True, fastmath=True)
def popcount_binary(xbits, alpha, planes, gl, scales, cvals, a, out):  # type: ignore[no-untyped-def]
    """``out[m, n] = alpha[m] * sum_g scales[n, g] * (a * sum_k u_k s_k - cvals[n, g] * sum_k s_k)``
    over each group's weights, from popcounts of the planes with the sign bits (module docstring)."""
    m_rows = xbits.shape[0]
    n_rows, bits, words = planes.shape
    groups = scales.shape[1]
    per = max(1, gl // 64)  # words per group (groups inside a word: one masked part of it)
    signs = np.empty((m_rows, groups), np.float32)  # sum_k s_k per group: the same for every row of W
    for m in range(m_rows):
        for g in range(groups):
            if gl >= 64:
                c = 0
                for w in range(g * per, (g + 1) * per):
                    c += _popcnt(xbits[m, w])  # type: ignore[call-arg]
            else:
                c = _popcnt(xbits[m, g * gl // 64] & _group_mask(g, gl))  # type: ignore[call-arg]
            signs[m, g] = 2 * c - gl
    blocks = (n_rows + ROW_BLOCK - 1) // ROW_BLOCK
    for blk in prange(blocks):  # a block of weight rows per task: scratch rows per task
        wu = np.empty(words, np.int64)
        acc = np.empty(groups, np.float32)  # integer group sums, exact in float32 (< 2^24)
        for n in range(blk * ROW_BLOCK, min(n_rows, (blk + 1) * ROW_BLOCK)):
            for m in range(m_rows):
                if gl >= 64:  # per word, every plane: the word loops vectorise (vpopcntq)
                    wu[:] = 0
                    for i in range(bits):
                        for w in range(words):
                            p = planes[n, i, w]
                            wu[w] += (2 * _popcnt(p & xbits[m, w]) - _popcnt(p)) << i  # type: ignore[call-arg]
                    for g in range(groups):
                        t = 0
                        for w in range(g * per, (g + 1) * per):
                            t += wu[w]
                        acc[g] = t
                else:
                    for g in range(groups):
                        w = g * gl // 64
                        mask = _group_mask(g, gl)
                        xb = xbits[m, w] & mask
                        t = 0
                        for i in range(bits):
                            p = planes[n, i, w] & mask
                            t += (2 * _popcnt(p & xb) - _popcnt(p)) << i  # type: ignore[call-arg]
                        acc[g] = t
                # the scales in one vectorised pass over the groups
                tot = np.float32(0.0)
                for g in range(groups):
                    tot += scales[n, g] * (a * acc[g] - cvals[n, g] * signs[m, g])
                out[m, n] = tot * alpha[m]


@njit(inline="always")
def _group_mask(g, gl):  # type: ignore[no-untyped-def]
    """The bits of a word that group ``g`` covers: all of them for groups of whole words."""
    if gl >= 64:
        return ~np.uint64(0)
    return ((np.uint64(1) << np.uint64(gl)) - np.uint64(1)) << np.uint64(g * gl % 64)
