"""Helpers the generated JAX code calls (``lib.<name>`` in the kernel source).

Each helper is the jax.numpy form of one op's reference semantics (ir/ops/*.py) where that takes
more than one expression: integer wrapping, casts, truncating division, integer powers, stable
top-k, n-d gathers, the normalisations, attention and the quantized weight formats (ir/quant.py).
They run while jax traces the kernel, so everything here is staged into the one XLA program.
Operands arrive in their compute dtype (f16/bf16 already widened to f32 by the generated code).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from ...ir.dtypes import DType, Layout, QuantType, parse_dtype
from ...ir.quant import affine, group_len

Array = Any  # a traced jax array


@functools.cache
def dtype(name: str) -> DType:
    return parse_dtype(name)


def wrap(x: Array, to: str) -> Array:
    """Integers of any dtype wrapped (two's complement) to ``to``'s width, in its storage dtype."""
    dt = dtype(to)
    x = x.astype(dt.np_dtype)  # an integer convert truncates to the storage width
    if dt.is_storage_exact:
        return x
    if dt.kind == "u":
        return x & ((1 << dt.bits) - 1)
    shift = 8 * dt.np_dtype.itemsize - dt.bits
    return (x << shift) >> shift  # >> is arithmetic on signed ints: sign-extends bit bits-1


def cast(x: Array, to: str) -> Array:
    """``cast``: float -> int truncates toward zero, NaN/inf become 0, the rest wraps (mod 2^64,
    then to the width); x -> bool is x != 0; floats round to nearest even."""
    dt = dtype(to)
    if dt.is_bool:
        return x != 0
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.int64 if dt.is_int else jnp.float32)
    if not dt.is_int:
        if x.dtype in (jnp.float16, jnp.bfloat16):
            x = x.astype(jnp.float32)  # bf16 -> f16 rounds once, from the f32 value
        return x.astype(dt.np_dtype)
    if jnp.issubdtype(x.dtype, jnp.floating):
        # Exact in f64: every f16/bf16/f32 value is a float64, and fmod by 2^64 is exact.
        t = x.astype(jnp.float64)
        t = jnp.where(jnp.isfinite(t), jnp.trunc(t), 0.0)
        t = jnp.fmod(t, 2.0**64)
        t = jnp.where(t >= 2.0**63, t - 2.0**64, t)
        t = jnp.where(t < -(2.0**63), t + 2.0**64, t)
        x = t.astype(jnp.int64)
    return wrap(x, to)


def int_div(a: Array, b: Array) -> Array:
    """Integer division truncating toward zero; x / 0 = 0; MIN / -1 wraps to MIN (no trap)."""
    a, b = jnp.broadcast_arrays(a, b)
    zero = b == 0
    if jnp.issubdtype(a.dtype, jnp.unsignedinteger):
        return jnp.where(zero, 0, lax.div(a, jnp.where(zero, 1, b))).astype(a.dtype)
    overflow = (a == jnp.iinfo(a.dtype).min) & (b == -1)
    q = lax.div(a, jnp.where(zero | overflow, 1, b))  # lax.div truncates toward zero, as C does
    return jnp.where(zero, 0, q).astype(a.dtype)  # MIN / 1 == MIN == -MIN wrapped


def int_pow(a: Array, b: Array) -> Array:
    """Integer power in i64 (wrapping); negative exponents give 0, or +-1 for bases +-1."""
    a64, b64 = a.astype(jnp.int64), b.astype(jnp.int64)
    r = jnp.power(a64, jnp.maximum(b64, 0))
    unit = jnp.abs(a) == 1
    neg = jnp.where(unit, jnp.where(b64 % 2 == 0, 1, a64), 0)
    return jnp.where(b64 < 0, neg, r)


def reduce_extreme(x: Array, fn: str, axes: tuple[int, ...], keepdims: bool, identity: float | int) -> Array:
    """max/min over axes; over an empty axis the identity (-inf, or the type's minimum, for max)."""
    f = jnp.max if fn == "max" else jnp.min
    if any(x.shape[a] == 0 for a in axes):
        return f(x, axis=axes, keepdims=keepdims, initial=identity)
    return f(x, axis=axes, keepdims=keepdims)


def arg_extreme(x: Array, fn: str, axis: int, keepdims: bool, select_last: bool) -> Array:
    """argmax/argmin (the first NaN wins, as in NumPy); ``select_last`` takes the last tie."""
    f = jnp.argmax if fn == "max" else jnp.argmin
    if not select_last:
        return f(x, axis=axis, keepdims=keepdims).astype(jnp.int64)
    idx = f(jnp.flip(x, axis), axis=axis, keepdims=keepdims)
    return (x.shape[axis] - 1 - idx).astype(jnp.int64)


def cumsum(x: Array, axis: int, exclusive: bool, reverse: bool) -> Array:
    if jnp.issubdtype(x.dtype, jnp.integer):
        x = x.astype(jnp.int64)  # the reference sums integers in i64 and wraps once
    y = lax.cumsum(x, axis, reverse=reverse)
    return y - x if exclusive else y  # as the reference: an exclusive sum is the inclusive one less x


def _max_keep(x: Array, axis: int | tuple[int, ...]) -> Array:
    return jnp.max(x, axis=axis, keepdims=True, initial=-jnp.inf)  # initial: empty rows are fine


def softmax(x: Array, axis: int) -> Array:
    e = jnp.exp(x - _max_keep(x, axis))
    return e / jnp.sum(e, axis=axis, keepdims=True)


def log_softmax(x: Array, axis: int) -> Array:
    s = x - _max_keep(x, axis)
    return s - jnp.log(jnp.sum(jnp.exp(s), axis=axis, keepdims=True))


def layer_norm(x: Array, w: Array, b: Array, axis: int, eps: float) -> Array:
    axes = tuple(range(axis, x.ndim))
    mean = jnp.mean(x, axis=axes, keepdims=True)
    xc = x - mean
    var = jnp.mean(jnp.square(xc), axis=axes, keepdims=True)
    return xc / jnp.sqrt(var + eps) * w + b


def rms_norm(x: Array, w: Array, axis: int, eps: float) -> Array:
    axes = tuple(range(axis, x.ndim))
    ms = jnp.mean(jnp.square(x), axis=axes, keepdims=True)
    return x / jnp.sqrt(ms + eps) * w


def gelu(x: Array, approximate: str) -> Array:
    if approximate == "tanh":
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * (x * x * x))
        return 0.5 * x * (1.0 + jnp.tanh(inner))
    return 0.5 * x * (1.0 + lax.erf(x / math.sqrt(2.0)))


def _index(idx: Array, n: int) -> Array:
    """Indices as i32/i64 with negative ones counted from the end (the reference rejects indices
    out of range; inside one XLA program nothing can raise, so those are clamped instead)."""
    wide = jnp.int64 if idx.dtype.itemsize == 8 else jnp.int32
    idx = idx.astype(wide)
    return jnp.where(idx < 0, idx + n, idx)


def take(x: Array, idx: Array, axis: int) -> Array:
    """``gather``: np.take with negative indices."""
    return jnp.take(x, _index(idx, x.shape[axis]), axis=axis, mode="clip")


def gather_nd(x: Array, idx: Array, batch_dims: int) -> Array:
    """ONNX GatherND: the last axis of ``idx`` indexes dims batch_dims.. of ``x``."""
    b, k = batch_dims, idx.shape[-1]
    n = math.prod(x.shape[:b])
    xr = x.reshape((n, *x.shape[b:]))
    ir = idx.reshape((n, -1, k))
    cols = [_index(ir[..., j], x.shape[b + j]) for j in range(k)]

    def one(xb: Array, *cs: Array) -> Array:
        return xb[tuple(cs)]

    out = jax.vmap(one)(xr, *cols)
    return out.reshape((*idx.shape[:-1], *x.shape[b + k :]))


def topk(x: Array, k: int, axis: int, largest: bool) -> tuple[Array, Array]:
    """The k largest (smallest) along axis, sorted; ties keep the lower index first.

    Sorts a key as the reference does (-x, or ~x for ints, so that the type's minimum does not
    overflow); -0.0 and +0.0 tie and NaNs sort last, as in NumPy (XLA's sort is a total order).
    """
    if x.dtype == jnp.bool_:
        key = -x.astype(jnp.int8) if largest else x.astype(jnp.int8)
    elif jnp.issubdtype(x.dtype, jnp.integer):
        key = ~x if largest else x
    else:
        key = -x if largest else x
        key = jnp.where(key == 0, jnp.zeros_like(key), key)
        key = jnp.where(jnp.isnan(key), jnp.full_like(key, jnp.nan), key)  # positive NaN: last
    iota = lax.broadcasted_iota(jnp.int64, x.shape, axis)
    _, order = lax.sort((key, iota), dimension=axis, is_stable=True, num_keys=1)
    idx = lax.slice_in_dim(order, 0, k, axis=axis)
    return jnp.take_along_axis(x, idx, axis=axis), idx


def iota(start: float, step: float, n: int, to: str) -> Array:
    """start + step * arange(n), computed in f64 (or i64) and rounded (or wrapped) once."""
    dt = dtype(to)
    if dt.is_int:
        return wrap(start + step * jnp.arange(n, dtype=jnp.int64), to)
    return (start + step * jnp.arange(n, dtype=jnp.float64)).astype(dt.np_dtype)


def attention(
    q: Array, k: Array, v: Array, bias: Array | None, scale: float, causal: bool, precision: Any
) -> Array:
    """softmax(q @ k^T * scale + bias [causal, aligned to the end]) @ v over the last two axes."""
    # matmuls as the reference writes them: XLA drops the unit query dim of a decode step from
    # this form (a matrix-vector product), not from the equivalent einsum
    s = jnp.matmul(q, jnp.swapaxes(k, -1, -2), precision=precision) * jnp.asarray(scale, q.dtype)
    if bias is not None:
        s = s + bias
    if causal:
        sq, sk = s.shape[-2], s.shape[-1]
        keep = lax.broadcasted_iota(jnp.int32, (sq, sk), 1) <= lax.broadcasted_iota(
            jnp.int32, (sq, sk), 0
        ) + (sk - sq)
        s = jnp.where(keep, s, -jnp.inf)
    e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
    p = e / jnp.sum(e, axis=-1, keepdims=True)
    return jnp.matmul(p, v, precision=precision)


# --- quantized weights (formats: ir/quant.py) ----------------------------------------------------


def unpack(q: QuantType, codes: Array, k: int) -> Array:
    """The unsigned codes ``u: [N, K]`` (uint8) held by ``codes`` in ``q``'s layout."""
    n = codes.shape[0]
    if q.layout == Layout.BITSLICED:
        # [N, b, K/64] words: bit j of word w of plane i is bit i of code 64 w + j
        shifts = jnp.arange(64, dtype=jnp.uint64)
        bits = ((codes[..., None] >> shifts) & 1).astype(jnp.uint8).reshape(n, q.bits, k)
        u = bits[:, 0]
        for i in range(1, q.bits):
            u = u | (bits[:, i] << i)
        return u
    # packed, LSB first: every `per` codes fill `nbytes` whole bytes (8 codes in `bits` bytes for
    # odd widths); those bytes make one little-endian word, and the codes are its bit fields
    g = math.gcd(q.bits, 8)
    per, nbytes = 8 // g, q.bits // g
    wt = jnp.uint32 if nbytes <= 4 else jnp.uint64
    b = codes.reshape(n, k // per, nbytes).astype(wt)
    word = b[..., 0]
    for j in range(1, nbytes):
        word = word | (b[..., j] << (8 * j))
    fields = (word[..., None] >> (jnp.arange(per, dtype=wt) * q.bits)) & ((1 << q.bits) - 1)
    return fields.astype(jnp.uint8).reshape(n, k)


def dequantize(q: QuantType, k: int, codes: Array, scales: Array, zeros: Array | None) -> Array:
    """``W^T: f32[N, K]``: s * (a * u - c) per group, the reference's f32 arithmetic."""
    u = unpack(q, codes, k).astype(jnp.float32)
    n = u.shape[0]
    gl = group_len(q, k)
    a, c = affine(q)
    if c is None:
        assert zeros is not None, "asym weights come with zero points (the verifier checks)"
        off = zeros.astype(jnp.float32)[:, :, None]
    else:
        off = jnp.float32(c)
    s = scales.astype(jnp.float32)[:, :, None]
    return (s * (a * u.reshape(n, k // gl, gl) - off)).reshape(n, k)


def quantize_rows_int8(x: Array) -> Array:
    """Dynamic per-row int8 activations (ir/ops/quant.py): x ~= xq * scale, returned as f32."""
    amax = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
    scale = jnp.where(amax > 0, amax / jnp.float32(127.0), jnp.float32(1.0))
    xq = jnp.clip(jnp.rint(x / scale), -127, 127)
    return xq * scale


def binarize_rows(x: Array) -> Array:
    """Binary activations (ir/ops/quant.py): ``sign * mean(|x|)`` per row as f32, sign(0) = +1."""
    alpha = jnp.mean(jnp.abs(x), axis=-1, keepdims=True, dtype=jnp.float32)
    # `x >= 0` is what makes 0 and -0.0 give +alpha and NaN give -alpha, as in the reference
    return jnp.where(x >= 0, alpha, -alpha)


def qmatmul(
    x: Array, codes: Array, scales: Array, zeros: Array | None, q: QuantType, k: int, act: str, precision: Any
) -> Array:
    """x @ W with W unpacked and dequantized inside the program (f32 result)."""
    x = x.astype(jnp.float32)
    if act == "int8":
        x = quantize_rows_int8(x)
    elif act == "binary":
        x = binarize_rows(x)
    elif act != "f32":
        raise ValueError(f"qmatmul: unknown act {act!r}")
    wt = dequantize(q, k, codes, scales, zeros)  # [N, K]
    return lax.dot_general(x, wt, (((x.ndim - 1,), (1,)), ((), ())), precision=precision)


def qgather(codes: Array, scales: Array, zeros: Array | None, idx: Array, q: QuantType, k: int) -> Array:
    """Rows ``idx`` of a quantized table stored transposed (only those rows are dequantized)."""
    flat = _index(idx, codes.shape[0]).reshape(-1)
    pick = lambda a: jnp.take(a, flat, axis=0, mode="clip")  # noqa: E731
    rows = dequantize(q, k, pick(codes), pick(scales), None if zeros is None else pick(zeros))
    return rows.reshape((*idx.shape, k))
