"""The mlir-cpu backend: the exported tensor-level module, fused, bufferized, tiled and vectorised
by a transform-dialect schedule, lowered to LLVM and JIT-compiled by MLIR's ExecutionEngine.

A compiled kernel is called through the packed ``_mlir_ciface_`` wrapper with one memref
descriptor per argument: graph inputs, then the graph's constants (made contiguous once), then the
out-arrays the results are written into (``buffer-results-to-out-params``). ctypes releases the GIL
for the call. Symbolic dims are bound from the input shapes at call time: one kernel per binding,
kept in memory.
"""

from __future__ import annotations

import ctypes
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...ir.core import Graph
from ...ir.errors import BackendError, KilnError
from ...ir.registry import Context, default_context
from ...ir.targets import Target, get_target
from .. import openmp
from ..base import CompiledFn
from .approx import approximate_math
from .common import (
    ArgType,
    DiagnosticLog,
    ModuleSpec,
    apply_script,
    bind_dims,
    export_graph,
    kiln_ops_of,
    odd_width_values,
    run_stage,
    stage_error,
    symbolic_dims,
)
from .legalize import sub_byte_buffers
from .pipeline import (
    GENERALIZE_SCRIPT,
    CpuTiles,
    bufferized,
    cpu_lower,
    cpu_schedule,
    mark_for_generalize,
)

NAME = "mlir-cpu"

_DESCRIPTORS: dict[int, type[ctypes.Structure]] = {}


def descriptor_type(rank: int) -> type[ctypes.Structure]:
    """The ctypes layout of a ranked memref descriptor (element type does not change it)."""
    if rank not in _DESCRIPTORS:
        fields: list[tuple[str, Any]] = [
            ("allocated", ctypes.c_void_p),
            ("aligned", ctypes.c_void_p),
            ("offset", ctypes.c_int64),
        ]
        if rank:
            fields += [("shape", ctypes.c_int64 * rank), ("strides", ctypes.c_int64 * rank)]
        _DESCRIPTORS[rank] = type(f"MemRef{rank}D", (ctypes.Structure,), {"_fields_": fields})
    return _DESCRIPTORS[rank]


