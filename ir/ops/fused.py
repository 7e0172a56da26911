"""Fused ops: ``fused`` (a kernel group holding its subgraph) and ``attention``.

``fused`` is how fusion passes hand kernels to backends: one node whose ``body`` is a graph of
ordinary ops, whose operands feed the body's inputs in order and whose results are the body's
outputs. Its reference semantics are the body's. ``kind`` tells backends which template applies
("elementwise", "matmul", "rows", ...); a backend that does not know a kind may run the body op by
op.

``attention(q, k, v, bias) {scale, causal}`` is scaled dot-product attention:
``softmax(q @ k^T * scale + bias [+ causal mask]) @ v`` over the last two axes, with ``bias``
broadcast to ``[..., Sq, Sk]`` (a zero scalar when there is none). The causal mask is aligned to
the end (query i sees keys j <= i + Sk - Sq), which also serves decoding with a KV cache. It is
primitive for backends (a streaming online-softmax kernel), composite in meaning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..core import Attrs, Graph
from ..errors import TypeInferenceError, VerifyError
from ..registry import OpDef
from ..types import TensorType, Type
from ._util import broadcast_shapes, same_dtype, tensor_args

FUSED_KINDS = ("elementwise", "matmul", "rows", "attention", "generic")


@dataclass(frozen=True)
class FusedAttrs(Attrs):
    """``kind``: the kernel template; ``body``: the fused subgraph (inputs = operands)."""

    kind: str
    body: Graph

    def verify(self) -> None:
        if self.kind not in FUSED_KINDS:
            raise VerifyError(f"fused kind {self.kind!r} is not one of {FUSED_KINDS}")
        if any(n.op == "fused" for n in self.body.nodes):
            raise VerifyError("fused bodies cannot nest fused ops")


def _fused_infer(a: FusedAttrs, ts: Sequence[Type]) -> list[Type]:
    body = a.body
    want = [v.type for v in body.inputs]
    if list(ts) != want:
        got = ", ".join(map(str, ts))
        raise TypeInferenceError(
            f"'fused' operands ({got}) do not match its body's inputs ({', '.join(map(str, want))})"
        )
    return [v.type for _, v in body.outputs]


def _fused_ref(a: FusedAttrs, args: Sequence[np.ndarray], out: Sequence[Type]) -> list[np.ndarray]:
    from ..interpret import interpret

    # The interpreter hands f16/bf16 operands over computed in f32: give the body its own dtypes.
    args = [
        np.asarray(x).astype(v.type.scalar_dtype.np_dtype) if isinstance(v.type, TensorType) else x
        for x, v in zip(args, a.body.inputs, strict=True)
    ]
    res = interpret(a.body, dict(zip(a.body.input_names, args, strict=True)))
    return [res[name] for name in a.body.output_names]


@dataclass(frozen=True)
class AttentionAttrs(Attrs):
    """``scale`` multiplies q @ k^T; ``causal`` masks keys after each query (end-aligned)."""

    scale: float
    causal: bool = False


def _attention_infer(a: AttentionAttrs, ts: Sequence[Type]) -> list[Type]:
    q, k, v, bias = tensor_args("attention", ts)
    dt = same_dtype("attention", [q, k, v, bias])
    if not dt.is_float:
        raise TypeInferenceError(f"'attention' needs floats, got {dt}")
    if min(q.rank, k.rank, v.rank) < 2 or not q.rank == k.rank == v.rank:
        raise TypeInferenceError(f"'attention' needs q, k, v of one rank >= 2, got {q}, {k}, {v}")
    if (
        q.shape[-1] != k.shape[-1]
        or k.shape[-2] != v.shape[-2]
        or q.shape[:-2] != k.shape[:-2]
        or k.shape[:-2] != v.shape[:-2]
    ):
        raise TypeInferenceError(f"'attention' shapes do not line up: q {q}, k {k}, v {v}")
    scores = (*q.shape[:-1], k.shape[-2])
    if broadcast_shapes("attention", scores, bias.shape) != scores:
        raise TypeInferenceError(
            f"'attention' bias {bias} does not broadcast to the scores [{','.join(map(str, scores))}]"
        )
    return [q.with_shape((*q.shape[:-1], v.shape[-1]))]


def _attention_ref(a: AttentionAttrs, args: Sequence[np.ndarray], out: Sequence[Type]) -> list[np.ndarray]:
    q, k, v, bias = args
    s = np.matmul(q, np.swapaxes(k, -1, -2)) * np.asarray(a.scale, q.dtype) + bias
    if a.causal:
        sq, sk = s.shape[-2], s.shape[-1]
        keep = np.arange(sk)[None, :] <= np.arange(sq)[:, None] + (sk - sq)
        s = np.where(keep, s, -np.inf)
    m = np.max(s, axis=-1, keepdims=True)
    e = np.exp(s - m)
    return [np.matmul(e / np.sum(e, axis=-1, keepdims=True), v)]


def fused_ops() -> list[OpDef]:
    return [
        OpDef(
            "fused",
            ("x",),
            _fused_infer,
            _fused_ref,
            attrs=FusedAttrs,
            variadic=True,
            doc="a kernel group: runs its body graph (inputs = operands)",
        ),
        OpDef(
            "attention",
            ("q", "k", "v", "bias"),
            _attention_infer,
            _attention_ref,
            attrs=AttentionAttrs,
            doc="softmax(q @ k^T * scale + bias [+ causal]) @ v, streamed with an online softmax",
        ),
    ]
