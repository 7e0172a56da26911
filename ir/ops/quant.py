"""Quantized ops: ``qmatmul`` (x @ W with W held in a ``QuantType``) and ``qgather`` (embedding rows).

The weight operand has a quantized tensor type, ``q<4,sym,g128,f16,packed>[K, N]``, whose data are
the codes in the type's layout; scales (and zero points for ``asym``) are plain operands. The
storage and the dequantization rule of every format are in :mod:`kiln.ir.quant`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import Attrs, NoAttrs
from ..dtypes import DType, QuantType, Scheme, f32, u8
from ..errors import BackendError, TypeInferenceError, VerifyError
from ..quant import dequantize, n_groups
from ..registry import OpDef
from ..types import TensorType, Type


class Act(enum.StrEnum):
    """How ``qmatmul`` treats its activations."""

    F32 = "f32"  # as given (weights dequantized in register)
    INT8 = "int8"  # quantized per row to int8 (symmetric, absmax / 127) for integer kernels
    BINARY = "binary"  # per row mean(|x|) * sign(x) (sign(0) = +1): one bit each, popcount kernels


@dataclass(frozen=True)
class QMatmulAttrs(Attrs):
    """``act``: ``f32`` keeps activations in float; ``int8`` quantizes each row dynamically;
    ``binary`` keeps one bit per activation, ``x ~= mean(|x|) * sign(x)`` per row."""

    act: Act = Act.F32

    def __post_init__(self) -> None:
        if not isinstance(self.act, Act) and self.act in {m.value for m in Act}:
            object.__setattr__(self, "act", Act(self.act))  # act="int8" from keywords

    def verify(self) -> None:
        if not isinstance(self.act, Act):
            raise VerifyError(f"qmatmul act must be one of {[m.value for m in Act]}, got {self.act!r}")


@dataclass(frozen=True)
class QuantizedArg:
    """A quantized operand as the reference semantics see it: its type and its stored codes."""

    qtype: QuantType
    shape: tuple[int, int]
    codes: np.ndarray


def _check_weight(op: str, w: Type, scales: Type, zeros: Type | None) -> tuple[TensorType, QuantType]:
    if not isinstance(w, TensorType) or not isinstance(w.dtype, QuantType) or w.rank != 2:
        raise TypeInferenceError(f"'{op}' needs a quantized [K, N] weight (q<...>[K,N]), got {w}")
    q = w.dtype
    k, n = w.shape
    if not isinstance(scales, TensorType) or scales.dtype != q.scale_dtype:
        raise TypeInferenceError(
            f"'{op}' scales must be {q.scale_dtype} (the weight's scale dtype), got {scales}"
        )
    if isinstance(k, int):
        want = (n, n_groups(q, k) if not q.group or k % q.group == 0 else -1)
        if q.group and k % q.group:
            raise TypeInferenceError(f"'{op}': group {q.group} does not divide K={k} of {w}")
        if scales.shape != want:
            raise TypeInferenceError(
                f"'{op}' scales must be {q.scale_dtype}[{want[0]},{want[1]}] for {w}, got {scales}"
            )
    if (q.scheme == Scheme.ASYM) != (zeros is not None):
        need = "needs" if q.scheme == Scheme.ASYM else "takes no"
        raise TypeInferenceError(f"'{op}' with scheme {q.scheme} {need} a zero-point operand")
    if zeros is not None and (
        not isinstance(zeros, TensorType) or zeros.dtype != u8 or zeros.shape != scales.shape
    ):
        raise TypeInferenceError(
            f"'{op}' zero points must be u8 shaped like the scales {scales}, got {zeros}"
        )
    return w, q


def _qmatmul_infer(a: QMatmulAttrs, ts: Sequence[Type]) -> list[Type]:
    if len(ts) not in (3, 4):
        raise TypeInferenceError(f"'qmatmul' takes 3 or 4 operands (x, w, scales[, zeros]), got {len(ts)}")
    x = ts[0]
    w, _ = _check_weight("qmatmul", ts[1], ts[2], ts[3] if len(ts) == 4 else None)
    if not isinstance(x, TensorType) or not isinstance(x.dtype, DType) or not x.dtype.is_float or x.rank < 1:
        raise TypeInferenceError(f"'qmatmul' needs float activations of rank >= 1, got {x}")
    if x.shape[-1] != w.shape[0]:
        raise TypeInferenceError(f"'qmatmul' contraction mismatch: {x} @ {w} ({x.shape[-1]} != {w.shape[0]})")
    return [TensorType(x.dtype, (*x.shape[:-1], w.shape[1]))]


def quantize_rows_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dynamic per-row int8 quantization of activations: ``x ~= xq * scale`` (golden semantics)."""
    amax = np.abs(x).max(axis=-1, keepdims=True).astype(np.float32)
    scale = np.where(amax > 0, amax / np.float32(127.0), np.float32(1.0)).astype(np.float32)
    xq = np.clip(np.rint(x / scale), -127, 127).astype(np.int8)
    return xq, scale


