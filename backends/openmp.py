"""LLVM's OpenMP runtime (libomp), shared by the generated code of two backends.

- mlir-cpu: the schedule turns the outer tile loops into ``scf.forall``; ``convert-scf-to-openmp``
  makes them ``omp.parallel``/``omp.wsloop`` and LLVM's OpenMPIRBuilder emits calls to the
  ``__kmpc_*`` entry points.
- numba-cpu: the quantized matmul kernels fork their row chunks through ``__kmpc_fork_call``
  (qkernels.py), because numba's own OpenMP pool sleeps between regions and a GEMV is shorter
  than the wake-up.

The MLIR wheels ship no OpenMP runtime and the system's GNU libgomp has no ``__kmpc_*`` ABI, so the
runtime comes from the ``cmeel-libomp`` wheel (LLVM's libomp, 2 MB). The library is opened with
RTLD_LOCAL and its entry points are handed to each JIT by address: loaded globally, its ``GOMP_*``
compatibility symbols would interpose on the libgomp that numba's OpenMP layer uses.
"""

from __future__ import annotations

import ctypes
import os
from functools import cache
from importlib import metadata
from typing import Any

from ..ir.errors import BackendError

#: The runtime entry points OpenMPIRBuilder emits for ``omp.parallel`` + a static ``omp.wsloop``
#: (the only constructs convert-scf-to-openmp produces for reduction-free loops).
ENTRY_POINTS = tuple(
    "__kmpc_" + n
    for n in (
        "barrier",
        "fork_call",
        "global_thread_num",
        "push_num_threads",
        "serialized_parallel",
        "end_serialized_parallel",
        "for_static_init_4",
        "for_static_init_4u",
        "for_static_init_8",
        "for_static_init_8u",
        "for_static_fini",
        "reduce",
        "reduce_nowait",
        "end_reduce",
        "end_reduce_nowait",
        "critical",
        "end_critical",
    )
)

PACKAGE = "cmeel-libomp"


@cache
def runtime() -> ctypes.CDLL:
    """LLVM's libomp from the ``cmeel-libomp`` wheel, opened privately (once per process)."""
    try:
        files = metadata.files(PACKAGE) or []
    except metadata.PackageNotFoundError:
        files = []
    paths = [f.locate() for f in files if f.name == "libomp.so"]
    if not paths:
        raise BackendError(
            f"parallel kernels need LLVM's OpenMP runtime, which comes from the '{PACKAGE}' "
            f"package; install it (pip install {PACKAGE}) or compile with threads=1"
        )
    return ctypes.CDLL(str(paths[0]), mode=os.RTLD_LOCAL)


def address(name: str) -> int:
    """The address of one libomp function."""
    fn = getattr(runtime(), name)
    return int(ctypes.cast(fn, ctypes.c_void_p).value or 0)


def register(engine: Any) -> None:
    """Resolve the ``__kmpc_*`` calls of an MLIR ExecutionEngine's module to the private libomp
    (before the engine's first lookup, which is when ORC links the module)."""
    lib = runtime()
    for name in ENTRY_POINTS:
        fn = getattr(lib, name, None)
        if fn is not None:
            engine.raw_register_runtime(name, ctypes.cast(fn, ctypes.c_void_p))


def set_spin(ms: int) -> None:
    """How long the workers of teams forked by the calling thread spin after a parallel region
    before they sleep (libomp's blocktime, a per-thread setting)."""
    runtime().kmp_set_blocktime(ms)


def default_threads() -> int:
    """The team size the runtime uses when a kernel does not fix one (OMP_NUM_THREADS, else the
    cores this process may run on)."""
    return int(runtime().omp_get_max_threads())
