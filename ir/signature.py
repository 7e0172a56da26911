"""Checking concrete arguments against a graph's input types and binding symbolic dims."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .core import Graph
from .dtypes import DType, from_numpy
from .errors import SignatureError, VerifyError
from .types import Dim, HostType, TensorType, Type


def _narrow_int_of(dt: np.dtype) -> DType | None:
    try:
        return from_numpy(dt)
    except VerifyError:
        return None


def describe_array(x: Any) -> str:
    if isinstance(x, np.ndarray | np.generic):
        try:
            dt = str(from_numpy(x.dtype))
        except VerifyError:
            dt = str(x.dtype)
        return f"{dt}[{','.join(map(str, np.shape(x)))}]"
    return type(x).__name__


def check_value(where: str, t: Type, x: Any, dims: dict[str, int]) -> Any:
    """Check ``x`` against ``t`` (binding symbolic dims into ``dims``) and return it normalised."""
    if isinstance(t, HostType):
        return x
    assert isinstance(t, TensorType)
    if not isinstance(t.dtype, DType):
        raise SignatureError(f"{where}: quantized inputs are not supported yet ({t})")
    if isinstance(x, bool | int | float) and t.rank == 0:
        x = np.asarray(x, dtype=t.dtype.np_dtype)
    if not isinstance(x, np.ndarray | np.generic):
        raise SignatureError(f"{where}: expected an array {t}, got {type(x).__name__}")
    x = np.asarray(x)
    if x.dtype != t.dtype.np_dtype and x.dtype.kind == "V" and _narrow_int_of(x.dtype) == t.dtype:
        x = x.astype(t.dtype.np_dtype)  # ml_dtypes int4/uint4/... arrays: kiln stores them wider
    if x.dtype != t.dtype.np_dtype or x.ndim != t.rank:
        raise SignatureError(f"{where}: expected {t}, got {describe_array(x)}")
    for want, got in zip(t.shape, x.shape, strict=True):
        if isinstance(want, str):
            if dims.setdefault(want, got) != got:
                raise SignatureError(
                    f"{where}: expected {t} with {want}={dims[want]} (bound by an earlier "
                    f"argument), got {describe_array(x)}"
                )
        elif want != got:
            raise SignatureError(f"{where}: expected {t}, got {describe_array(x)}")
    narrow = t.dtype.is_int and not t.dtype.is_storage_exact and x.size
    if narrow and (x.min() < t.dtype.min_value or x.max() > t.dtype.max_value):
        raise SignatureError(f"{where}: values out of range for {t.dtype}")
    return x


def bind_inputs(graph: Graph, inputs: Mapping[str, Any]) -> tuple[list[Any], dict[str, int]]:
    """Check named inputs; returns them in graph order and the bound symbolic dims."""
    names = graph.input_names
    missing = [n for n in names if n not in inputs]
    extra = [n for n in inputs if n not in names]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if extra:
            parts.append(f"unknown {extra}")
        raise SignatureError(f"graph @{graph.name} takes inputs {names}: {'; '.join(parts)}")
    dims: dict[str, int] = {}
    vals = [
        check_value(f"input '{n}' of @{graph.name}", v.type, inputs[n], dims)
        for n, v in zip(names, graph.inputs, strict=True)
    ]
    return vals, dims


def positional_to_named(graph: Graph, args: Sequence[Any]) -> dict[str, Any]:
    names = graph.input_names
    if len(args) != len(names):
        raise SignatureError(
            f"graph @{graph.name} takes {len(names)} inputs ({', '.join(names)}), got {len(args)}"
        )
    return dict(zip(names, args, strict=True))


def bind_type(t: Type, dims: Mapping[str, int]) -> Type:
    """Substitute bound symbolic dims in ``t``."""
    if isinstance(t, TensorType) and not t.is_static:
        shape: tuple[Dim, ...] = tuple(dims.get(d, d) if isinstance(d, str) else d for d in t.shape)
        return t.with_shape(shape)
    return t
