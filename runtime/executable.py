"""Executables: a graph after its pipeline, compiled by a backend, callable on arrays."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..backends import get_backend
from ..backends.base import Backend
from ..ir.core import Graph
from ..ir.errors import KilnError
from ..ir.registry import Context, default_context
from ..ir.signature import positional_to_named
from ..passes.manager import DEFAULT_PIPELINE, PassManager
from .options import CompileOptions


class Executable:
    """``exe(*arrays)`` takes inputs in the graph's order and returns one array or a tuple;
    ``exe.run({name: array})`` returns outputs by name."""

    def __init__(self, graph: Graph, backend: Backend, options: CompileOptions) -> None:
        self.graph = graph
        self.backend = backend
        self.options = options
        unsupported = backend.unsupported(graph)
        if unsupported:
            raise KilnError(
                f"target '{backend.name}' cannot compile graph @{graph.name}:\n  " + "\n  ".join(unsupported)
            )
        self._fn = backend.compile(graph)

    @property
    def input_names(self) -> list[str]:
        return self.graph.input_names

    @property
    def output_names(self) -> list[str]:
        return self.graph.output_names

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return self._fn(inputs)

    def __call__(self, *args: Any) -> Any:
        outs = self.run(positional_to_named(self.graph, args))
        vals = tuple(outs[n] for n in self.output_names)
        return vals[0] if len(vals) == 1 else vals

    def as_text(self) -> str:
        """The IR that runs (after the pipeline), and generated source where there is any."""
        src = self.backend.source(self.graph)
        return self.graph.as_text() + (f"\n// ----- {self.backend.name} source -----\n{src}" if src else "")

    def __repr__(self) -> str:
        return f"Executable(@{self.graph.name}, target={self.backend.name!r})"


def compile_graph(
    graph: Graph,
    target: str = "reference",
    pipeline: str | None = None,
    *,
    verify_each: bool = False,
    ctx: Context | None = None,
) -> Executable:
    """Verify ``graph``, run ``pipeline`` (default: canonicalize,constant-fold,cse,dce; "" for
    none) and compile the result for ``target``."""
    ctx = ctx or default_context()
    options = CompileOptions(target, pipeline, verify_each)
    graph.verify(ctx)
    backend = get_backend(target, ctx)
    spec = DEFAULT_PIPELINE if pipeline is None else pipeline
    g = PassManager.parse(spec, verify_each=verify_each, ctx=ctx).run(graph) if spec else graph
    return Executable(g, backend, options)
