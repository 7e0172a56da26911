"""Element types: floats, signed/unsigned integers of any width 1..64, bool, and quantized weights.

Integers narrower than their NumPy storage type (``i4`` is stored in ``int8``) wrap to their own
width after every operation in the reference semantics, so ``i4`` arithmetic behaves like 4-bit
hardware. ``f16`` and ``bf16`` are computed in float32 by the reference backend and rounded once per
op, as XLA and most accelerators do.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

import ml_dtypes
import numpy as np

from .errors import VerifyError

Kind = Literal["f", "bf", "i", "u", "bool"]


@dataclass(frozen=True, order=True)
class DType:
    """A scalar element type: ``kind`` (f, bf, i, u, bool) and a width in bits."""

    kind: Kind
    bits: int

    def verify(self) -> None:
        if self.kind == "f" and self.bits not in (16, 32, 64):
            raise VerifyError(f"float width must be 16, 32 or 64, got {self.bits}")
        if self.kind == "bf" and self.bits != 16:
            raise VerifyError(f"bfloat width must be 16, got {self.bits}")
        if self.kind in ("i", "u") and not 1 <= self.bits <= 64:
            raise VerifyError(f"integer width must be 1..64, got {self.bits}")
        if self.kind == "bool" and self.bits != 1:
            raise VerifyError("bool has width 1")

    @property
    def name(self) -> str:
        return "bool" if self.kind == "bool" else f"{self.kind}{self.bits}"

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"kiln.{self.name}"

    @property
    def is_float(self) -> bool:
        return self.kind in ("f", "bf")

    @property
    def is_int(self) -> bool:
        return self.kind in ("i", "u")

    @property
    def is_signed(self) -> bool:
        return self.kind in ("f", "bf", "i")

    @property
    def is_bool(self) -> bool:
        return self.kind == "bool"

    @property
    def np_dtype(self) -> np.dtype:
        """The NumPy dtype that stores values of this type (the narrowest that holds them)."""
        if self.kind == "bool":
            return np.dtype(np.bool_)
        if self.kind == "bf":
            return np.dtype(ml_dtypes.bfloat16)
        if self.kind == "f":
            return np.dtype(f"float{self.bits}")
        width = next(w for w in (8, 16, 32, 64) if self.bits <= w)
        return np.dtype(f"{'int' if self.kind == 'i' else 'uint'}{width}")

    @property
    def compute_dtype(self) -> np.dtype:
        """The NumPy dtype the reference backend computes in (f16/bf16 compute in float32)."""
        if self.kind == "bf" or (self.kind == "f" and self.bits == 16):
            return np.dtype(np.float32)
        return self.np_dtype

    @property
    def is_storage_exact(self) -> bool:
        """True when the storage dtype has exactly this width (no wrapping needed)."""
        return not self.is_int or self.bits in (8, 16, 32, 64)

    @property
    def min_value(self) -> int:
        if self.kind == "u":
            return 0
        if self.kind == "i":
            return -(1 << (self.bits - 1))
        raise VerifyError(f"{self} has no integer range")

    @property
    def max_value(self) -> int:
        if self.kind == "u":
            return (1 << self.bits) - 1
        if self.kind == "i":
            return (1 << (self.bits - 1)) - 1
        raise VerifyError(f"{self} has no integer range")


f16 = DType("f", 16)
f32 = DType("f", 32)
f64 = DType("f", 64)
bf16 = DType("bf", 16)
boolean = DType("bool", 1)
i8, i16, i32, i64 = (DType("i", b) for b in (8, 16, 32, 64))
u8, u16, u32, u64 = (DType("u", b) for b in (8, 16, 32, 64))


def parse_dtype(name: str) -> DType:
    """``f32`` -> DType; raises VerifyError on an unknown name."""
    if name == "bool":
        return boolean
    for kind in ("bf", "f", "i", "u"):
        if name.startswith(kind) and name[len(kind) :].isdigit():
            dt = DType(kind, int(name[len(kind) :]))  # type: ignore[arg-type]
            dt.verify()
            return dt
    raise VerifyError(f"unknown dtype {name!r}: expected f16/f32/f64/bf16/bool/iN/uN (N in 1..64)")


def from_numpy(dtype: np.dtype | type) -> DType:
    """The kiln dtype of a NumPy dtype."""
    dt = np.dtype(dtype)
    if dt == np.dtype(ml_dtypes.bfloat16):
        return bf16
    if dt in _ML_INTS:
        return _ML_INTS[dt]
    if dt.kind == "b":
        return boolean
    if dt.type in (np.float16, np.float32, np.float64):
        return DType("f", dt.itemsize * 8)
    if dt.kind in "iu" and dt.type.__module__ == "numpy":
        return DType(dt.kind, dt.itemsize * 8)  # type: ignore[arg-type]
    raise VerifyError(f"NumPy dtype {dt} has no kiln equivalent")


#: ml_dtypes' narrow integers, which NumPy arrays can hold (kiln stores them in int8/uint8).
_ML_INTS: dict[np.dtype, DType] = {
    np.dtype(getattr(ml_dtypes, f"{k}int{b}")): DType("u" if k else "i", b)
    for k in ("", "u")
    for b in (2, 4)
    if hasattr(ml_dtypes, f"{k}int{b}")
}


def wrap_int(values: np.ndarray, dtype: DType) -> np.ndarray:
    """Wrap integers to ``dtype``'s width (two's complement), stored in its NumPy dtype."""
    if not dtype.is_int or dtype.is_storage_exact:
        return values.astype(dtype.np_dtype, copy=False)
    v = values.astype(np.int64) & ((1 << dtype.bits) - 1)
    if dtype.kind == "i":
        v = np.where(v >= (1 << (dtype.bits - 1)), v - (1 << dtype.bits), v)
    return v.astype(dtype.np_dtype)


def to_dtype(values: np.ndarray, dtype: DType) -> np.ndarray:
    """Convert computed values to ``dtype`` with kiln's semantics (ints wrap, floats round)."""
    if dtype.is_int:
        if values.dtype.kind == "f":
            # Float -> int truncates toward zero; out-of-range values wrap (defined, unlike C).
            with np.errstate(invalid="ignore"):
                values = np.trunc(values)
                values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
                values = np.fmod(values, 2.0**64)  # exact; brings values into (-2**64, 2**64)
                values = np.where(values >= 2.0**63, values - 2.0**64, values)
                values = np.where(values < -(2.0**63), values + 2.0**64, values).astype(np.int64)
        return wrap_int(np.asarray(values), dtype)
    return np.asarray(values).astype(dtype.np_dtype, copy=False)


