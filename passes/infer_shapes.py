"""infer-shapes: recompute every result type from its operands, optionally binding symbolic dims.

``infer-shapes{bind="seq=128 batch=1"}`` substitutes the named dims in the inputs and in shape
attributes, then re-infers every type, so a graph imported with dynamic dims becomes static.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..ir.builder import infer_types
from ..ir.core import Attrs, Graph
from ..ir.errors import KilnError, PipelineError, VerifyError
from ..ir.registry import Context
from ..ir.signature import bind_type
from .base import Pass


def parse_bindings(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in text.replace(",", " ").split():
        name, eq, val = part.partition("=")
        if not eq or not (val.isascii() and val.isdigit()) or not name:  # int() rejects "²"
            raise PipelineError(f'bad binding {part!r}: expected NAME=SIZE, as in bind="seq=128"')
        out[name] = int(val)
    return out


def _bind_attrs(attrs: Attrs, dims: dict[str, int]) -> Attrs:
    changes = {}
    for f in dataclasses.fields(attrs):
        v = getattr(attrs, f.name)
        if isinstance(v, tuple) and any(isinstance(x, str) and x in dims for x in v):
            changes[f.name] = tuple(dims.get(x, x) if isinstance(x, str) else x for x in v)
    return dataclasses.replace(attrs, **changes) if changes else attrs


@dataclass(frozen=True)
class InferShapes(Pass):
    """Re-infer every result type; ``bind`` substitutes symbolic dims by sizes first."""

    name = "infer-shapes"
    summary = 'recompute result types from operands; bind="seq=128" makes dims static'

    bind: str = ""

    def run(self, graph: Graph, ctx: Context) -> Graph:
        dims = parse_bindings(self.bind)
        for v in graph.inputs:
            v.type = bind_type(v.type, dims)
        for node in graph.nodes:
            if node.op == "constant":
                continue
            node.attrs = _bind_attrs(node.attrs, dims)
            try:
                types = infer_types(ctx.lookup(node.op), node.attrs, [v.type for v in node.operands])
            except KilnError as e:
                raise VerifyError(f"{node.describe()}: {e}") from None
            for r, t in zip(node.results, types, strict=True):
                r.type = t
        return graph


@dataclass(frozen=True)
class Verify(Pass):
    """Check every IR invariant (types, SSA order, attributes); changes nothing."""

    name = "verify"
    summary = "check the IR's invariants"

    def run(self, graph: Graph, ctx: Context) -> Graph:
        graph.verify(ctx)
        return graph
