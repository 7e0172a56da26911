"""Backends, one per target; ``get_backend`` maps a target name to its implementation."""

from __future__ import annotations

from pathlib import Path

from ..ir.registry import Context
from ..ir.targets import get_target
from .base import Backend, CompiledFn
from .reference import ReferenceBackend


def get_backend(
    target: str, ctx: Context | None = None, *, cache_dir: Path | None = None, fallback: bool = False
) -> Backend:
    """The backend for ``target`` (raises KilnError naming the known targets)."""
    get_target(target)
    if target == "numba-cpu":
        from .numba_cpu import NumbaCpuBackend

        return NumbaCpuBackend(ctx, cache_dir=cache_dir, fallback=fallback)
    if target == "jax":
        from .jax import JaxBackend

        return JaxBackend(ctx)
    if target == "mlir-cpu":
        from .mlir import MlirCpuBackend

        return MlirCpuBackend(ctx, cache_dir=cache_dir)
    if target == "mlir-cuda":
        from .mlir import MlirCudaBackend

        return MlirCudaBackend(ctx, cache_dir=cache_dir)
    return ReferenceBackend(ctx)


__all__ = ["Backend", "CompiledFn", "ReferenceBackend", "get_backend"]