class Scheme(enum.StrEnum):
    """How quantized integers map back to real values."""

    SYM = "sym"  # w = s * q, q in [-(2^(b-1)-1), 2^(b-1)-1]
    ASYM = "asym"  # w = s * (q - z), q in [0, 2^b - 1]
    BIPOLAR = "bipolar"  # w = s * sum_i 2^i * b_i, b_i in {-1, +1}


class Layout(enum.StrEnum):
    """How quantized integers are stored."""

    PACKED = "packed"  # consecutive b-bit integers packed into bytes along K
    BITSLICED = "bitsliced"  # one bit-plane per bit, 64 weights per u64 word along K


@dataclass(frozen=True)
class QuantType:
    """A quantized weight element type.

    ``group`` is the number of consecutive weights along the reduction axis that share one scale
    (and zero point); 0 means one scale per output channel.
    """

    bits: int
    scheme: Scheme = Scheme.SYM
    group: int = 128
    scale_dtype: DType = f16
    layout: Layout = Layout.PACKED

    def verify(self) -> None:
        if not 1 <= self.bits <= 8:
            raise VerifyError(f"quantized width must be 1..8 bits, got {self.bits}")
        if self.group < 0:
            raise VerifyError(f"quantization group must be >= 0 (0 = per channel), got {self.group}")
        if not self.scale_dtype.is_float:
            raise VerifyError(f"quantization scale dtype must be a float, got {self.scale_dtype}")
        if self.scheme == Scheme.SYM and self.bits == 1:
            raise VerifyError("1-bit symmetric quantization has no nonzero level; use scheme=bipolar")

    @property
    def name(self) -> str:
        return f"q<{self.bits},{self.scheme},g{self.group},{self.scale_dtype},{self.layout}>"

    def __str__(self) -> str:
        return self.name


ElementType = DType | QuantType
