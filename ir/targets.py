"""Targets as plain data: what a backend compiles for and the device it runs on.

Passes, backends and the runtime all read these descriptions; none of them imports another to
learn about hardware.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """A compilation target: its name, the device kind, a description, and the hardware limits
    the passes plan for (data, so that passes never import backends)."""

    name: str
    device: str  # "cpu" or "gpu"
    description: str
    max_kernel_inputs: int = 16  # operands one fused kernel may take
    scratch_bytes: int = 512 * 1024  # per-row scratch of a row kernel (about the L2 per core)
    parallel_min_elements: int = 1 << 15  # smaller kernels run on one thread (no fork/join cost)
    vector_bytes: int = 64  # SIMD width (AVX-512)
    pipeline: str = "canonicalize,constant-fold,cse,dce"  # what compile runs when given none
    gemv_max_rows: int = 4  # quantized matmuls with at most this many activation rows run GEMV kernels
    # measured cost of the quantized matmul kernels (benchmarks/lowbit.py): (layout, "gemv" | "gemm",
    # bits, microseconds for a 4096x4096 weight per activation row); the bitslice pass reads it
    qkernel_cost: tuple[tuple[str, str, int, float], ...] = ()


TARGETS: tuple[Target, ...] = (
    Target("reference", "cpu", "NumPy interpreter: the golden semantics (unfused, unoptimised)"),
    Target(
        "numba-cpu",
        "cpu",
        "fused kernels generated as Numba code, BLAS for matmuls, planned buffers",
        pipeline="canonicalize,constant-fold,cse,fuse-attention,canonicalize,cse,fuse-horizontal,fuse,dce",
    ),
)


def get_target(name: str) -> Target:
    from .errors import KilnError

    for t in TARGETS:
        if t.name == name:
            return t
    known = ", ".join(t.name for t in TARGETS)
    raise KilnError(f"unknown target '{name}'; available targets: {known}")
