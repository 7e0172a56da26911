"""Low-bit matmul kernels: ``out = x @ dequantize(codes, scales, zeros)`` without expanding the weights.

``make_qmatmul(q, k, n, act=...)`` returns a callable kernel. Three activation modes:

- ``act="int8"``: each activation row is quantized to int8 (symmetric, scale absmax/127) and the
  products are integer. On CPUs with AVX-512 VNNI the hot loop is LLVM IR from ``llvm_kernels``
  (vpdpbusd, weights decoded in registers); elsewhere, or for shapes it does not cover, a Numba
  kernel computes the same integers.
- ``act="f32"``: activations stay float32; a Numba kernel dequantizes one weight row at a time into
  an L1-sized scratch row and takes dot products with every activation row.
- ``act="binary"``: one bit per activation, ``x ~= mean(|x|) * sign(x)`` per row. Bit-sliced weights
  take popcount products with the sign bits (popcount.py); other layouts run the float32 kernels on
  the binarized rows.

GEMV and GEMM share one driver: rows of W are split over threads in chunks, and each LLVM call
handles up to four activation rows so a decoded weight block is reused four times (GEMM), while
M <= 4 (GEMV) is a single pass over the weights. Kernels are compiled once per process per weight
structure and shared; Numba functions here are not disk-cached (``cache=True`` would write next to
the package, and the cache directory cannot be passed per call), the LLVM ones take ~0.1 s.
"""

from __future__ import annotations

import inspect
import os
import warnings
from dataclasses import dataclass, field
from functools import cache
from typing import Any

if "GOMP_SPINCOUNT" not in os.environ:  # see __init__.py: set before numba starts OpenMP
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba
import numpy as np
from numba import carray, cfunc, njit, prange, types

from ...ir.dtypes import Layout, QuantType, Scheme
from ...ir.errors import BackendError
from ...ir.quant import affine, codes_dtype, codes_shape, group_len, n_groups
from .. import openmp
from . import amx_kernels as amx
from . import llvm_kernels as lk
from . import omp_fork, popcount
from .ffi import call_i64, ptr_of
from .mathlib import as_f32

ACTS = ("f32", "int8", "binary")


# --- activation quantization (shared by the LLVM and the Numba int8 paths) ------------------------


@njit(cache=False, fastmath=True)
def _binarize_f32(x: np.ndarray) -> np.ndarray:
    """``alpha * sign(x)`` per row as ``ir.ops.quant.binarize_rows`` (float32 mean of |x|; +1 for x >= 0)."""
    m_rows, k = x.shape
    out = np.empty((m_rows, k), np.float32)
    for m in range(m_rows):
        alpha = popcount.row_alpha(x[m])
        for i in range(k):
            out[m, i] = alpha if x[m, i] >= 0 else -alpha
    return out


@njit(inline="always")
def _deinterleave(src: np.ndarray, dst: np.ndarray, r: int) -> None:
    """One block of ``64 r`` int8 activations into the ``split`` decoder's order: weight
    ``i r + j`` to ``j 64 + i`` (llvm_kernels.x_permutation). Inlined where ``r`` is a literal,
    so that the loops have constant strides and vectorise."""
    for i in range(64):
        for j in range(r):
            dst[j * 64 + i] = src[i * r + j]