def binarize_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Binary activations (golden semantics): ``x ~= sign * alpha`` per row with ``sign`` in
    {-1, +1} (+1 for x >= 0, so -0.0 and 0 give +1, NaN gives -1) and ``alpha = mean(|x|)``, the
    scale that minimises the squared error of that approximation; a NaN in a row makes its alpha NaN."""
    alpha = np.abs(x).astype(np.float32).mean(axis=-1, keepdims=True, dtype=np.float32)
    sign = np.where(x >= 0, np.int8(1), np.int8(-1))
    return sign, alpha


def _weight(args: Sequence[Any]) -> np.ndarray:
    w: QuantizedArg = args[1]
    zeros = np.asarray(args[3]) if len(args) == 4 else None
    return dequantize(w.qtype, w.shape[0], w.codes, np.asarray(args[2]), zeros)


def _qmatmul_ref(a: QMatmulAttrs, args: Sequence[Any], out: Sequence[Type]) -> list[np.ndarray]:
    x = np.asarray(args[0], np.float32)
    if a.act == Act.INT8:
        xq, s = quantize_rows_int8(x)
        x = xq.astype(np.float32) * s
    elif a.act == Act.BINARY:
        sign, alpha = binarize_rows(x)
        x = sign.astype(np.float32) * alpha
    return [np.matmul(x, _weight(args))]


def _qgather_infer(a: NoAttrs, ts: Sequence[Type]) -> list[Type]:
    if len(ts) not in (3, 4):
        raise TypeInferenceError(
            f"'qgather' takes 3 or 4 operands (w, scales[, zeros], indices), got {len(ts)}"
        )
    idx = ts[-1]
    w, _ = _check_weight("qgather", ts[0], ts[1], ts[2] if len(ts) == 4 else None)
    if not isinstance(idx, TensorType) or not isinstance(idx.dtype, DType) or not idx.dtype.is_int:
        raise TypeInferenceError(f"'qgather' needs integer indices, got {idx}")
    return [TensorType(f32, (*idx.shape, w.shape[0]))]


def _qgather_ref(a: NoAttrs, args: Sequence[Any], out: Sequence[Type]) -> list[np.ndarray]:
    w: QuantizedArg = args[0]
    k, rows = w.shape
    idx = np.asarray(args[-1]).astype(np.int64)
    if idx.size and (idx.min() < -rows or idx.max() >= rows):
        raise BackendError(f"qgather index out of range [-{rows}, {rows})")
    flat = np.where(idx < 0, idx + rows, idx).reshape(-1)
    zeros = np.asarray(args[2])[flat] if len(args) == 4 else None
    # only the selected rows are dequantized: a table of V rows is never expanded whole
    table = dequantize(w.qtype, k, w.codes[flat], np.asarray(args[1])[flat], zeros)  # [K, len(flat)]
    return [np.ascontiguousarray(table.T).reshape(*idx.shape, k)]


def quant_ops() -> list[OpDef]:
    return [
        OpDef(
            "qmatmul",
            ("x", "w", "scales"),
            _qmatmul_infer,
            _qmatmul_ref,
            attrs=QMatmulAttrs,
            variadic=True,
            doc="x @ W with W quantized (operands x, w: q<...>[K,N], scales[, zeros]); never expands W",
        ),
        OpDef(
            "qgather",
            ("w", "scales", "indices"),
            _qgather_infer,
            _qgather_ref,
            variadic=True,
            doc="rows of a quantized table stored transposed (w: q<...>[D,V]; operands w, scales[, zeros], indices)",
        ),
    ]
