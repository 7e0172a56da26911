"""Upstream MLIR backends: mlir-cpu (linalg tiled and vectorised, JIT-run through LLVM) and
mlir-cuda (linalg mapped to the gpu dialect and lowered through NVVM to PTX).

Both start from ``kiln.ir.mlir.export``; pipeline.py holds their pass pipelines and the
transform-dialect schedule.
"""

from __future__ import annotations

from .cpu import MlirCpuBackend
from .cuda import MlirCudaBackend

__all__ = ["MlirCpuBackend", "MlirCudaBackend"]