@njit(cache=False)
def _quantize_act(x: np.ndarray, r: int, gl: int, xq: np.ndarray, sx: np.ndarray, xs: np.ndarray) -> None:
    """Row-wise int8 quantization as ``ir.ops.quant.quantize_rows_int8``, stored in the kernels'
    order (``r`` weights per code byte of the ``split`` decoder, see ``_deinterleave``; r = 1: the
    natural order), with the integer group sums in ``sx``. Loops index slices by their counters:
    Numba's negative-index check on computed offsets keeps them from vectorising."""
    m_rows, k = x.shape
    q = np.empty(k, np.int8)
    # |x|max on the bit patterns: for floats without their sign, unsigned order is float order
    # (NaN above inf), and an integer max vectorises where a float max (NaN rules) does not
    bits = x.view(np.uint32)
    top = np.empty(m_rows, np.uint32)
    for m in range(m_rows):
        row_bits = bits[m]
        mx = np.uint32(0)
        for i in range(k):
            mx = max(mx, row_bits[i] & np.uint32(0x7FFFFFFF))
        top[m] = mx
    amaxes = top.view(np.float32)
    for m in range(m_rows):
        amax = amaxes[m]
        scale = amax / np.float32(127.0) if amax > 0 else np.float32(1.0)
        xs[m] = amax / np.float32(127.0)
        row = x[m]
        for i in range(k):  # x / scale as the reference does
            q[i] = np.int8(min(max(np.rint(row[i] / scale), np.float32(-127.0)), np.float32(127.0)))
        for g in range(k // gl):
            grp = q[g * gl : (g + 1) * gl]
            acc = np.int32(0)  # integer sums vectorise (a float sum is one dependent add per element)
            for i in range(gl):
                acc += np.int32(grp[i])
            sx[m, g] = np.float32(acc)  # exact: |sum| <= 127 gl
        dst = xq[m]
        sb = 64 * r
        for b0 in range(0, k, sb):
            blk, out = q[b0 : b0 + sb], dst[b0 : b0 + sb]
            if r == 2:
                _deinterleave(blk, out, 2)
            elif r == 4:
                _deinterleave(blk, out, 4)
            elif r == 8:
                _deinterleave(blk, out, 8)
            else:
                for i in range(sb):
                    out[i] = blk[i]


@njit(cache=False)
def _half_bits_to_f32(h: np.ndarray, out: np.ndarray) -> None:
    """IEEE half-precision bit patterns to float32, exactly as NumPy converts them (zeros and
    subnormals, inf and NaN payloads included); about 0.35 ns an element here."""
    for i in range(h.shape[0]):
        x = np.int32(h[i])
        e = (x >> np.int32(10)) & np.int32(0x1F)
        m = x & np.int32(0x3FF)
        sign = (x & np.int32(0x8000)) << np.int32(16)  # to bit 31 (int32: the sign bit)
        ebits = np.int32(255) if e == np.int32(31) else e + np.int32(112)
        sub = np.float32(m) * np.float32(5.960464477539063e-08)  # m * 2^-24, exact
        sub = -sub if sign != np.int32(0) else sub
        out[i] = sub if e == np.int32(0) else as_f32(sign | (ebits << np.int32(23)) | (m << np.int32(13)))  # type: ignore[call-arg]


def scales_f32(scales: np.ndarray) -> np.ndarray:
    """The scales as C-contiguous float32. Float16 scales are converted by ``_half_bits_to_f32``:
    NumPy's float16 conversion costs about 1 ns an element here (118 us for a 4096x4096 weight's
    131072 group-128 scales, on every call of the Numba and AMX paths)."""
    if scales.dtype != np.float16:
        return np.ascontiguousarray(scales, np.float32)
    out = np.empty(scales.shape, np.float32)
    _half_bits_to_f32(np.ascontiguousarray(scales).view(np.uint16).reshape(-1), out.reshape(-1))
    return out


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


@njit(inline="always")
def _unpack_row_f32(row: np.ndarray, bitsliced: bool, bits: int, k: int, u: np.ndarray) -> None:
    """Codes of one row as float32."""
    ui = np.empty(k, np.int32)
    _unpack_row(row, bitsliced, bits, k, ui)
    for i in range(k):
        u[i] = np.float32(ui[i])


@njit(parallel=True, fastmath=True, error_model="numpy")
def _numba_f32(x, codes, bitsliced, bits, gl, scales, cvals, a, out):  # type: ignore[no-untyped-def]
    """One row of W at a time: codes unpacked to floats and dequantized into an L1-sized row
    (``s * (a*u - c)``, a vectorised loop), then one dot product per activation row; the
    dequantized matrix never exists."""
    m_rows, k = x.shape
    for n in prange(codes.shape[0]):
        w = np.empty(k, np.float32)
        _unpack_row_f32(codes[n], bitsliced, bits, k, w)
        for g in range(k // gl):
            s, c = scales[n, g], cvals[n, g]
            for i in range(g * gl, g * gl + gl):
                w[i] = s * (a * w[i] - c)
        for m in range(m_rows):
            xm = x[m]
            acc = np.float32(0.0)
            for i in range(k):  # a contiguous fastmath reduction: vectorised (a BLAS call per row is slower)
                acc += xm[i] * w[i]
            out[m, n] = acc


#: the parameter block of the driver (int64 each): the address of the (R, R-row kernel, 1-row
#: kernel) table per activation-block height, then sizes, addresses and byte strides per
#: activation row (0 for the arrays a kernel variant does not read)
DRIVE = ("addrs", "chunk", "n", "m_rows", "k", "codes", "scales", "zeros", "x", "x_row", "xsum", "xsum_row",
         "xs", "xs_row", "out")  # fmt: skip
N_DRIVE = len(DRIVE)


@njit
def _drive_chunk(c, p):  # type: ignore[no-untyped-def]
    """Weight rows ``[c * chunk, (c + 1) * chunk)`` against every activation row, in blocks of up
    to 4 activation rows (``p``: the DRIVE block)."""
    addrs = carray(ptr_of(p[0], np.int64(0)), (4, 3))  # type: ignore[call-arg]
    chunk, n, m_rows, k = p[1], p[2], p[3], p[4]
    n0 = c * chunk
    n1 = min(n, n0 + chunk)
    m0 = 0
    while m0 < m_rows:
        mb = min(4, m_rows - m0)
        nr, many, one = addrs[mb - 1, 0], addrs[mb - 1, 1], addrs[mb - 1, 2]
        split = n0 + (n1 - n0) // nr * nr
        x_, xsum_, xs_ = p[8] + m0 * p[9], p[10] + m0 * p[11], p[12] + m0 * p[13]
        out_ = p[14] + 4 * m0 * n
        if split > n0:
            call_i64(many, (n0, split, p[5], p[6], p[7], x_, k, xsum_, xs_, out_, n), ())  # type: ignore[call-arg]
        if n1 > split:
            call_i64(one, (split, n1, p[5], p[6], p[7], x_, k, xsum_, xs_, out_, n), ())  # type: ignore[call-arg]
        m0 += mb


@cfunc(types.void(types.int64, types.int64))
def _chunk_body(c, params):  # type: ignore[no-untyped-def]
    """One chunk of the parallel driver, called on libomp's threads (omp_fork.kiln_fork)."""
    _drive_chunk(c, carray(ptr_of(params, np.int64(0)), (N_DRIVE,)))  # type: ignore[call-arg]


_CHUNK_BODY = _chunk_body.address  # a constant in _drive


@njit
def _drive(fork, threads, params, keep):  # type: ignore[no-untyped-def]
    """Every chunk on ``threads`` libomp threads (``fork``: kiln_fork's address), or on the calling
    thread when ``threads`` is 1. ``keep``: the caller's temporaries that ``params`` points into,
    held alive for the call (see ffi.call_i64)."""
    n_chunks = (params[2] + params[1] - 1) // params[1]
    if threads <= 1:
        for c in range(n_chunks):
            _drive_chunk(c, params)
    else:
        call_i64(fork, (_CHUNK_BODY, params.ctypes.data, n_chunks, threads), keep)  # type: ignore[call-arg]


@njit
def _drive_params(addrs, chunk, out, k, codes, scales, zeros, x, x_row, xsum, xsum_row, xs, xs_row):  # type: ignore[no-untyped-def]
    """The DRIVE block; ``x``, ``xsum``, ``xs`` are addresses (the caller keeps their arrays)."""
    return np.array([addrs.ctypes.data, chunk, out.shape[1], out.shape[0], k, codes.ctypes.data,
                     scales.ctypes.data, zeros.ctypes.data, x, x_row, xsum, xsum_row, xs, xs_row,
                     out.ctypes.data], np.int64)  # fmt: skip


@njit
def _run(x, r, gl, steps, first, addrs, chunk, codes, scales, zeros, out, fork, threads):  # type: ignore[no-untyped-def]
    """The int8 path in one call: quantize the activations, lay their group sums out as accumulator
    lanes (see llvm_kernels.Plan.first_lanes), then drive the kernels."""
    m_rows, k = x.shape
    xbuf = np.empty(m_rows * k + 64, np.int8)
    xoff = (64 - (xbuf.ctypes.data % 64)) % 64
    xq = xbuf[xoff : xoff + m_rows * k].reshape(m_rows, k)
    sx = np.empty((m_rows, k // gl), np.float32)
    xs = np.empty(m_rows, np.float32)
    _quantize_act(x, r, gl, xq, sx, xs)
    per = first.shape[0]
    xsl = np.zeros((m_rows, steps, 16), np.int32)
    for m in range(m_rows):
        for t in range(steps):
            for j in range(per):
                xsl[m, t, first[j]] = np.int32(sx[m, t * per + j])  # exact: |sum| <= 127 K
    params = _drive_params(addrs, chunk, out, k, codes, scales, zeros, xq.ctypes.data, k, xsl.ctypes.data,
                           4 * steps * 16, xs.ctypes.data, 4)  # fmt: skip
    _drive(fork, threads, params, (xq, xsl, xs))


@njit
def _run_f32(x, perm, addrs, chunk, codes, scales, zeros, out, fork, threads):  # type: ignore[no-untyped-def]
    """The float-activation path: x copied into the kernels' block order, then the same driver (the
    kernels read no group sums and no activation scales)."""
    m_rows, k = x.shape
    sb = perm.shape[0]
    xp = np.empty((m_rows, k), np.float32)
    for m in range(m_rows):
        for b0 in range(0, k, sb):
            for p in range(sb):
                xp[m, b0 + p] = x[m, b0 + perm[p]]
    params = _drive_params(addrs, chunk, out, k, codes, scales, zeros, xp.ctypes.data, 4 * k, 0, 0, 0, 0)
    _drive(fork, threads, params, (xp,))


# --- the kernel object ---------------------------------------------------------------------------


def _offsets(q: QuantType) -> tuple[int, int]:
    """``(a, c)`` with ``c = -1`` meaning the stored zero points (the kernels take plain ints)."""
    a, c = affine(q)
    return a, -1 if c is None else c


@cache
def _compiled(plan: lk.Plan) -> lk.Compiled:
    return lk.compile_plan(plan)


# the arrays a kernel was called with (codes, scales, zeros), then what the LLVM kernels read
_Prepared = tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray, np.ndarray]


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
    addresses: np.ndarray = field(default_factory=lambda: np.zeros((4, 3), np.int64), repr=False)
    _perm: np.ndarray = field(init=False, repr=False)
    _r: int = field(init=False, repr=False, default=1)
    _first: np.ndarray = field(init=False, repr=False)
    _scale_dtype: np.dtype = field(init=False, repr=False)
    _zeros: np.ndarray = field(init=False, repr=False)
    #: libomp workers spin this long after a kernel before they sleep (next GEMV starts at once)
    spin_ms: int = 5
    _fork: int = field(default=0, repr=False)  # omp_fork.kiln_fork's address; 0: run serially
    _set_spin: Any = field(default=None, repr=False)
    _prepared: _Prepared | None = field(default=None, repr=False)
    bit_serial: bool = False  # the Numba path runs the bit-serial popcount kernels (popcount.py)
    amx: amx.AmxCompiled | None = field(default=None, repr=False)  # the GEMM for M >= AMX_MIN_ROWS
    _amx_order: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)

    def __post_init__(self) -> None:
        if self.compiled is not None and self.plan is not None:
            p = self.plan
            self.addresses = np.array(self.compiled.addresses, np.int64)
            perm = lk.x_permutation(p)
            self._perm = np.array(perm if perm is not None else range(p.sb), np.int64)
            self._r = 8 // p.bits if p.decode == "split" else 1  # see _deinterleave
            self._first = np.array(p.first_lanes, np.int64)
            self._scale_dtype = np.dtype(np.float16 if p.scale_f16 else np.float32)
            self._zeros = np.zeros(1, np.uint8)  # a valid address for schemes without zero points
            if amx.supports(self.plan) and amx.amx_available():
                self.amx = amx.compile_amx(self.plan)
                self._amx_order = amx.amx_order(self.plan)
            try:
                self._fork = omp_fork.compiled_fork().address
                self._set_spin = openmp.runtime().kmp_set_blocktime
            except BackendError as e:
                warnings.warn(f"qmatmul: running on one thread: {e}", stacklevel=2)

    @property
    def path(self) -> str:
        if self.compiled is None:
            return "numba-popcount" if self.bit_serial else f"numba-{self.act}"
        return (
            "llvm-vnni"
            if self.act == "int8"
            else f"llvm-f32{' (binarized x)' if self.act == 'binary' else ''}"
        )

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
        if self.act == "binary" and not self.bit_serial:  # the float kernels on alpha * sign(x)
            self.check(x, codes, scales, zeros, out)
            x = _binarize_f32(np.ascontiguousarray(x))
        if self.compiled is None:
            self.check(x, codes, scales, zeros, out)
            self._call_numba(np.ascontiguousarray(x), codes, scales, zeros, out)
            return
        prep = self._prepared
        if prep is None or prep[0] is not codes or prep[1] is not scales or prep[2] is not zeros:
            self.check(x, codes, scales, zeros, out)
            prep = self._prepare(codes, scales, zeros)
        elif (type(x) is not np.ndarray or x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != self.k
              or x.shape[0] < 1 or type(out) is not np.ndarray or out.dtype != np.float32
              or out.shape != (x.shape[0], self.n) or not out.flags.c_contiguous):  # fmt: skip
            self.check(x, codes, scales, zeros, out)  # raises with the message
        if self.amx is not None and x.shape[0] >= AMX_MIN_ROWS:
            self._run_amx(np.ascontiguousarray(x), prep, out)
        else:
            self._run_llvm(np.ascontiguousarray(x), prep, out)

    def _run_amx(self, x: np.ndarray, prep: _Prepared, out: np.ndarray) -> None:
        """The AMX GEMM (amx_kernels.py): activations int8 in the kernels' block order, then in
        the VNNI layout; panels of 32 weight rows forked over the threads."""
        assert self.plan is not None and self.amx is not None
        p, m = self.plan, x.shape[0]
        _, scales, zeros, codes, _, _ = prep
        xq = np.empty((m, self.k), np.int8)
        sx = np.empty((m, p.groups), np.float32)
        xs = np.zeros(-(-m // 32) * 32, np.float32)
        _quantize_act(x, self._r, p.gl, xq, sx, xs[:m])
        mp = xs.shape[0]
        xv = np.empty((self.k // 64, mp // 16, 16, 64), np.int8)
        sxt = np.empty((p.groups, mp), np.float32)
        amx.vnni_activations(xq, xv, sx, sxt, self._amx_order)
        s32 = scales_f32(scales)
        z = np.ascontiguousarray(zeros) if zeros is not None else self._zeros
        threads = (self.threads or numba.get_num_threads()) if self._fork else 1
        if threads > 1:
            self._set_spin(self.spin_ms)
        fields = {"decode": self.amx.decode, "group": self.amx.group, "epilogue": self.amx.epilogue,
                  "codes": codes.ctypes.data, "scales": s32.ctypes.data, "zeros": z.ctypes.data,
                  "xv": xv.ctypes.data, "sxt": sxt.ctypes.data, "xs": xs.ctypes.data, "out": out.ctypes.data,
                  "n": self.n, "k": self.k, "gl": p.gl, "mp": mp, "m_rows": m}  # fmt: skip
        params = np.array([fields[f] for f in amx.PARAMS], np.int64)
        amx.run_panels(self._fork, threads, params, -(-self.n // 32))

    def _call_numba(self, x: np.ndarray, codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None,
                    out: np.ndarray) -> None:  # fmt: skip
        if not self.threads:
            self._run_numba(x, codes, scales, zeros, out)
            return
        saved = numba.get_num_threads()
        numba.set_num_threads(min(self.threads, int(numba.config.NUMBA_NUM_THREADS)))  # type: ignore[attr-defined]
        try:
            self._run_numba(x, codes, scales, zeros, out)
        finally:
            numba.set_num_threads(saved)

    def _prepare(self, codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None) -> _Prepared:
        """The weight-side arguments of the LLVM kernels, kept while the same (checked) arrays come
        back, as the constants of a compiled graph do. Only views are kept: when an array had to
        be converted, the copy is remade on every call so that a caller's in-place update counts."""
        if scales.dtype != self._scale_dtype or not scales.flags.c_contiguous:
            scales_k = np.ascontiguousarray(scales, self._scale_dtype)
        else:
            scales_k = scales
        codes_k = np.ascontiguousarray(codes)
        zeros_k = self._zeros if zeros is None else np.ascontiguousarray(zeros)
        raw = scales_k.view(np.uint8)  # Numba has no float16 arrays; the kernel reads them as half
        views = codes_k is codes and scales_k is scales and (zeros is None or zeros_k is zeros)
        prep = (codes, scales, zeros, codes_k, raw, zeros_k)
        self._prepared = prep if views else None
        return prep

    def _run_llvm(self, x: np.ndarray, prep: _Prepared, out: np.ndarray) -> None:
        assert self.plan is not None
        p = self.plan
        _, _, _, codes, raw_scales, zeros_arg = prep
        threads = (self.threads or numba.get_num_threads()) if self._fork else 1
        if threads > 1:
            self._set_spin(self.spin_ms)
        chunk = _chunk_rows(self.n, x.shape[0], threads)
        if p.act == "f32":
            _run_f32(
                x, self._perm, self.addresses, chunk, codes, raw_scales, zeros_arg, out, self._fork, threads
            )
        else:
            _run(x, self._r, p.gl, p.steps, self._first, self.addresses, chunk, codes, raw_scales, zeros_arg,
                 out, self._fork, threads)  # fmt: skip

    def _run_numba(self, x: np.ndarray, codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None,
                   out: np.ndarray) -> None:  # fmt: skip
        q, k = self.q, self.k
        gl = group_len(q, k)
        a, c = _offsets(q)
        s32 = scales_f32(scales)
        cvals = (
            zeros.astype(np.float32) if c < 0 and zeros is not None
            else np.broadcast_to(np.float32(c), s32.shape)  # read-only, no memory
        )  # fmt: skip
        sliced = q.layout == Layout.BITSLICED
        rows = np.ascontiguousarray(codes).reshape(self.n, -1)
        if self.bit_serial and self.act == "binary":
            xbits = np.empty((x.shape[0], k // 64), np.uint64)
            alpha = np.empty(x.shape[0], np.float32)
            popcount.slice_signs(x, xbits, alpha)
            popcount.popcount_binary(
                xbits, alpha, np.ascontiguousarray(codes), gl, s32, cvals, np.float32(a), out
            )
            return
        if self.act != "int8":  # f32, or binary activations already binarized (__call__)
            _numba_f32(x, rows, sliced, q.bits, gl, s32, cvals, np.float32(a), out)
            return
        m = x.shape[0]
        xq = np.empty((m, k), np.int8)
        sx = np.empty((m, k // gl), np.float32)
        xs = np.empty(m, np.float32)
        _quantize_act(x, 1, gl, xq, sx, xs)
        if self.bit_serial:
            xplanes = np.empty((m, 8, k // 64), np.uint64)
            popcount.slice_activations(xq, xplanes)
            planes = np.ascontiguousarray(codes)
            popcount.popcount_int8(xplanes, sx, xs, planes, gl, s32, cvals, np.float32(a), out)
            return
        _numba_int8(xq, sx, xs, rows, sliced, q.bits, gl, s32, cvals, np.float32(a), out)


def _chunk_rows(n: int, m_rows: int, threads: int) -> int:
    """Weight rows per chunk of the driver. Up to MAX_MB activation rows the weights are read
    once: one contiguous run per thread, so that each thread streams its rows and pays the
    per-chunk setup once (GEMVs of GPT-2's decode shapes, 2 threads, separate processes: 0-18%
    faster than 64-row chunks dealt round-robin; 4096x4096 the same within the noise). More rows
    read every weight block once per block of activation rows: chunks of at most 64 rows keep
    those re-reads in L2."""
    if m_rows <= lk.MAX_MB:
        return max(4, -(-n // (4 * threads)) * 4)
    return max(4, min(64, -(-n // (8 * threads))))


KERNELS = ("vnni", "popcount", "unpack")
AMX_MIN_ROWS = 32  # activation rows from which the AMX GEMM beats the VNNI kernels (benchmarks/lowbit.py)


def make_qmatmul(
    q: QuantType,
    k: int,
    n: int,
    *,
    act: str = "f32",
    threads: int | None = None,
    vnni: bool | None = None,
    kernel: str | None = None,
) -> QMatmulKernel:
    """A kernel computing ``out = x @ dequantize(q, k, codes, scales, zeros)`` for ``x: f32[M, k]``.

    ``kernel``: ``"vnni"`` (LLVM IR, AVX-512 VNNI), ``"popcount"`` (bit-serial, bit-sliced
    weights with int8 activations), ``"unpack"`` (Numba, any format), or None to choose: VNNI
    where the CPU has it, else popcount where it applies, else unpack. ``vnni=False`` leaves the
    VNNI kernels out of the choice.
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
    if kernel is not None and kernel not in KERNELS:
        raise BackendError(f"qmatmul: kernel must be one of {KERNELS} or None, got {kernel!r}")
    gl = group_len(q, k)
    bit_serial = popcount.supports(q, k, gl, act)
    # binary activations: popcount products where the weights are bit-sliced (an AND and two
    # POPCNTs per bit plane and 64 weights), else the float kernels on the binarized rows
    binary_popcount = act == "binary" and bit_serial and kernel in (None, "popcount")
    plan = None
    if kernel in (None, "vnni") and vnni is not False and not binary_popcount:
        if lk.host_has_vnni():
            a, c = _offsets(q)
            scale_f16 = q.scale_dtype.np_dtype == np.float16
            plan = lk.plan_for(
                q.bits,
                q.layout == Layout.BITSLICED,
                k,
                gl,
                a,
                c,
                scale_f16,
                "f32" if act == "binary" else act,
            )
        if kernel == "vnni" and plan is None:
            why = (
                "this CPU lacks AVX-512 VNNI"
                if not lk.host_has_vnni()
                else f"they do not cover {q.name}, K={k}"
            )
            raise BackendError(f"qmatmul: no VNNI kernel: {why}; use kernel=None to pick another")
    if kernel == "popcount" and not bit_serial:
        raise BackendError(
            f"qmatmul: the popcount kernels need bit-sliced weights, int8 or binary activations and groups "
            f"that are whole 64-weight words or divide one; got {q.name}, act={act}, group length {gl}"
        )
    use_popcount = plan is None and bit_serial and kernel != "unpack"
    return QMatmulKernel(
        q, k, n, act, threads, plan, _compiled(plan) if plan is not None else None, bit_serial=use_popcount
    )


def kernel_source(kern: QMatmulKernel) -> str:
    """Readable source of what runs: the generated LLVM IR, or the Numba kernels' Python source."""
    if kern.compiled is not None:
        if kern.amx is not None:
            return (
                f"{kern.compiled.ir_text}\n\n; the AMX GEMM for M >= {AMX_MIN_ROWS} rows\n{kern.amx.ir_text}"
            )
        return kern.compiled.ir_text
    fns: list[Any]
    if kern.bit_serial:
        fns = [_quantize_act, popcount.slice_activations, popcount.popcount_int8]
    elif kern.act == "f32":
        fns = [_unpack_row, _unpack_row_f32, _numba_f32]
    else:
        fns = [_quantize_act, _unpack_row, _numba_int8]
    return "\n\n".join(inspect.getsource(f.py_func) for f in fns)
