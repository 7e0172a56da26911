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
    # bits, activation mode, microseconds for a 4096x4096 weight); the bitslice pass reads it
    qkernel_cost: tuple[tuple[str, str, int, str, float], ...] = ()
    # MLIR schedules: CPU matmul register block (rows, cols) and the B column strip packed per step;
    # GPU thread block (rows, cols) of the parallel-loop mapping
    matmul_tile: tuple[int, int, int] = (8, 32, 64)
    gpu_block: tuple[int, int] = (16, 16)


TARGETS: tuple[Target, ...] = (
    Target("reference", "cpu", "NumPy interpreter: the golden semantics (unfused, unoptimised)"),
    Target(
        "numba-cpu",
        "cpu",
        "fused kernels generated as Numba code, BLAS for matmuls, planned buffers",
        pipeline="canonicalize,constant-fold,cse,fuse-attention,canonicalize,cse,fuse-horizontal,fuse,dce",
        # benchmarks/lowbit.py, 2 threads, 4096x4096, median us: GEMV at M=1, GEMM at M=16, per
        # activation mode. int8 (the VNNI kernels): 2026-11-30 final run (GOMP_SPINCOUNT=10000);
        # bit-sliced wins only at 3 bits (no shift-and-mask split there). binary and f32
        # (`--part costs`, 2026-12-01): the float kernels on packed codes against the popcount
        # kernels on bit-sliced ones, which win binary GEMMs at 1 and 2 bits
        qkernel_cost=(
            ("packed", "gemv", 8, "int8", 423.3),
            ("bitsliced", "gemv", 8, "int8", 828.6),
            ("packed", "gemv", 4, "int8", 284.9),
            ("bitsliced", "gemv", 4, "int8", 433.1),
            ("packed", "gemv", 3, "int8", 467.5),
            ("bitsliced", "gemv", 3, "int8", 359.2),
            ("packed", "gemv", 2, "int8", 196.7),
            ("bitsliced", "gemv", 2, "int8", 282.7),
            ("packed", "gemv", 1, "int8", 128.5),
            ("bitsliced", "gemv", 1, "int8", 191.2),
            ("packed", "gemm", 8, "int8", 1815.0),
            ("bitsliced", "gemm", 8, "int8", 3460.9),
            ("packed", "gemm", 4, "int8", 1937.9),
            ("bitsliced", "gemm", 4, "int8", 2446.8),
            ("packed", "gemm", 3, "int8", 2887.5),
            ("bitsliced", "gemm", 3, "int8", 2418.2),
            ("packed", "gemm", 2, "int8", 1708.7),
            ("bitsliced", "gemm", 2, "int8", 2276.6),
            ("packed", "gemm", 1, "int8", 1338.9),
            ("bitsliced", "gemm", 1, "int8", 2327.3),
            ("packed", "gemv", 1, "binary", 538.7),
            ("packed", "gemm", 1, "binary", 5384.2),
            ("bitsliced", "gemv", 1, "binary", 459.8),
            ("bitsliced", "gemm", 1, "binary", 2580.3),
            ("packed", "gemv", 2, "binary", 451.2),
            ("packed", "gemm", 2, "binary", 3661.4),
            ("bitsliced", "gemv", 2, "binary", 508.8),
            ("bitsliced", "gemm", 2, "binary", 2905.0),
            ("packed", "gemv", 3, "binary", 793.4),
            ("packed", "gemm", 3, "binary", 4400.8),
            ("bitsliced", "gemv", 3, "binary", 632.9),
            ("bitsliced", "gemm", 3, "binary", 3469.1),
            ("packed", "gemv", 4, "binary", 478.6),
            ("packed", "gemm", 4, "binary", 3798.2),
            ("bitsliced", "gemv", 4, "binary", 569.9),
            ("bitsliced", "gemm", 4, "binary", 3800.0),
            ("packed", "gemv", 8, "binary", 465.5),
            ("packed", "gemm", 8, "binary", 3953.4),
            ("bitsliced", "gemv", 8, "binary", 737.8),
            ("bitsliced", "gemm", 8, "binary", 5866.3),
            ("packed", "gemv", 1, "f32", 521.6),
            ("packed", "gemm", 1, "f32", 3714.6),
            ("bitsliced", "gemv", 1, "f32", 500.8),
            ("bitsliced", "gemm", 1, "f32", 3668.4),
            ("packed", "gemv", 2, "f32", 501.9),
            ("packed", "gemm", 2, "f32", 3688.2),
            ("bitsliced", "gemv", 2, "f32", 588.8),
            ("bitsliced", "gemm", 2, "f32", 5837.9),
            ("packed", "gemv", 3, "f32", 715.5),
            ("packed", "gemm", 3, "f32", 4212.4),
            ("bitsliced", "gemv", 3, "f32", 613.6),
            ("bitsliced", "gemm", 3, "f32", 5659.2),
            ("packed", "gemv", 4, "f32", 481.9),
            ("packed", "gemm", 4, "f32", 3696.0),
            ("bitsliced", "gemv", 4, "f32", 760.1),
            ("bitsliced", "gemm", 4, "f32", 5928.1),
            ("packed", "gemv", 8, "f32", 455.2),
            ("packed", "gemm", 8, "f32", 5230.0),
            ("bitsliced", "gemv", 8, "f32", 1022.3),
            ("bitsliced", "gemm", 8, "f32", 5769.1),
        ),
    ),
    Target(
        "jax",
        "cpu",
        "one jax.jit function per graph (XLA fuses); weights stay on the JAX device between calls",
        pipeline="canonicalize,constant-fold,cse,fuse-attention,canonicalize,cse,dce",
    ),
    Target(
        "mlir-cpu",
        "cpu",
        "upstream MLIR: linalg on tensors, tiled and vectorised, bufferized, lowered to LLVM and JIT-run",
        # kiln groups elementwise chains (each group exports as one linalg.generic); see
        # backends/mlir/pipeline.py for why MLIR's own elementwise fusion is not used
        pipeline="canonicalize,constant-fold,cse,fuse-attention,canonicalize,cse,"
        "fuse{epilogue=false,rows=false,horizontal=false,target=mlir-cpu},dce",
    ),
    Target(
        "mlir-cuda",
        "gpu",
        "upstream MLIR: linalg mapped to the gpu dialect, lowered through NVVM to PTX, run through the CUDA driver",
        pipeline="canonicalize,constant-fold,cse,fuse-attention,canonicalize,cse,dce",
        # benchmarks/gpu.py --blocks on an H200 (2026-11-30), GPT-2 block prefill: 16x16 6.74 ms,
        # 1x256 3.08, 1x128 3.13, 2x128 2.98, 4x64 3.03, 8x32 3.52. The second loop dim is the
        # innermost (contiguous) one for row-major outputs: a wide tile there coalesces the accesses
        gpu_block=(2, 128),
    ),
)


def get_target(name: str) -> Target:
    from .errors import KilnError

    for t in TARGETS:
        if t.name == name:
            return t
    known = ", ".join(t.name for t in TARGETS)
    raise KilnError(f"unknown target '{name}'; available targets: {known}")
