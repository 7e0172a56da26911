"""Quantized weight formats: the storage of every ``QuantType`` and its golden semantics.

A quantized weight is the right operand of ``qmatmul``: logically ``W: f32[K, N]`` (``y = x @ W``,
K the reduction axis). It is stored as three plain arrays:

- ``codes``: unsigned integers ``u[n, k]`` in ``[0, 2^bits - 1]``, in the type's layout:
  - ``packed``: ``uint8[N, K * bits / 8]``; row ``n`` is the bit stream of ``u[n, 0..K)``, least
    significant bit first (at 4 bits, ``k`` even is the low nibble: onnxruntime's MatMulNBits order).
  - ``bitsliced``: ``uint64[N, bits, K / 64]``; bit ``j`` of word ``w`` of plane ``i`` is bit ``i`` of
    ``u[n, 64 w + j]`` (one packed bit-plane per bit, 64 weights per word along K).
- ``scales``: ``[N, G]`` in the type's scale dtype, ``G = K / group`` (``group = 0``: ``G = 1``).
- ``zeros``: ``uint8[N, G]``, for ``asym`` only.

Every scheme dequantizes as ``W[k, n] = s[n, g] * (a * u[n, k] - c[n, g])`` with ``g = k // group``:

======== ===  ===============  ==========================================================
scheme    a   c                levels
======== ===  ===============  ==========================================================
sym       1   2^(bits-1)       integers -(2^(b-1)-1) .. 2^(b-1)-1 (code 0 unused)
asym      1   zeros[n, g]      integers 0 .. 2^b-1, shifted by the zero point
bipolar   2   2^bits - 1       odd integers -(2^b-1) .. 2^b-1: sum_i 2^i b_i, b_i in {-1, +1}
======== ===  ===============  ==========================================================

so a kernel computes ``y[n] = sum_g s[n,g] * (a * sum_{k in g} u[n,k] x[k] - c[n,g] * sum_{k in g} x[k])``
and never expands the weights to float in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dtypes import Layout, QuantType, Scheme
from .errors import KilnError


class QuantizeError(KilnError):
    """Weights that cannot be quantized as asked (bad widths, groups, shapes or values)."""


@dataclass(frozen=True)
class QuantizedWeight:
    """One quantized ``[K, N]`` weight: its format and its three stored arrays."""

    qtype: QuantType
    k: int
    n: int
    codes: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray | None = None

    def dequantize(self) -> np.ndarray:
        """The float32 ``[K, N]`` weight this stands for."""
        return dequantize(self.qtype, self.k, self.codes, self.scales, self.zeros)

    @property
    def nbytes(self) -> int:
        return int(self.codes.nbytes + self.scales.nbytes + (0 if self.zeros is None else self.zeros.nbytes))


def group_len(q: QuantType, k: int) -> int:
    return q.group or k


def n_groups(q: QuantType, k: int) -> int:
    return k // group_len(q, k)


def check_shape(q: QuantType, k: int, where: str = "") -> None:
    """Raise QuantizeError unless a reduction length ``k`` can be stored as ``q``."""
    at = f" {where}" if where else ""
    if k <= 0:
        raise QuantizeError(f"cannot quantize{at}: reduction length K={k}")
    if q.group and k % q.group:
        raise QuantizeError(
            f"quantization group {q.group} does not divide K={k}{at}; "
            "pick a group that divides K (or group=0 for one scale per output channel)"
        )
    if q.layout == Layout.PACKED and (k * q.bits) % 8:
        raise QuantizeError(f"packed {q.bits}-bit codes need K*bits divisible by 8, K={k}{at}")
    if q.layout == Layout.BITSLICED and k % 64:
        raise QuantizeError(f"bit-sliced codes need K divisible by 64 (64 weights per word), K={k}{at}")


def codes_shape(q: QuantType, k: int, n: int) -> tuple[int, ...]:
    if q.layout == Layout.PACKED:
        return (n, k * q.bits // 8)
    return (n, q.bits, k // 64)


def codes_dtype(q: QuantType) -> np.dtype:
    return np.dtype(np.uint8 if q.layout == Layout.PACKED else np.uint64)


def scales_shape(q: QuantType, k: int, n: int) -> tuple[int, int]:
    return (n, n_groups(q, k))


def affine(q: QuantType) -> tuple[int, int | None]:
    """``(a, c)`` of the dequantization ``s * (a*u - c)`` (the table above); ``c`` is None for
    ``asym``, whose offset is the stored zero point."""
    if q.scheme == Scheme.SYM:
        return 1, 2 ** (q.bits - 1)
    if q.scheme == Scheme.ASYM:
        return 1, None
    return 2, 2**q.bits - 1


def offsets(q: QuantType, zeros: np.ndarray | None, n: int, g: int) -> tuple[int, np.ndarray]:
    """``(a, c)`` with ``c`` broadcast to ``[N, G]``."""
    a, c = affine(q)
    if c is not None:
        return a, np.full((n, g), c, np.int32)
    if zeros is None:
        raise QuantizeError("asymmetric quantization needs zero points")
    return a, zeros.astype(np.int32)


def _offset_of(q: QuantType, z: np.ndarray | None) -> tuple[int, np.ndarray | float]:
    """``(a, c)`` for groups laid out ``[N, G, L]``: c broadcast over L (zero points, or a constant)."""
    a, c = affine(q)
    if c is None:
        assert z is not None
        return a, z[:, :, None]
    return a, float(c)


# --- storage: codes [N, K] <-> packed / bit-sliced ---------------------------------------------


def pack(q: QuantType, u: np.ndarray) -> np.ndarray:
    """Store unsigned codes ``u: [N, K]`` in ``q``'s layout."""
    u = np.asarray(u)
    n, k = u.shape
    check_shape(q, k)
    if u.size and (u.min() < 0 or u.max() >= 2**q.bits):
        raise QuantizeError(f"codes outside [0, {2**q.bits - 1}] cannot be stored in {q.bits} bits")
    bits = (u.astype(np.uint8)[:, :, None] >> np.arange(q.bits, dtype=np.uint8)) & 1  # [N, K, b]
    if q.layout == Layout.PACKED:
        return np.packbits(bits.reshape(n, k * q.bits), axis=1, bitorder="little")
    planes = np.packbits(bits.transpose(0, 2, 1), axis=2, bitorder="little")  # [N, b, K/8]
    return np.ascontiguousarray(planes).view("<u8").astype(np.uint64)


