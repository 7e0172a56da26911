"""Executables: a graph after its pipeline, compiled by a backend, callable on arrays."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..backends import get_backend
from ..backends.base import Backend
from ..ir.core import Graph
from ..ir.errors import KilnError
from ..ir.registry import Context, default_context
from ..ir.signature import positional_to_named
from ..ir.targets import get_target
from ..passes.manager import PassManager
from .options import CompileOptions, default_cache_dir


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
        t0 = time.perf_counter()
        self._fn = backend.compile(graph)
        self.compile_s = time.perf_counter() - t0

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

    def stats(self) -> dict[str, Any]:
        """Figures about the compiled form: kernels (after fusion), ops (before), peak_bytes of
        planned buffers, compile_s; only what the backend knows."""
        ex = getattr(self._fn, "executor", None)
        out: dict[str, Any] = dict(ex.stats) if ex is not None else {}
        out.setdefault("compile_s", self.compile_s)
        return out

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
    cache_dir: str | os.PathLike[str] | None = None,
    fallback: bool = False,
    ctx: Context | None = None,
) -> Executable:
    """Verify ``graph``, run ``pipeline`` (default: the target's; "" for none) and compile the
    result for ``target``. ``cache_dir`` holds generated kernels (default ``$KILN_CACHE_DIR`` or
    ``~/.cache/kiln``); ``fallback`` runs ops the target cannot lower with the reference semantics."""
    ctx = ctx or default_context()
    options = CompileOptions(target, pipeline, verify_each, str(cache_dir) if cache_dir else None, fallback)
    graph.verify(ctx)
    tgt = get_target(target)
    backend = get_backend(target, ctx, cache_dir=Path(cache_dir) if cache_dir else default_cache_dir(),
                          fallback=fallback)  # fmt: skip
    spec = tgt.pipeline if pipeline is None else pipeline
    g = (
        PassManager.parse(spec, default=tgt.pipeline, verify_each=verify_each, ctx=ctx).run(graph)
        if spec
        else graph
    )
    return Executable(g, backend, options)
