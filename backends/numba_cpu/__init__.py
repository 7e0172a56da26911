"""The numba-cpu backend: fused kernels generated as Numba code, BLAS matmuls, planned buffers.

See executor.py for the lowering table, codegen.py for the row kernels, attention.py for the
attention kernel and cache.py for the kernel cache.
"""

from __future__ import annotations

import os

# Numba's OpenMP workers busy-wait after each parallel region, and on a 2-core machine that steals
# the cores from the BLAS call that follows (measured: a GPT-2 block 36 ms instead of 10.5 ms).
# GOMP reads this once, when numba first starts its pool, so it is set here, before any kernel
# runs; a value the user set wins.
# (A GOMP_SPINCOUNT the user set is a choice too: a short spin makes back-to-back parallel kernels,
# such as the GEMVs of a quantized decode step, start in about 2 us instead of 50-200 us.)
if "GOMP_SPINCOUNT" not in os.environ:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...ir.core import Graph
from ...ir.registry import Context, default_context
from ...ir.targets import get_target
from ...passes.fuse import Fuse, elementwise_ops, is_row_op
from ..base import CompiledFn
from .cache import KernelCache
from .executor import Executor


class NumbaCpuBackend:
    """Generated Numba kernels for fused groups and attention; BLAS for matmuls."""

    name = "numba-cpu"

    def __init__(
        self, ctx: Context | None = None, cache_dir: Path | None = None, fallback: bool = False
    ) -> None:
        self.ctx = ctx or default_context()
        self.target = get_target("numba-cpu")
        self.cache = KernelCache(cache_dir or Path.home() / ".cache" / "kiln")
        self.fallback = fallback
        self.executors: dict[int, Executor] = {}

    def legalize(self, graph: Graph) -> Graph:
        """Ops fusion left bare (a pipeline without ``fuse``) become one-op kernel groups."""
        ew = elementwise_ops(self.ctx)
        if any(n.op in ew or is_row_op(n) for n in graph.nodes):
            graph = Fuse(elementwise=False, epilogue=False, rows=False).run(graph.copy(), self.ctx)
        return graph

    def unsupported(self, graph: Graph) -> list[str]:
        return []  # the executor reports refusals with the op names when it plans

    def compile(self, graph: Graph) -> CompiledFn:
        ex = Executor(self.legalize(graph), self.ctx, self.target, self.cache, self.fallback)
        self.executors[id(graph)] = ex

        def run(inputs: Mapping[str, Any]) -> dict[str, Any]:
            return ex.run(inputs)

        run.executor = ex  # type: ignore[attr-defined]
        return run

    def source(self, graph: Graph) -> str:
        ex = self.executors.get(id(graph))
        return "\n\n".join(dict.fromkeys(ex.sources)) if ex else ""
