"""The reference backend: a NumPy interpreter that runs any verified graph.

It is the golden semantics every other backend is tested against: each op runs its
``OpDef.reference`` (see ``kiln.ir.interpret`` for the dtype rules).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..ir.core import Graph
from ..ir.interpret import interpret
from ..ir.registry import Context, default_context
from .base import CompiledFn


class ReferenceBackend:
    """NumPy interpretation of every op: correct, unfused, and the golden semantics."""

    name = "reference"

    def __init__(self, ctx: Context | None = None) -> None:
        self.ctx = ctx or default_context()

    def unsupported(self, graph: Graph) -> list[str]:
        return [f"{n.describe()}: op has no reference semantics" for n in graph.nodes if n.op not in self.ctx]

    def compile(self, graph: Graph) -> CompiledFn:
        def run(inputs: Mapping[str, Any]) -> dict[str, Any]:
            return interpret(graph, inputs, self.ctx)

        return run

    def source(self, graph: Graph) -> str:
        return ""