def unpack(q: QuantType, codes: np.ndarray, k: int) -> np.ndarray:
    """The unsigned codes ``u: uint8[N, K]`` held by ``codes`` (the inverse of :func:`pack`)."""
    n = codes.shape[0]
    if q.layout == Layout.PACKED:
        bits = np.unpackbits(codes, axis=1, count=k * q.bits, bitorder="little").reshape(n, k, q.bits)
    else:
        raw = np.ascontiguousarray(codes.astype("<u8")).view(np.uint8)  # [N, b, K/8]
        bits = np.unpackbits(raw, axis=2, count=k, bitorder="little").transpose(0, 2, 1)
    weights = (1 << np.arange(q.bits, dtype=np.uint16)).astype(np.uint16)
    return (bits.astype(np.uint16) @ weights).astype(np.uint8)


def dequantize(
    q: QuantType, k: int, codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None = None
) -> np.ndarray:
    """The float32 ``W: [K, N]`` held by ``codes``/``scales``/``zeros`` (golden semantics)."""
    u = unpack(q, codes, k).astype(np.float32)  # [N, K]
    n = u.shape[0]
    gl = group_len(q, k)
    a, c = offsets(q, zeros, n, k // gl)
    s = scales.astype(np.float32)
    w = s[:, :, None] * (a * u.reshape(n, k // gl, gl) - c[:, :, None].astype(np.float32))
    return np.ascontiguousarray(w.reshape(n, k).T)


# --- quantization: round to nearest, with a clipping search per group ------------------------------


def levels(q: QuantType) -> tuple[int, int]:
    """The integer range ``(lo, hi)`` of ``a*u - c`` for symmetric schemes."""
    if q.scheme == Scheme.BIPOLAR:
        return -(2**q.bits - 1), 2**q.bits - 1
    m = 2 ** (q.bits - 1) - 1
    return -m, m


def _codes_for(q: QuantType, wg: np.ndarray, s: np.ndarray, z: np.ndarray | None) -> np.ndarray:
    """Nearest codes for groups ``wg: [N, G, L]`` under scales ``s: [N, G]`` (and zeros)."""
    inv = np.where(s == 0, 0.0, 1.0 / np.where(s == 0, 1.0, s))[:, :, None]
    top = 2**q.bits - 1
    if q.scheme == Scheme.SYM:
        m = 2 ** (q.bits - 1)
        return np.clip(np.rint(wg * inv), -(m - 1), m - 1) + m
    if q.scheme == Scheme.ASYM:
        assert z is not None
        return np.clip(np.rint(wg * inv) + z[:, :, None], 0, top)
    return np.clip(np.rint((wg * inv + top) / 2), 0, top)


def _round_scales(q: QuantType, s: np.ndarray) -> np.ndarray:
    # quantize against the scale as stored, so dequantization reproduces the chosen levels
    return s.astype(q.scale_dtype.np_dtype).astype(np.float32)


def _candidate(
    q: QuantType, wg: np.ndarray, ratio: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    top = 2**q.bits - 1
    if q.scheme == Scheme.ASYM:
        lo = np.minimum(wg.min(axis=2), 0.0) * ratio
        hi = np.maximum(wg.max(axis=2), 0.0) * ratio
        s = _round_scales(q, (hi - lo) / top)
        safe = np.where(s == 0, 1.0, s)
        z = np.clip(np.rint(-lo / safe), 0, top).astype(np.float32)
    else:
        s = _round_scales(q, np.abs(wg).max(axis=2) * ratio / levels(q)[1])
        z = None
    u = _codes_for(q, wg, s, z)
    return u, s, z


def _error(q: QuantType, wg: np.ndarray, u: np.ndarray, s: np.ndarray, z: np.ndarray | None) -> np.ndarray:
    a, c = _offset_of(q, z)
    deq = s[:, :, None] * (a * u - c)
    return np.square(deq - wg).sum(axis=2)


def _refit_scales(
    q: QuantType, wg: np.ndarray, u: np.ndarray, s: np.ndarray, z: np.ndarray | None
) -> np.ndarray:
    """Least-squares scales for the chosen codes: s = <w, l> / <l, l> with l = a*u - c per group.

    For fixed codes this minimises the squared error, so it only ever improves on the search; a
    refit that the scale dtype's rounding makes worse is not taken.
    """
    a, c = _offset_of(q, z)
    lv = a * u - c
    den = np.square(lv).sum(axis=2)
    fit = _round_scales(q, np.where(den > 0, (wg * lv).sum(axis=2) / np.where(den > 0, den, 1.0), s))
    keep = _error(q, wg, u, fit, z) < _error(q, wg, u, s, z)
    return np.where(keep, fit, s)


def quantize(
    w: np.ndarray,
    q: QuantType,
    *,
    name: str = "weight",
    clip_search: int = 10,
    min_ratio: float = 0.5,
    refit: bool = True,
) -> QuantizedWeight:
    """Quantize ``w: [K, N]`` (``y = x @ w``) to ``q``, deterministically.

    Round-to-nearest per group; with ``clip_search > 0`` each group also tries shrinking its range
    by ``clip_search`` ratios down to ``min_ratio`` and keeps the one with the least squared error
    (ratio 1.0, plain round-to-nearest, is always a candidate, so the search never does worse);
    ``refit`` then moves each group's scale to the least-squares optimum for its codes.
    ``clip_search=0, refit=False`` is plain round-to-nearest.
    """
    q.verify()
    w = np.asarray(w)
    if w.ndim != 2:
        raise QuantizeError(f"cannot quantize {name}: expected a [K, N] matrix, got shape {list(w.shape)}")
    if not np.issubdtype(w.dtype, np.floating):
        raise QuantizeError(f"cannot quantize {name}: weights must be floating point, got {w.dtype}")
    if not np.all(np.isfinite(w)):
        bad = int(np.size(w) - np.count_nonzero(np.isfinite(w)))
        raise QuantizeError(f"cannot quantize {name}: it holds {bad} NaN/Inf values; fix the weights first")
    k, n = w.shape
    check_shape(q, k, f"for {name}")
    gl = group_len(q, k)
    wg = np.ascontiguousarray(w.astype(np.float32).T).reshape(n, k // gl, gl)
    best_u, best_s, best_z = _candidate(q, wg, 1.0)
    best_e = _error(q, wg, best_u, best_s, best_z)
    for ratio in np.linspace(1.0, min_ratio, clip_search + 1)[1:] if clip_search > 0 else []:
        u, s, z = _candidate(q, wg, float(ratio))
        e = _error(q, wg, u, s, z)
        better = e < best_e
        best_e = np.where(better, e, best_e)
        best_u = np.where(better[:, :, None], u, best_u)
        best_s = np.where(better, s, best_s)
        if z is not None and best_z is not None:
            best_z = np.where(better, z, best_z)
    if refit:
        best_s = _refit_scales(q, wg, best_u, best_s, best_z)
    codes = pack(q, best_u.reshape(n, k).astype(np.uint8))
    scales = best_s.astype(q.scale_dtype.np_dtype)
    zeros = None if best_z is None else best_z.astype(np.uint8)
    return QuantizedWeight(q, k, n, codes, scales, zeros)


def snr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    """Signal-to-noise ratio of ``approx`` against ``reference`` in dB."""
    ref = np.asarray(reference, np.float64)
    noise = float(np.sum(np.square(ref - np.asarray(approx, np.float64))))
    signal = float(np.sum(np.square(ref)))
    if noise == 0.0:
        return float("inf")
    return 10.0 * np.log10(signal / noise) if signal > 0 else float("-inf")
