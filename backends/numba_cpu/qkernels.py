"""Low-bit matmul kernels: ``out = x @ dequantize(codes, scales, zeros)`` without expanding the weights.

``make_qmatmul(q, k, n, act=...)`` returns a callable kernel. Two activation modes:

- ``act="int8"``: each activation row is quantized to int8 (symmetric, scale absmax/127) and the
  products are integer. On CPUs with AVX-512 VNNI the hot loop is LLVM IR from ``llvm_kernels``
  (vpdpbusd, weights decoded in registers); elsewhere, or for shapes it does not cover, a Numba
  kernel computes the same integers.
- ``act="f32"``: activations stay float32; a Numba kernel dequantizes one weight row at a time into
  an L1-sized scratch row and takes dot products with every activation row.

GEMV and GEMM share one driver: rows of W are split over threads in chunks, and each LLVM call
handles up to four activation rows so a decoded weight block is reused four times (GEMM), while
M <= 4 (GEMV) is a single pass over the weights. Kernels are compiled once per process per weight
structure and shared; Numba functions here are not disk-cached (``cache=True`` would write next to
the package, and the cache directory cannot be passed per call), the LLVM ones take ~0.1 s.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from functools import cache
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see __init__.py: set before numba starts OpenMP

import numba
import numpy as np
from numba import njit, prange

from ...ir.dtypes import Layout, QuantType, Scheme
from ...ir.errors import BackendError
from ...ir.quant import codes_dtype, codes_shape, group_len, n_groups
from . import llvm_kernels as lk

ACTS = ("f32", "int8")


# --- activation quantization (shared by the LLVM and the Numba int8 paths) ------------------------


def quantize_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NumPy statement of the int8 activation quantization: ``(xq int8[M, K], xs f32[M])``."""
    x = np.asarray(x, np.float32)
    amax = np.abs(x).max(axis=1)
    inv = np.where(amax > 0, np.float32(127.0) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    xq = np.clip(np.rint(x * inv[:, None]), -127, 127).astype(np.int8)
    return xq, (amax / np.float32(127.0)).astype(np.float32)


@njit(cache=False)
def _quantize_act(
    x: np.ndarray, perm: np.ndarray, gl: int, xq: np.ndarray, sx: np.ndarray, xs: np.ndarray
) -> None:
    """Row-wise int8 quantization as quantize_rows, stored in the kernel's block order, with group sums."""
    m_rows, k = x.shape
    sb = perm.shape[0]
    for m in range(m_rows):
        amax = np.float32(0.0)
        for i in range(k):
            amax = max(amax, abs(x[m, i]))
        inv = np.float32(127.0) / amax if amax > 0 else np.float32(0.0)
        xs[m] = amax / np.float32(127.0)
        for g in range(k // gl):
            sx[m, g] = 0.0
        for b0 in range(0, k, sb):
            for p in range(sb):
                v = np.rint(x[m, b0 + perm[p]] * inv)
                v = min(max(v, -127.0), 127.0)
                xq[m, b0 + p] = np.int8(v)
                sx[m, (b0 + perm[p]) // gl] += v


# --- the Numba kernels (no VNNI, shapes the LLVM kernels skip, and act="f32") ---------------------


@njit(inline="always")
def _unpack_row(row: np.ndarray, bitsliced: bool, bits: int, k: int, u: np.ndarray) -> None:
    """Codes of one weight row (``row``: its packed bytes, or its planes flattened) into ``u``."""
    if bitsliced:
        words = k // 64
        for i in range(k):
            u[i] = 0
        for b in range(bits):
            for w in range(words):
                word = np.uint64(row[b * words + w])
                for j in range(64):
                    u[w * 64 + j] += np.int32((word >> np.uint64(j)) & np.uint64(1)) << b
    else:
        mask = (1 << bits) - 1
        nbytes = row.shape[0]
        for i in range(k):
            pos = i * bits
            lo = pos >> 3
            v = np.int32(row[lo])
            if lo + 1 < nbytes:
                v |= np.int32(row[lo + 1]) << 8
            u[i] = (v >> (pos & 7)) & mask


@njit(parallel=True, fastmath=True)
def _numba_int8(xq, sx, xs, codes, bitsliced, bits, gl, scales, cvals, a, out):  # type: ignore[no-untyped-def]
    m_rows, k = xq.shape
    for n in prange(codes.shape[0]):
        u = np.empty(k, np.int32)
        _unpack_row(codes[n], bitsliced, bits, k, u)
        for m in range(m_rows):
            tot = 0.0
            for g in range(k // gl):
                acc = 0
                for i in range(g * gl, g * gl + gl):
                    acc += u[i] * np.int32(xq[m, i])
                tot += scales[n, g] * (a * acc - cvals[n, g] * sx[m, g])
            out[m, n] = tot * xs[m]


@njit(parallel=True, fastmath=True)
def _numba_f32(x, codes, bitsliced, bits, gl, scales, cvals, a, out):  # type: ignore[no-untyped-def]
    m_rows, k = x.shape
    for n in prange(codes.shape[0]):
        u = np.empty(k, np.int32)
        w = np.empty(k, np.float32)
        _unpack_row(codes[n], bitsliced, bits, k, u)
        for i in range(k):  # dequantize the row once, reuse it for every activation row
            g = i // gl
            w[i] = scales[n, g] * (a * u[i] - cvals[n, g])
        for m in range(m_rows):
            acc = np.float32(0.0)
            for i in range(k):
                acc += x[m, i] * w[i]
            out[m, n] = acc


@njit(parallel=True)
def _drive(f1, f2, f3, f4, chunk, n, m_rows, codes, scales, zeros, xq, kp, sx, groups, xs, out):  # type: ignore[no-untyped-def]
    """Run the LLVM kernels over chunks of weight rows (threads) and blocks of 4 activation rows."""
    for c in prange((n + chunk - 1) // chunk):
        n0 = c * chunk
        n1 = min(n, n0 + chunk)
        m0 = 0
        while m0 + 4 <= m_rows:
            f4(n0, n1, codes, scales, zeros, xq + m0 * kp, kp, sx + 4 * m0 * groups, xs + 4 * m0,
               out + 4 * m0 * n, n)  # fmt: skip
            m0 += 4
        r = m_rows - m0
        args = (n0, n1, codes, scales, zeros, xq + m0 * kp, kp, sx + 4 * m0 * groups, xs + 4 * m0,
                out + 4 * m0 * n, n)  # fmt: skip
        if r == 1:
            f1(*args)
        elif r == 2:
            f2(*args)
        elif r == 3:
            f3(*args)


# --- the kernel object ---------------------------------------------------------------------------


def _offsets(q: QuantType) -> tuple[int, int]:
    """``(a, c)`` with ``c = -1`` meaning the stored zero points."""
    if q.scheme == Scheme.SYM:
        return 1, 2 ** (q.bits - 1)
    if q.scheme == Scheme.ASYM:
        return 1, -1
    return 2, 2**q.bits - 1


@cache
def _compiled(plan: lk.Plan) -> lk.Compiled:
    return lk.compile_plan(plan)


@dataclass
class QMatmulKernel:
    """``kernel(x, codes, scales, zeros, out)`` writes ``out = x @ W``; see make_qmatmul."""

    q: QuantType
    k: int
    n: int
    act: str
    threads: int | None
    plan: lk.Plan | None  # the LLVM plan, None on the Numba path
    compiled: lk.Compiled | None = field(default=None, repr=False)

    @property
    def path(self) -> str:
        return "llvm-vnni" if self.compiled is not None else f"numba-{self.act}"

    def check(self, x: np.ndarray, codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None,
              out: np.ndarray) -> None:  # fmt: skip
        """Raise BackendError naming the first argument that does not fit this kernel."""
        q, k, n = self.q, self.k, self.n
        want = codes_shape(q, k, n)
        if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] != k or x.dtype != np.float32:
            got = f"{getattr(x, 'dtype', type(x).__name__)}{list(np.shape(x))}"
            raise BackendError(f"qmatmul: activations must be float32[M, {k}] (K={k}), got {got}")
        if x.shape[0] < 1:
            raise BackendError("qmatmul: activations need at least one row (M >= 1)")
        if codes.shape != want or codes.dtype != codes_dtype(q):
            raise BackendError(
                f"qmatmul: {q.name} codes for K={k}, N={n} must be {codes_dtype(q)}{list(want)}, "
                f"got {codes.dtype}{list(codes.shape)}"
            )
        if scales.shape != (n, n_groups(q, k)) or not np.issubdtype(scales.dtype, np.floating):
            raise BackendError(
                f"qmatmul: scales must be float[{n}, {n_groups(q, k)}], got {scales.dtype}{list(scales.shape)}"
            )
        if q.scheme == Scheme.ASYM:
            if zeros is None or zeros.shape != scales.shape or zeros.dtype != np.uint8:
                got = "None" if zeros is None else f"{zeros.dtype}{list(zeros.shape)}"
                raise BackendError(f"qmatmul: asym zero points must be uint8{list(scales.shape)}, got {got}")
        elif zeros is not None:
            raise BackendError(f"qmatmul: {q.scheme} quantization has no zero points, got an array")
        if out.shape != (x.shape[0], n) or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise BackendError(
                f"qmatmul: out must be C-contiguous float32[{x.shape[0]}, {n}], got {out.dtype}{list(out.shape)}"
            )

    def __call__(self, x: np.ndarray, codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None,
                 out: np.ndarray) -> None:  # fmt: skip
        self.check(x, codes, scales, zeros, out)
        saved = numba.get_num_threads()
        if self.threads:
            limit = int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
            numba.set_num_threads(min(self.threads, limit))
        try:
            if self.compiled is not None:
                self._run_llvm(np.ascontiguousarray(x), codes, scales, zeros, out)
            else:
                self._run_numba(np.ascontiguousarray(x), codes, scales, zeros, out)
        finally:
            numba.set_num_threads(saved)

    def _run_llvm(self, x: np.ndarray, codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None,
                  out: np.ndarray) -> None:  # fmt: skip
        assert self.compiled is not None and self.plan is not None
        p = self.plan
        m = x.shape[0]
        perm = _perm_array(p)
        xq = np.empty((m, self.k), np.int8)
        sx = np.empty((m, p.groups), np.float32)
        xs = np.empty(m, np.float32)
        _quantize_act(x, perm, p.gl, xq, sx, xs)
        codes = np.ascontiguousarray(codes)
        scales = np.ascontiguousarray(scales, np.float16 if p.scale_f16 else np.float32)
        zaddr = 0 if zeros is None else np.ascontiguousarray(zeros).ctypes.data
        threads = numba.get_num_threads()
        chunk = max(4, min(64, -(-self.n // (8 * threads))))
        f1, f2, f3, f4 = self.compiled.fns
        _drive(f1, f2, f3, f4, chunk, self.n, m, codes.ctypes.data, scales.ctypes.data, zaddr,
               xq.ctypes.data, self.k, sx.ctypes.data, p.groups, xs.ctypes.data, out.ctypes.data)  # fmt: skip
        # keep the buffers alive until the kernels are done (the addresses above are raw)
        del xq, sx, xs, codes, scales, zeros

    def _run_numba(self, x: np.ndarray, codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None,
                   out: np.ndarray) -> None:  # fmt: skip
        q, k = self.q, self.k
        gl = group_len(q, k)
        a, c = _offsets(q)
        s32 = np.ascontiguousarray(scales, np.float32)
        cvals = zeros.astype(np.float32) if c < 0 and zeros is not None else np.full(s32.shape, c, np.float32)
        sliced = q.layout == Layout.BITSLICED
        rows = np.ascontiguousarray(codes).reshape(self.n, -1)
        if self.act == "f32":
            _numba_f32(x, rows, sliced, q.bits, gl, s32, cvals, np.float32(a), out)
            return
        m = x.shape[0]
        xq = np.empty((m, k), np.int8)
        sx = np.empty((m, k // gl), np.float32)
        xs = np.empty(m, np.float32)
        _quantize_act(x, np.arange(k, dtype=np.int64), gl, xq, sx, xs)
        _numba_int8(xq, sx, xs, rows, sliced, q.bits, gl, s32, cvals, np.float32(a), out)


@cache
def _perm_cached(p: lk.Plan) -> np.ndarray:
    perm = lk.x_permutation(p)
    return np.array(perm if perm is not None else range(p.sb), dtype=np.int64)


def _perm_array(p: lk.Plan) -> np.ndarray:
    return _perm_cached(p)


def make_qmatmul(
    q: QuantType, k: int, n: int, *, act: str = "f32", threads: int | None = None, vnni: bool | None = None
) -> QMatmulKernel:
    """A kernel computing ``out = x @ dequantize(q, k, codes, scales, zeros)`` for ``x: f32[M, k]``.

    ``vnni=False`` forces the portable Numba path (tests use it); ``None`` detects the CPU.
    """
    from ...ir.errors import KilnError
    from ...ir.quant import check_shape

    if act not in ACTS:
        raise BackendError(f"qmatmul: act must be one of {ACTS}, got {act!r}")
    try:
        q.verify()
        check_shape(q, k)
    except KilnError as e:
        raise BackendError(f"qmatmul: {e}") from e
    if n < 1:
        raise BackendError(f"qmatmul: N must be >= 1, got {n}")
    if threads is not None and threads < 1:
        raise BackendError(f"qmatmul: threads must be >= 1, got {threads}")
    use_vnni = lk.host_has_vnni() if vnni is None else vnni and lk.host_has_vnni()
    plan = None
    if act == "int8" and use_vnni:
        a, c = _offsets(q)
        scale_f16 = q.scale_dtype.np_dtype == np.float16
        plan = lk.plan_for(q.bits, q.layout == Layout.BITSLICED, k, group_len(q, k), a, c, scale_f16)
    return QMatmulKernel(q, k, n, act, threads, plan, _compiled(plan) if plan is not None else None)


def kernel_source(kern: QMatmulKernel) -> str:
    """Readable source of what runs: the generated LLVM IR, or the Numba kernels' Python source."""
    if kern.compiled is not None:
        return kern.compiled.ir_text
    fns: list[Any] = (
        [_unpack_row, _numba_f32] if kern.act == "f32" else [_quantize_act, _unpack_row, _numba_int8]
    )
    return "\n\n".join(inspect.getsource(f.py_func) for f in fns)
