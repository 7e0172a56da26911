"""The interface every backend implements."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ..ir.core import Graph

# A compiled graph: named inputs in, named outputs out.
CompiledFn = Callable[[Mapping[str, Any]], dict[str, Any]]


class Backend(Protocol):
    """Compiles a verified graph (or one partition of it) to a callable.

    ``unsupported(graph)`` lists, one line each, what the backend refuses and why; ``compile``
    raises BackendError with those lines when the list is not empty. ``source(graph)`` returns the
    generated code for ``kiln show --kernels`` (empty for interpreters).
    """

    name: str

    def unsupported(self, graph: Graph) -> list[str]: ...

    def compile(self, graph: Graph) -> CompiledFn: ...

    def source(self, graph: Graph) -> str: ...