def descriptor(a: np.ndarray) -> ctypes.Structure:
    d = descriptor_type(a.ndim)()
    d.allocated = d.aligned = a.ctypes.data
    d.offset = 0
    if a.ndim:
        d.shape[:] = a.shape
        d.strides[:] = [s // a.itemsize if a.itemsize else 0 for s in a.strides]
    return d


class CpuKernel:
    """One JIT-compiled function: ``kernel(arrays)`` takes the function's arguments in order
    (inputs then constants) and returns freshly allocated result arrays."""

    def __init__(
        self,
        engine: Any,
        func_name: str,
        arg_types: Sequence[ArgType],
        result_types: Sequence[ArgType],
        *,
        compile_s: float,
        vectorized_ops: int,
        schedule_note: str | None,
        spin_ms: int | None = None,
    ) -> None:
        self.engine = engine  # keeps the JIT code alive
        self.func_name = func_name
        self.arg_types = list(arg_types)
        self.result_types = list(result_types)
        self.compile_s = compile_s
        self.vectorized_ops = vectorized_ops
        self.schedule_note = schedule_note
        addr = engine.raw_lookup("_mlir_ciface_" + func_name)
        if not addr:
            raise BackendError(
                f"{NAME}: the JIT has no function @{func_name} (missing llvm.emit_c_interface?)"
            )
        self.address = int(addr)
        self._fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(self.address)
        self._lock = threading.Lock()
        # libomp's blocktime is a per-thread setting of whoever forks the team: set on each call
        self._set_spin = openmp.runtime().kmp_set_blocktime if spin_ms is not None else None
        self.spin_ms = spin_ms

    def prepare(self, a: Any, i: int) -> np.ndarray:
        shape, dtype = self.arg_types[i]
        arr = np.asarray(a, dtype=dtype, order="C")  # (ascontiguousarray makes 0-d arrays 1-d)
        if arr.shape != tuple(shape):
            raise BackendError(
                f"{NAME}: argument {i} of @{self.func_name} has shape {arr.shape}, expected {shape}"
            )
        return arr

    def __call__(self, args: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(args) != len(self.arg_types):
            raise BackendError(
                f"{NAME}: @{self.func_name} takes {len(self.arg_types)} arguments, got {len(args)}"
            )
        arrays = [self.prepare(a, i) for i, a in enumerate(args)]
        outs = [np.empty(shape, dtype) for shape, dtype in self.result_types]
        self.call_raw([*arrays, *outs])
        return outs

    def call_raw(self, arrays: Sequence[np.ndarray]) -> None:
        """Call on prepared arrays (arguments then out-arrays); no checks."""
        descs = [descriptor(a) for a in arrays]
        ptrs = [ctypes.pointer(d) for d in descs]
        packed = (ctypes.c_void_p * len(ptrs))(*[ctypes.addressof(p) for p in ptrs])
        if self._set_spin is not None:
            self._set_spin(self.spin_ms)
        self._fn(packed)


def lower_module(
    spec: ModuleSpec, tiles: CpuTiles | None, context: Any, num_threads: int = 0
) -> tuple[Any, int]:
    """Parse ``spec`` and run the CPU pipeline up to the LLVM dialect (no schedule when ``tiles``
    is None: plain loops). ``num_threads`` fixes the OpenMP team of the parallel loops (0: the
    runtime's default). Returns the module and the number of vectorised ops."""
    from mlir import ir as mlir_ir

    with context, mlir_ir.Location.unknown():
        module = bufferized(spec, context, NAME)
        narrow = sub_byte_buffers(module)
        if narrow:
            raise BackendError(
                f"{NAME}: buffers of i1 or sub-byte integers remain after bufferization, which LLVM's memref "
                "lowering cannot load or store:\n    " + "\n    ".join(narrow[:5])
            )
        count = 0
        if tiles is not None:
            if mark_for_generalize(module):
                apply_script(module, GENERALIZE_SCRIPT, "generalize", NAME)
            approximate_math(module)
            script, count = cpu_schedule(module, tiles)
            apply_script(module, script, "schedule", NAME)
        run_stage(module, cpu_lower(num_threads), NAME)
    return module, count


def compile_module(
    spec: ModuleSpec,
    tiles: CpuTiles | None = None,
    *,
    strict: bool = False,
    num_threads: int = 0,
    spin_ms: int = 5,
) -> CpuKernel:
    """JIT-compile a tensor-level module. A failing schedule falls back to plain loops with a
    warning (the result is still correct, only slower) unless ``strict``. ``tiles.threads > 1``
    makes the outer tile loops parallel (OpenMP, ``num_threads`` threads; 0: the runtime's default),
    whose workers spin ``spin_ms`` after each loop before they sleep."""
    from mlir import ir as mlir_ir
    from mlir.execution_engine import ExecutionEngine

    t0 = time.perf_counter()
    tiles = tiles or CpuTiles()
    note: str | None = None
    context = mlir_ir.Context()
    try:
        module, count = lower_module(spec, tiles, context, num_threads)
    except BackendError as e:
        if strict or ("'schedule' step" not in str(e) and "'generalize' step" not in str(e)):
            raise
        note = str(e)
        warnings.warn(f"{NAME}: schedule failed, running @{spec.func_name} as plain loops: {e}", stacklevel=2)
        context = mlir_ir.Context()
        module, count = lower_module(spec, None, context)
    _check_externals(module)
    log = DiagnosticLog()
    handle = context.attach_diagnostic_handler(log.handler)
    try:
        engine = ExecutionEngine(module, opt_level=3)
    except Exception as e:
        raise stage_error(NAME, "jit", e, log) from None
    finally:
        handle.detach()
    if tiles.threads > 1:
        openmp.register(engine)
    return CpuKernel(
        engine,
        spec.func_name,
        spec.arg_types,
        spec.result_types,
        compile_s=time.perf_counter() - t0,
        vectorized_ops=count,
        schedule_note=note,
        spin_ms=spin_ms if tiles.threads > 1 else None,
    )


def _check_externals(module: Any) -> None:
    """Functions the module declares but does not define must come from the process (libm's
    erff, malloc); ORC would only print "Symbols not found" and return no function."""
    process = ctypes.CDLL(None)
    for op in module.body.operations:
        if op.operation.name == "llvm.func" and not op.regions[0].blocks:
            name = str(op.attributes["sym_name"]).strip('"')
            if not hasattr(process, name):
                ops = kiln_ops_of(str(op.location))
                where = f" (from kiln op {'; '.join(ops)})" if ops else ""
                raise BackendError(
                    f"{NAME}: the 'jit' step failed:\n    external function @{name} is not defined{where}"
                )


def lowered_text(spec: ModuleSpec, tiles: CpuTiles | None = None, num_threads: int = 0) -> str:
    """The LLVM-dialect MLIR the JIT compiles (after fuse, bufferize, schedule and lowering)."""
    from mlir import ir as mlir_ir

    module, _ = lower_module(spec, tiles or CpuTiles(), mlir_ir.Context(), num_threads)
    return str(module)


def tiles_of(target: Target, threads: int = 1) -> CpuTiles:
    tm, tn, strip = target.matmul_tile
    return CpuTiles(tm=tm, tn=tn, strip=strip, vector=max(8, target.vector_bytes), threads=threads)


class MlirCpuBackend:
    """Upstream MLIR on the CPU: linalg on tensors from ``kiln.ir.mlir.export``, fused, tiled and
    vectorised through the transform dialect, bufferized, lowered to LLVM and JIT-run on NumPy
    arrays. The outer tile loops run in parallel on LLVM's OpenMP runtime: ``threads`` threads,
    or, when None, the runtime's default (OMP_NUM_THREADS, else every core); 1 compiles
    sequential kernels. After each parallel loop the workers spin ``spin_ms`` milliseconds before
    they sleep (libomp's blocktime, set by kiln whatever OMP_WAIT_POLICY says: numba's backend
    sets PASSIVE, which made every op of a GPT-2 block pay a wake-up, 18 ms instead of 15)."""

    name = NAME

    def __init__(
        self,
        ctx: Context | None = None,
        *,
        cache_dir: Path | None = None,
        threads: int | None = None,
        spin_ms: int = 5,
    ) -> None:
        if threads is not None and threads < 1:
            raise BackendError(
                f"{NAME}: threads must be >= 1 (or None for the OpenMP default), got {threads}"
            )
        if spin_ms < 0:
            raise BackendError(f"{NAME}: spin_ms must be >= 0, got {spin_ms}")
        self.spin_ms = spin_ms
        self.ctx = ctx or default_context()
        self.target = get_target(NAME)
        self.num_threads = threads or 0
        team = threads if threads is not None else openmp.default_threads()
        self.tiles = tiles_of(self.target, team)
        self.cache_dir = cache_dir  # kernels are cached in memory only (JIT is ~0.1 s a graph)

    def unsupported(self, graph: Graph) -> list[str]:
        lines = odd_width_values(graph)
        dims = dict.fromkeys(symbolic_dims(graph), 16)  # any size: refusals depend on ops, not sizes
        try:
            export_graph(graph, dims, NAME)
        except KilnError as e:
            if type(e).__name__ == "MlirExportError" or not dims:
                lines.append(str(e))
        return lines

    def _kernel(self, graph: Graph, dims: Mapping[str, int]) -> tuple[Any, CpuKernel, list[np.ndarray]]:
        exp = export_graph(graph, dims, NAME)
        kernel = compile_module(exp, self.tiles, num_threads=self.num_threads, spin_ms=self.spin_ms)
        n_in = len(exp.input_names)
        consts = []
        for j, ref in enumerate(exp.constant_refs):
            if ref not in graph.constants:
                raise BackendError(f"{NAME}: constant '{ref}' of @{graph.name} has no data loaded")
            consts.append(kernel.prepare(graph.constants[ref], n_in + j))
        return exp, kernel, consts

    def compile(self, graph: Graph) -> CompiledFn:
        problems = self.unsupported(graph)
        if problems:
            raise BackendError(f"{NAME} cannot compile @{graph.name}:\n  " + "\n  ".join(problems))
        cache: dict[tuple[tuple[str, int], ...], tuple[Any, CpuKernel, list[np.ndarray]]] = {}
        lock = threading.Lock()
        if not symbolic_dims(graph):
            cache[()] = self._kernel(graph, {})

        def run(inputs: Mapping[str, Any]) -> dict[str, Any]:
            dims = bind_dims(graph, inputs, NAME)
            key = tuple(sorted(dims.items()))
            entry = cache.get(key)
            if entry is None:
                with lock:
                    entry = cache.get(key) or self._kernel(graph, dims)
                    cache[key] = entry
            exp, kernel, consts = entry
            missing = [n for n in exp.input_names if n not in inputs]
            if missing:
                raise BackendError(f"{NAME}: @{graph.name} is missing inputs {missing}")
            args = [kernel.prepare(inputs[n], i) for i, n in enumerate(exp.input_names)]
            outs = [np.empty(shape, dtype) for shape, dtype in kernel.result_types]
            kernel.call_raw([*args, *consts, *outs])
            return dict(zip(exp.output_names, outs))

        run.kernels = cache  # type: ignore[attr-defined]
        return run

    def source(self, graph: Graph) -> str:
        """The tensor-level MLIR module the pipeline starts from (the export of ``graph``)."""
        dims = dict.fromkeys(symbolic_dims(graph), 16)
        try:
            exp = export_graph(graph, dims, NAME)
        except KilnError as e:
            return f"// {NAME}: no MLIR for @{graph.name}: {e}"
        bound = f" (symbolic dims bound to {dims} for display)" if dims else ""
        return f"// {NAME}: tensor-level MLIR from kiln.ir.mlir.export{bound}\n{exp.text}"
