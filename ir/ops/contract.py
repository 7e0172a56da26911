"""Contractions and n-d indexing: ``einsum`` and ``gather_nd`` (both primitive).

``einsum`` keeps the equation in explicit form (``"bij,bjk->bik"``, ``...`` allowed for broadcast
dims); frontends write the implicit form out. Backends may lower it to transposes and matmuls.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..core import Attrs
from ..errors import KilnError, TypeInferenceError, VerifyError
from ..registry import OpDef
from ..types import Dim, TensorType, Type
from ._util import broadcast_shapes, same_dtype, tensor_args

_TERM = re.compile(r"^(\.\.\.)?[a-zA-Z]*(\.\.\.)?[a-zA-Z]*$")


def explicit_equation(equation: str) -> str:
    """NumPy's implicit einsum output (letters seen once, sorted; ``...`` first) made explicit."""
    eq = equation.replace(" ", "")
    if "->" in eq:
        return eq
    letters = eq.replace(",", "").replace("...", "")
    once = sorted(c for c in set(letters) if letters.count(c) == 1)
    return f"{eq}->{'...' if '...' in eq else ''}{''.join(once)}"


@dataclass(frozen=True)
class EinsumAttrs(Attrs):
    """``equation``: explicit einsum equation, e.g. ``"bhqd,bhkd->bhqk"``."""

    equation: str

    def verify(self) -> None:
        if "->" not in self.equation:
            raise VerifyError(f"einsum equation {self.equation!r} must be explicit (contain '->')")
        ins, out = self.equation.split("->")
        for term in [*ins.split(","), out]:
            if not _TERM.match(term) or term.count("...") > 1:
                raise VerifyError(f"bad einsum term {term!r} in {self.equation!r}")


def _einsum_infer(a: EinsumAttrs, ts: Sequence[Type]) -> list[Type]:
    xs = tensor_args("einsum", ts)
    dt = same_dtype("einsum", xs)
    ins, out = a.equation.split("->")
    terms = ins.split(",")
    if len(terms) != len(xs):
        raise TypeInferenceError(f"'einsum' {a.equation!r} names {len(terms)} operands, got {len(xs)}")
    sizes: dict[str, Dim] = {}
    ell: list[tuple[Dim, ...]] = []
    for term, x in zip(terms, xs, strict=True):
        letters = term.replace("...", "")
        n_ell = x.rank - len(letters)
        if n_ell < 0 or (n_ell > 0 and "..." not in term):
            raise TypeInferenceError(f"'einsum' term {term!r} does not match {x}")
        pre = term.index("...") if "..." in term else len(term)
        dims = list(x.shape)
        ell.append(tuple(dims[pre : pre + n_ell]))
        for c, d in zip(letters, dims[:pre] + dims[pre + n_ell :], strict=True):
            if sizes.setdefault(c, d) != d:
                if sizes[c] == 1:
                    sizes[c] = d
                elif d != 1:
                    raise TypeInferenceError(f"'einsum' index {c!r} has sizes {sizes[c]} and {d}")
    if any(c not in sizes for c in out.replace("...", "")):
        raise TypeInferenceError(f"'einsum' output {out!r} uses an index no input has")
    bshape = broadcast_shapes("einsum", *ell)
    shape: list[Dim] = []
    for part in re.split(r"(\.\.\.)", out):
        shape.extend(bshape if part == "..." else [sizes[c] for c in part])
    return [TensorType(dt, tuple(shape))]


def _einsum_ref(a: EinsumAttrs, args: Sequence[np.ndarray], out: Sequence[Type]) -> list[np.ndarray]:
    xs = [x.astype(np.int64) if x.dtype.kind in "iu" else x for x in args]
    return [np.einsum(a.equation, *xs)]


@dataclass(frozen=True)
class GatherNdAttrs(Attrs):
    """``batch_dims``: leading dims shared by data and indices (ONNX GatherND semantics)."""

    batch_dims: int = 0

    def verify(self) -> None:
        if self.batch_dims < 0:
            raise VerifyError(f"gather_nd batch_dims must be >= 0, got {self.batch_dims}")


def _gather_nd_infer(a: GatherNdAttrs, ts: Sequence[Type]) -> list[Type]:
    x, idx = tensor_args("gather_nd", ts)
    b = a.batch_dims
    if not idx.scalar_dtype.is_int:
        raise TypeInferenceError(f"'gather_nd' indices must be integers, got {idx}")
    if idx.rank < 1 or not isinstance(idx.shape[-1], int):
        raise TypeInferenceError(f"'gather_nd' indices need a static last dim, got {idx}")
    k = idx.shape[-1]
    if b >= min(x.rank, idx.rank) or b + k > x.rank or x.shape[:b] != idx.shape[:b]:
        raise TypeInferenceError(f"'gather_nd' with batch_dims={b} cannot index {x} with {idx}")
    return [x.with_shape((*idx.shape[:-1], *x.shape[b + k :]))]


def _gather_nd_ref(a: GatherNdAttrs, args: Sequence[np.ndarray], out: Sequence[Type]) -> list[np.ndarray]:
    x, idx = args
    b, k = a.batch_dims, idx.shape[-1]
    batch = x.shape[:b]
    n = math.prod(batch)
    xr = x.reshape((n, *x.shape[b:]))
    ir = idx.astype(np.int64).reshape((n, -1, k))
    lim = np.asarray(x.shape[b : b + k])
    if ir.size and ((ir < -lim).any() or (ir >= lim).any()):
        raise KilnError(f"'gather_nd' index out of range for dims {list(lim)}")
    ir = np.where(ir < 0, ir + lim, ir)
    parts = [xr[i][tuple(ir[i].T)] for i in range(n)]
    res = np.stack(parts) if parts else np.zeros((0, *x.shape[b + k :]), x.dtype)
    return [res.reshape((*idx.shape[:-1], *x.shape[b + k :]))]


def contract_ops() -> list[OpDef]:
    return [
        OpDef(
            "einsum",
            ("x",),
            _einsum_infer,
            _einsum_ref,
            attrs=EinsumAttrs,
            variadic=True,
            doc="Einstein summation with an explicit equation ('...' broadcasts)",
        ),
        OpDef(
            "gather_nd",
            ("x", "indices"),
            _gather_nd_infer,
            _gather_nd_ref,
            attrs=GatherNdAttrs,
            doc="ONNX GatherND: index the leading dims of x with the last axis of indices",
        ),
    ]
