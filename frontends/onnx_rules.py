"""Per-operator ONNX import rules: a table from op type to a function building kiln ops.

Each rule gets the importer, the node's attributes (a dict) and its inputs (kiln values, None
for omitted optional inputs) and returns the values of the node's outputs, in order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..ir import quant
from ..ir.core import Value
from ..ir.dtypes import DType, Layout, QuantType, Scheme, u8
from ..ir.ops import Act, explicit_equation, normalize_slice
from ..ir.types import Dim, TensorType
from .onnx import Importer, OnnxImportError, _symbol, onnx_dtype, to_array

Args = list[Value | None]
Rule = Callable[[Importer, dict[str, Any], Args], list[Value]]


def attributes(node: Any) -> dict[str, Any]:
    import onnx

    out: dict[str, Any] = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if a.type == onnx.AttributeProto.FLOAT:
            v = float(str(np.float32(v)))  # the float32 the exporter meant: 1e-05, not 9.99e-06
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    out["_n_outputs"] = len(node.output)  # rules such as Split need the output count
    return out


def _t(v: Value) -> TensorType:
    return v.tensor_type


def _v(args: Args, i: int) -> Value:
    v = args[i] if i < len(args) else None
    if v is None:
        raise OnnxImportError(f"input #{i} is required")
    return v


def _opt(args: Args, i: int) -> Value | None:
    return args[i] if i < len(args) else None


def _axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise OnnxImportError(f"axis {axis} out of range for rank {rank}")
    return axis % rank if rank else 0


def _ints(imp: Importer, v: Value | None, what: str) -> list[int]:
    return [int(x) for x in np.ravel(imp.require_const(v, what))]


def _static(imp: Importer, v: Value, what: str) -> tuple[int, ...]:
    t = _t(v)
    if not t.is_static:
        raise OnnxImportError(
            f"{imp.node_desc}: {what} needs the static shape of {t}; bind its dims with "
            f"kiln.from_onnx(model, dims={{...}})"
        )
    return t.static_shape


def _cast_to(imp: Importer, v: Value, dt: DType) -> Value:
    return v if _t(v).scalar_dtype == dt else imp.emit("cast", v, dtype=dt)


# -- elementwise ---------------------------------------------------------------------------------
def unary(op: str) -> Rule:
    return lambda imp, a, args: [imp.emit(op, _v(args, 0))]


def binary(op: str) -> Rule:
    return lambda imp, a, args: [imp.emit(op, _v(args, 0), _v(args, 1))]


def _pow(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    x, y = _v(args, 0), _v(args, 1)
    return [imp.emit("pow", x, _cast_to(imp, y, _t(x).scalar_dtype))]


def _variadic(op: str) -> Rule:
    def rule(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
        vals = [v for v in args if v is not None]
        out = vals[0]
        for v in vals[1:]:
            out = imp.emit(op, out, v)
        return [out]

    return rule


def _mean(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    total = _variadic("add")(imp, a, args)[0]
    n = imp.constant(np.asarray(len([v for v in args if v is not None]), _t(total).scalar_dtype.np_dtype))
    return [imp.emit("div", total, n)]


def _clip(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    x = _v(args, 0)
    lo, hi = _opt(args, 1), _opt(args, 2)
    if lo is not None:
        x = imp.emit("maximum", x, lo)
    if hi is not None:
        x = imp.emit("minimum", x, hi)
    return [x]


def _gelu(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    return [imp.emit("gelu", _v(args, 0), approximate=a.get("approximate", "none"))]


def _cast(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    return [_cast_to(imp, _v(args, 0), onnx_dtype(a["to"], imp.node_desc))]


def _cast_like(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    return [_cast_to(imp, _v(args, 0), _t(_v(args, 1)).scalar_dtype)]


def _identity(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    return [_v(args, 0)]


def _dropout(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    x = _v(args, 0)
    training = _opt(args, 2)
    if training is not None and bool(np.ravel(imp.require_const(training, "training_mode"))[0]):
        raise OnnxImportError(
            f"{imp.node_desc}: Dropout in training mode is random; kiln imports inference graphs"
        )
    if a["_n_outputs"] == 1:
        return [x]
    return [x, imp.constant(np.ones(_static(imp, x, "Dropout's mask"), np.bool_), "mask")]


def _where(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    return [imp.emit("where", _v(args, 0), _v(args, 1), _v(args, 2))]


# -- linear algebra and normalisation ----------------------------------------------------------
def _gemm(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    x, w, c = _v(args, 0), _v(args, 1), _opt(args, 2)
    if a.get("transA", 0):
        x = imp.emit("transpose", x, perm=(1, 0))
    if a.get("transB", 0):
        w = imp.emit("transpose", w, perm=(1, 0))
    y = imp.emit("matmul", x, w)
    dt = _t(y).scalar_dtype.np_dtype
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    if alpha != 1.0:
        y = imp.emit("mul", y, imp.constant(np.asarray(alpha, dt), "alpha"))
    if c is not None:
        if beta != 1.0:
            c = imp.emit("mul", c, imp.constant(np.asarray(beta, dt), "beta"))
        y = imp.emit("add", y, c)
    return [y]


def _softmax(op: str) -> Rule:
    def rule(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
        x = _v(args, 0)
        rank = _t(x).rank
        if imp.opset >= 13:
            return [imp.emit(op, x, axis=_axis(a.get("axis", -1), rank))]
        # Before opset 13 the input is coerced to 2-D at axis (default 1) and normalised per row.
        shape = _static(imp, x, f"{op} before opset 13")
        ax = _axis(a.get("axis", 1), rank)
        flat = imp.emit("reshape", x, shape=(math.prod(shape[:ax]), math.prod(shape[ax:])))
        return [imp.emit("reshape", imp.emit(op, flat, axis=1), shape=shape)]

    return rule


def _norm_param(imp: Importer, p: Value, shape: tuple[Dim, ...]) -> Value:
    return p if _t(p).shape == shape else imp.emit("broadcast_to", p, shape=shape)


def _layer_norm(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    x, w, b = _v(args, 0), _v(args, 1), _opt(args, 2)
    ax = _axis(a.get("axis", -1), _t(x).rank)
    shape = _t(x).shape[ax:]
    if b is None:
        b = imp.constant(
            np.zeros(_static(imp, w, "a missing bias"), _t(w).scalar_dtype.np_dtype), "zero_bias"
        )
    w, b = _norm_param(imp, w, shape), _norm_param(imp, b, shape)
    eps = float(a.get("epsilon", 1e-5))
    y = imp.emit("layer_norm", x, w, b, axis=ax, eps=eps)
    if a["_n_outputs"] == 1:
        return [y]
    # Mean and InvStdDev outputs (training exports): computed apart, with keepdims.
    axes = tuple(range(ax, _t(x).rank))
    mean = imp.emit("reduce_mean", x, axes=axes, keepdims=True)
    d = imp.emit("sub", x, mean)
    var = imp.emit("reduce_mean", imp.emit("mul", d, d), axes=axes, keepdims=True)
    e = imp.constant(np.asarray(eps, _t(x).scalar_dtype.np_dtype), "eps")
    return [y, mean, imp.emit("rsqrt", imp.emit("add", var, e))]


def _rms_norm(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    x, w = _v(args, 0), _v(args, 1)
    ax = _axis(a.get("axis", -1), _t(x).rank)
    w = _norm_param(imp, w, _t(x).shape[ax:])
    return [imp.emit("rms_norm", x, w, axis=ax, eps=float(a.get("epsilon", 1e-5)))]


# -- reductions --------------------------------------------------------------------------------
def _reduce(op: str, axes_input_since: int) -> Rule:
    def rule(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
        x = _v(args, 0)
        rank = _t(x).rank
        if imp.opset >= axes_input_since:
            given = _opt(args, 1)
            axes = _ints(imp, given, "the axes input") if given is not None else []
        else:
            axes = list(a.get("axes", []))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return [x]
            axes = list(range(rank))
        norm = tuple(sorted({_axis(ax, rank) for ax in axes}))
        keep = bool(a.get("keepdims", 1))
        dt = _t(x).scalar_dtype
        if dt.is_bool and op in ("reduce_max", "reduce_min"):  # any / all
            y = imp.emit(op, imp.emit("cast", x, dtype=u8), axes=norm, keepdims=keep)
            return [imp.emit("cast", y, dtype=dt)]
        return [imp.emit(op, x, axes=norm, keepdims=keep)]

    return rule


def _arg(op: str) -> Rule:
    def rule(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
        x = _v(args, 0)
        return [imp.emit(op, x, axis=_axis(a.get("axis", 0), _t(x).rank), keepdims=bool(a.get("keepdims", 1)),
                         select_last=bool(a.get("select_last_index", 0)))]  # fmt: skip

    return rule


def _cumsum(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    x = _v(args, 0)
    (axis,) = _ints(imp, _v(args, 1), "the axis input")
    return [imp.emit("cumsum", x, axis=_axis(axis, _t(x).rank), exclusive=bool(a.get("exclusive", 0)),
                     reverse=bool(a.get("reverse", 0)))]  # fmt: skip


def _topk(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    x = _v(args, 0)
    (k,) = _ints(imp, _v(args, 1), "K")
    return imp.emit_values("topk", x, k=k, axis=_axis(a.get("axis", -1), _t(x).rank),
                           largest=bool(a.get("largest", 1)))  # fmt: skip


def _einsum(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    return [
        imp.emit("einsum", *[v for v in args if v is not None], equation=explicit_equation(a["equation"]))
    ]


# -- shapes ------------------------------------------------------------------------------------
def _shape(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    shape = _static(imp, _v(args, 0), "Shape")
    start, end = a.get("start", 0), a.get("end")
    return [imp.constant(np.asarray(shape[slice(start, end)], np.int64), "shape")]


def _size(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    return [imp.constant(np.asarray(math.prod(_static(imp, _v(args, 0), "Size")), np.int64), "size")]


def _reshape(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    x = _v(args, 0)
    want = _ints(imp, _v(args, 1), "the shape input")
    src = _t(x).shape
    dims: list[Dim] = [src[i] if d == 0 and not a.get("allowzero", 0) else d for i, d in enumerate(want)]
    if dims.count(-1) > 1:
        raise OnnxImportError(f"{imp.node_desc}: more than one -1 in shape {want}")
    if -1 in dims:
        total = math.prod(_static(imp, x, "Reshape with -1"))
        known = math.prod(int(d) for d in dims if d != -1)
        dims[dims.index(-1)] = total // known if known else 0
    return [imp.emit("reshape", x, shape=tuple(dims))]


def _flatten(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    x = _v(args, 0)
    shape = _static(imp, x, "Flatten")
    ax = a.get("axis", 1)
    ax = ax + len(shape) if ax < 0 else ax
    return [imp.emit("reshape", x, shape=(math.prod(shape[:ax]), math.prod(shape[ax:])))]


def _transpose(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    x = _v(args, 0)
    perm = a.get("perm") or list(reversed(range(_t(x).rank)))
    return [imp.emit("transpose", x, perm=tuple(int(p) for p in perm))]


def _unsqueeze(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    x = _v(args, 0)
    axes = list(a["axes"]) if "axes" in a else _ints(imp, _v(args, 1), "the axes input")
    rank = _t(x).rank + len(axes)
    return [imp.emit("unsqueeze", x, axes=tuple(sorted(_axis(ax, rank) for ax in axes)))]


def _squeeze(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    x = _v(args, 0)
    t = _t(x)
    given = _opt(args, 1)
    if "axes" in a:
        axes = [_axis(ax, t.rank) for ax in a["axes"]]
    elif given is None:
        axes = [i for i, d in enumerate(t.shape) if d == 1]
    else:
        axes = [_axis(ax, t.rank) for ax in _ints(imp, given, "the axes input")]
    return [imp.emit("squeeze", x, axes=tuple(sorted(set(axes))))]


def _slice(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    x = _v(args, 0)
    t = _t(x)
    starts = _ints(imp, _v(args, 1), "starts")
    ends = _ints(imp, _v(args, 2), "ends")
    axes = _ints(imp, args[3], "axes") if _opt(args, 3) is not None else list(range(len(starts)))
    steps = _ints(imp, args[4], "steps") if _opt(args, 4) is not None else [1] * len(starts)
    spec: dict[int, tuple[int, int, int]] = {}
    for ax, s, e, st in zip(axes, starts, ends, steps, strict=True):
        axn = _axis(ax, t.rank)
        d = t.shape[axn]
        if not isinstance(d, int):
            raise OnnxImportError(f"{imp.node_desc}: Slice on symbolic dim {d}; bind it with dims=")
        lo, hi = normalize_slice(d, s, e, st)
        spec[axn] = (lo, hi, st)
    keys = sorted(spec)
    return [imp.emit("slice", x, axes=tuple(keys), starts=tuple(spec[k][0] for k in keys),
                     stops=tuple(spec[k][1] for k in keys), steps=tuple(spec[k][2] for k in keys))]  # fmt: skip


def _gather(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    x = _v(args, 0)
    return [imp.emit("gather", x, _v(args, 1), axis=_axis(a.get("axis", 0), _t(x).rank))]


def _gather_nd(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    return [imp.emit("gather_nd", _v(args, 0), _v(args, 1), batch_dims=int(a.get("batch_dims", 0)))]


def _concat(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    xs = [v for v in args if v is not None]
    return [imp.emit("concat", *xs, axis=_axis(a["axis"], _t(xs[0]).rank))]


def _split(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    x = _v(args, 0)
    t = _t(x)
    ax = _axis(a.get("axis", 0), t.rank)
    d = t.shape[ax]
    if "split" in a:
        sizes = list(a["split"])
    elif _opt(args, 1) is not None:
        sizes = _ints(imp, args[1], "the split input")
    else:
        if not isinstance(d, int):
            raise OnnxImportError(f"{imp.node_desc}: Split of symbolic dim {d}; bind it with dims=")
        n = int(a.get("num_outputs", a["_n_outputs"]))
        chunk = -(-d // n)
        sizes = [min(chunk, d - i * chunk) for i in range(n)]
    return imp.emit_values("split", x, axis=ax, sizes=tuple(sizes))


def _expand(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    x = _v(args, 0)
    want = _ints(imp, _v(args, 1), "the shape input")
    src = _t(x).shape
    rank = max(len(src), len(want))
    s = (1,) * (rank - len(src)) + tuple(src)
    w = (1,) * (rank - len(want)) + tuple(want)
    out: list[Dim] = [b if a_ == 1 else a_ for a_, b in zip(s, w, strict=True)]
    return [imp.emit("broadcast_to", x, shape=tuple(out))]


def _tile(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    x = _v(args, 0)
    reps = _ints(imp, _v(args, 1), "repeats")
    shape = _static(imp, x, "Tile")
    inter = tuple(d for s in shape for d in (1, s))
    big = tuple(d for r, s in zip(reps, shape, strict=True) for d in (r, s))
    y = imp.emit("broadcast_to", imp.emit("reshape", x, shape=inter), shape=big)
    return [imp.emit("reshape", y, shape=tuple(r * s for r, s in zip(reps, shape, strict=True)))]


def _trilu(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    k = _ints(imp, args[1], "k")[0] if _opt(args, 1) is not None else 0
    return [imp.emit("triu" if a.get("upper", 1) else "tril", _v(args, 0), k=k)]


def _range(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    vals = [imp.require_const(_v(args, i), n) for i, n in enumerate(("start", "limit", "delta"))]
    dt = _t(_v(args, 0)).scalar_dtype
    conv: Callable[[Any], Any] = float if dt.is_float else int
    start, stop, step = (conv(np.ravel(v)[0]) for v in vals)
    return [imp.emit("iota", start=start, stop=stop, step=step, dtype=dt)]


def _constant_of_shape(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    shape = _ints(imp, _v(args, 0), "the shape input")
    value = to_array(a["value"], imp.node_desc) if "value" in a else np.zeros(1, np.float32)
    return [imp.constant(np.full(shape, np.ravel(value)[0], dtype=value.dtype), "fill")]


def _constant(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    if "value" in a:
        return [imp.constant(to_array(a["value"], imp.node_desc), "const")]
    table: dict[str, Any] = {"value_float": np.float32, "value_floats": np.float32,
                             "value_int": np.int64, "value_ints": np.int64}  # fmt: skip
    for key, dt in table.items():
        if key in a:
            return [imp.constant(np.asarray(a[key], dtype=dt), "const")]
    raise OnnxImportError(f"{imp.node_desc}: Constant with {sorted(a)} is not supported")


# -- com.microsoft contrib ops -----------------------------------------------------------------
def _unpack_rows(data: np.ndarray, rows: int, count: int, bits: int) -> np.ndarray:
    """``count`` unsigned ``bits``-bit integers per row of LSB-first bit streams (whole bytes per row)."""
    stream = np.unpackbits(data.reshape(rows, -1), axis=1, count=count * bits, bitorder="little")
    return (
        (stream.reshape(rows, count, bits).astype(np.uint16) << np.arange(bits, dtype=np.uint16))
        .sum(axis=2, dtype=np.uint16)
        .astype(np.uint8)
    )


def _nbits_zeros(imp: Importer, zp: Value, n: int, blocks: int, bits: int) -> np.ndarray:
    """MatMulNBits zero points as kiln ``asym`` zeros ``u8[N, blocks]``."""
    data = imp.require_const(zp, "zero_points")
    if data.dtype == np.uint8:  # packed like B, each row padded to whole bytes
        if data.size != n * -(-blocks * bits // 8):
            raise OnnxImportError(
                f"{imp.node_desc}: packed zero_points hold {data.size} bytes, expected "
                f"N * ceil(k_blocks * bits / 8) = {n} * {-(-blocks * bits // 8)}"
            )
        return _unpack_rows(data, n, blocks, bits)
    zf = np.asarray(data, np.float64)
    if zf.size != n * blocks:
        raise OnnxImportError(f"{imp.node_desc}: float zero_points must be [N, k_blocks] = [{n}, {blocks}]")
    if not (np.all(zf == np.rint(zf)) and zf.min(initial=0) >= 0 and zf.max(initial=0) <= 255):
        raise OnnxImportError(
            f"{imp.node_desc}: float zero_points that are not integers in [0, 255] (fractional offsets "
            "such as 1.5) have no kiln format; re-quantize with integer (uint8) zero points"
        )
    return zf.reshape(n, blocks).astype(np.uint8)


def _matmul_nbits(imp: Importer, a: dict[str, Any], args: Args) -> list[Value]:
    """com.microsoft ``MatMulNBits`` -> ``qmatmul`` (packed, ``sym`` or ``asym``) [+ ``add`` of the bias].

    B, scales and zero_points must be initializers. Without zero_points the scheme is ``sym``
    (MatMulNBits' default zero point 2^(bits-1) is kiln's ``sym`` offset); uint8 (packed) or
    integral float zero_points make it ``asym``. bits 2..8, block_size a power of two >= 16.
    K not a multiple of block_size is handled, not padded: the whole blocks become one ``qmatmul``
    and the last, partial block a second one (one group of K mod block_size) on the tail of x.
    Refused: prepacked weights, a non-trivial g_idx, fractional zero points, empty B.
    """
    x = _v(args, 0)
    k, n, bits, bs = int(a["K"]), int(a["N"]), int(a.get("bits", 4)), int(a["block_size"])
    # accuracy_level 4 lets onnxruntime quantize A per block to int8; kiln imports the exact
    # float product (act=f32), which any accuracy level only approximates.
    if a.get("weight_prepacked", 0):
        raise OnnxImportError(
            f"{imp.node_desc}: weight_prepacked={a['weight_prepacked']} (an EP-specific layout) is not "
            "supported; export the model with weight_prepacked=0"
        )
    if not 2 <= bits <= 8:
        raise OnnxImportError(f"{imp.node_desc}: bits={bits} is not supported; kiln imports 2..8-bit weights")
    if bs < 16 or bs & (bs - 1):
        raise OnnxImportError(f"{imp.node_desc}: block_size={bs} must be a power of two >= 16")
    if k <= 0 or n <= 0:
        raise OnnxImportError(f"{imp.node_desc}: K={k} and N={n} must be positive")
    if _t(x).rank == 0 or (isinstance(_t(x).shape[-1], int) and _t(x).shape[-1] != k):
        raise OnnxImportError(f"{imp.node_desc}: A {_t(x)} does not end in K={k}")
    blocks, blob = -(-k // bs), bs * bits // 8
    b = imp.require_const(_v(args, 1), "B (the packed weights)")
    if b.size != n * blocks * blob or b.dtype != np.uint8:
        raise OnnxImportError(
            f"{imp.node_desc}: B is {b.dtype}{list(b.shape)}, expected uint8[N, k_blocks, blob_size] = "
            f"[{n}, {blocks}, {blob}] (an empty B, an omitted projection, is not supported)"
        )
    scales = imp.require_const(_v(args, 2), "scales")
    if scales.size != n * blocks:
        raise OnnxImportError(
            f"{imp.node_desc}: scales hold {scales.size} values, expected N * k_blocks = {n * blocks}"
        )
    scales = scales.reshape(n, blocks)
    sdt = _t(_v(args, 2)).scalar_dtype
    zp, g_idx, bias = _opt(args, 3), _opt(args, 4), _opt(args, 5)
    zeros = None if zp is None else _nbits_zeros(imp, zp, n, blocks, bits)
    if g_idx is not None:
        gi = imp.require_const(g_idx, "g_idx")
        if gi.size != k or np.any(np.ravel(gi) != np.arange(k) // bs):
            raise OnnxImportError(
                f"{imp.node_desc}: g_idx reorders the quantization groups (act-order); kiln supports only "
                "contiguous blocks: re-quantize without act-order or drop g_idx"
            )
    u = _unpack_rows(b, n, blocks * bs, bits)[:, :k]  # [N, K]; padding of the last block dropped
    scheme = Scheme.SYM if zeros is None else Scheme.ASYM
    name = _symbol(_v(args, 1).name or "") or "nbits"
    parts: list[tuple[int, int, int]] = []  # (first k, last k, group) of each qmatmul
    whole = k // bs * bs
    if whole:
        parts.append((0, whole, bs))
    if k > whole:
        if (k - whole) * bits % 8:
            raise OnnxImportError(
                f"{imp.node_desc}: the partial last block ({k - whole} of {bs} weights at {bits} bits) does "
                "not fill whole bytes, which kiln's packed format needs; pad K to a multiple of block_size"
            )
        parts.append((whole, k, 0))
    y: Value | None = None
    for lo, hi, group in parts:
        q = QuantType(bits, scheme, group, sdt, Layout.PACKED)
        g0, g1 = lo // bs, -(-hi // bs)
        qw = quant.QuantizedWeight(
            q, hi - lo, n, quant.pack(q, u[:, lo:hi]), np.ascontiguousarray(scales[:, g0:g1]),
            None if zeros is None else np.ascontiguousarray(zeros[:, g0:g1]),
        )  # fmt: skip
        xs = x
        if len(parts) > 1:
            ax = _t(x).rank - 1
            xs = imp.emit("slice", x, axes=(ax,), starts=(lo,), stops=(hi,), steps=(1,))
        part = imp.emit("qmatmul", xs, *imp.builder.quantized(qw, name), act=Act.F32)
        y = part if y is None else imp.emit("add", y, part)
    assert y is not None
    return [y if bias is None else imp.emit("add", y, bias)]


def _simple(pairs: Sequence[tuple[str, str]], make: Callable[[str], Rule]) -> dict[str, Rule]:
    return {onnx_op: make(kiln_op) for onnx_op, kiln_op in pairs}


UNARY = [("Neg", "neg"), ("Abs", "abs"), ("Exp", "exp"), ("Log", "log"), ("Sqrt", "sqrt"),
         ("Reciprocal", "reciprocal"), ("Tanh", "tanh"), ("Erf", "erf"), ("Sigmoid", "sigmoid"),
         ("Relu", "relu"), ("Sin", "sin"), ("Cos", "cos"), ("Floor", "floor"), ("Ceil", "ceil"),
         ("Not", "logical_not"), ("IsNaN", "isnan")]  # fmt: skip
BINARY = [("Add", "add"), ("Sub", "sub"), ("Mul", "mul"), ("Div", "div"), ("And", "logical_and"),
          ("Or", "logical_or"), ("Xor", "logical_xor"), ("Equal", "eq"), ("Less", "lt"),
          ("LessOrEqual", "le"), ("Greater", "gt"), ("GreaterOrEqual", "ge"), ("MatMul", "matmul")]  # fmt: skip
REDUCE = [("ReduceSum", "reduce_sum", 13), ("ReduceMean", "reduce_mean", 18), ("ReduceMax", "reduce_max", 18),
          ("ReduceMin", "reduce_min", 18), ("ReduceProd", "reduce_prod", 18)]  # fmt: skip

RULES: dict[str, Any] = {
    **_simple(UNARY, unary),
    **_simple(BINARY, binary),
    **{onnx_op: _reduce(op, since) for onnx_op, op, since in REDUCE},
    "Pow": _pow,
    "Max": _variadic("maximum"),
    "Min": _variadic("minimum"),
    "Sum": _variadic("add"),
    "Mean": _mean,
    "Clip": _clip,
    "Gelu": _gelu,
    "Cast": _cast,
    "CastLike": _cast_like,
    "Identity": _identity,
    "Dropout": _dropout,
    "Where": _where,
    "Gemm": _gemm,
    "Softmax": _softmax("softmax"),
    "LogSoftmax": _softmax("log_softmax"),
    "LayerNormalization": _layer_norm,
    "SimplifiedLayerNormalization": _rms_norm,
    "RMSNormalization": _rms_norm,
    "ArgMax": _arg("argmax"),
    "ArgMin": _arg("argmin"),
    "CumSum": _cumsum,
    "TopK": _topk,
    "Einsum": _einsum,
    "Shape": _shape,
    "Size": _size,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Transpose": _transpose,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Slice": _slice,
    "Gather": _gather,
    "GatherND": _gather_nd,
    "Concat": _concat,
    "Split": _split,
    "Expand": _expand,
    "Tile": _tile,
    "Trilu": _trilu,
    "Range": _range,
    "ConstantOfShape": _constant_of_shape,
    "Constant": _constant,
    "com.microsoft.MatMulNBits": _matmul_nbits,
}
