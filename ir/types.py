"""Value types: tensors (static or named symbolic dims) and host values (str, bytes, json, ...).

A tensor dim is an ``int`` (static) or a ``str`` naming a symbolic size (``"seq"``); two dims with
the same name are the same size everywhere in a graph. Host types carry the non-tensor values that
agent graphs pass between LLM calls, tools and retrieval stages.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from .dtypes import DType, ElementType, QuantType
from .errors import VerifyError

Dim = int | str
Shape = tuple[Dim, ...]

_SYMBOL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")


def is_static(shape: Shape) -> bool:
    return all(isinstance(d, int) for d in shape)


def format_dim(d: Dim) -> str:
    return str(d)


@dataclass(frozen=True)
class TensorType:
    """A tensor: element type and shape; ``f32[1,seq,768]`` in text."""

    dtype: ElementType
    shape: Shape

    def verify(self) -> None:
        self.dtype.verify()
        for d in self.shape:
            if isinstance(d, bool) or not isinstance(d, int | str):
                raise VerifyError(f"bad dim {d!r} in {self}: dims are ints or symbol names")
            if isinstance(d, int) and d < 0:
                raise VerifyError(f"negative dim {d} in {self}")
            if isinstance(d, str) and not _SYMBOL.match(d):
                raise VerifyError(f"bad symbolic dim name {d!r} in {self}")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return is_static(self.shape)

    @property
    def static_shape(self) -> tuple[int, ...]:
        if not self.is_static:
            raise VerifyError(f"{self} has symbolic dims; bind them (infer-shapes{{bind=...}})")
        return tuple(int(d) for d in self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.static_shape)

    @property
    def is_quantized(self) -> bool:
        return isinstance(self.dtype, QuantType)

    @property
    def scalar_dtype(self) -> DType:
        if not isinstance(self.dtype, DType):
            raise VerifyError(f"{self} holds quantized weights, not plain scalars")
        return self.dtype

    def with_shape(self, shape: Shape) -> TensorType:
        return TensorType(self.dtype, tuple(shape))

    def with_dtype(self, dtype: ElementType) -> TensorType:
        return TensorType(dtype, self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(format_dim(d) for d in self.shape)}]"


HostKind = Literal["str", "bytes", "json", "tokens", "handle"]
HOST_KINDS: tuple[HostKind, ...] = ("str", "bytes", "json", "tokens", "handle")


@dataclass(frozen=True)
class HostType:
    """A host (non-tensor) value: ``!str``, ``!bytes``, ``!json``, ``!tokens``, ``!handle<tag>``."""

    kind: HostKind
    tag: str = ""

    def verify(self) -> None:
        if self.kind not in HOST_KINDS:
            raise VerifyError(f"unknown host type !{self.kind}; expected one of {HOST_KINDS}")
        if self.tag and not _SYMBOL.match(self.tag):
            raise VerifyError(f"bad host type tag {self.tag!r}")

    def __str__(self) -> str:
        return f"!{self.kind}<{self.tag}>" if self.tag else f"!{self.kind}"


Type = TensorType | HostType


def tensor(dtype: ElementType, *shape: Dim) -> TensorType:
    """Shorthand: ``tensor(f32, 2, 3)``."""
    return TensorType(dtype, tuple(shape))
