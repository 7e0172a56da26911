"""Backends, one per target; ``get_backend`` maps a target name to its implementation."""

from __future__ import annotations

from ..ir.registry import Context
from ..ir.targets import get_target
from .base import Backend, CompiledFn
from .reference import ReferenceBackend


def get_backend(target: str, ctx: Context | None = None) -> Backend:
    """The backend for ``target`` (raises KilnError naming the known targets)."""
    get_target(target)
    factories = {"reference": ReferenceBackend}
    return factories[target](ctx)


__all__ = ["Backend", "CompiledFn", "ReferenceBackend", "get_backend"]
