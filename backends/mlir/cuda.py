"""The mlir-cuda backend: the exported tensor-level module mapped to the gpu dialect and lowered
through NVVM to PTX, which needs no GPU (LLVM's NVPTX backend runs in-process).

``ptx(graph, dims, chip)`` and ``source(graph)`` give the PTX. ``compile`` runs it: the host
function becomes a launch plan (``launch.py``), the driver JIT-compiles the PTX for the GPU it
finds (``cudadrv.py``), weights are uploaded once and stay on the device, and a call uploads the
inputs, launches the kernels in order on the default stream and downloads the outputs.
"""

from __future__ import annotations

import re
import shutil
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...ir.core import Graph
from ...ir.errors import BackendError, KilnError
from ...ir.registry import Context, default_context
from ...ir.targets import get_target
from ..base import CompiledFn
from .common import (
    ModuleSpec,
    apply_script,
    bind_dims,
    export_graph,
    odd_width_values,
    run_stage,
    symbolic_dims,
)
from .cudadrv import CudaDriver, driver_available
from .launch import Launch, LaunchPlan, PlanRunner, binaries, kernel_signatures, read_host
from .pipeline import GENERALIZE_SCRIPT, GpuTiles, bufferized, cuda_stages, gpu_schedule, mark_for_generalize

if TYPE_CHECKING:
    from mlir import ir as mlir_ir

NAME = "mlir-cuda"
CHIPS = ("sm_80", "sm_90")


def find_libdevice() -> str | None:
    """libdevice.10.bc of a CUDA toolkit next to ptxas/nvcc on PATH (math calls such as
    ``__nv_erff`` resolve against it); None when no toolkit is installed."""
    for tool in ("ptxas", "nvcc"):
        exe = shutil.which(tool)
        if exe:
            root = Path(exe).resolve().parent.parent
            for cand in (root / "nvvm" / "libdevice" / "libdevice.10.bc",):
                if cand.is_file():
                    return str(cand)
    for cand in sorted(Path("/usr/local").glob("cuda*/nvvm/libdevice/libdevice.10.bc")):
        return str(cand)
    return None


def module_ptx(spec: ModuleSpec, chip: str = "sm_90", block: tuple[int, int] = (16, 16)) -> str:
    """PTX text of every kernel of ``spec``: one PTX module per outlined gpu.module, separated
    by a comment line (ptxas takes them one at a time: see :func:`ptx_modules`)."""
    return PTX_SEPARATOR.join(text for _, text in launch_plan(spec, chip, block).ptx)


PTX_SEPARATOR = "\n// ----- next gpu.module -----\n"


def ptx_modules(spec: ModuleSpec, chip: str = "sm_90", block: tuple[int, int] = (16, 16)) -> list[str]:
    """One PTX text per kernel module of ``spec`` (each assembles on its own)."""
    return [text for _, text in launch_plan(spec, chip, block).ptx]


def _host_loops(module: mlir_ir.Module, func_name: str) -> bool:
    """Whether loops were left on the host (a loop nest that was not mapped to the GPU)."""
    for op in module.body.operations:
        if op.operation.name == "func.func" and str(op.attributes["sym_name"]).strip('"') == func_name:
            return any(o.operation.name.startswith("scf.") for o in op.regions[0].blocks[0].operations)
    return False


def launch_plan(
    spec: ModuleSpec,
    chip: str = "sm_90",
    block: tuple[int, int] = (16, 16),
    tiles: GpuTiles | None = GpuTiles(),  # noqa: B008 (frozen dataclass)
) -> LaunchPlan:
    """Lower ``spec`` for ``chip`` and read its host function into a :class:`LaunchPlan` (PTX
    included). No GPU is needed: LLVM's NVPTX backend runs in-process. ``tiles``: the register
    tiling of f32 matmuls (None: one output element per thread, as every other op); a schedule
    that fails falls back to that with a warning."""
    from mlir import ir as mlir_ir

    if chip not in CHIPS and not re.fullmatch(r"sm_\d+a?", chip):
        raise BackendError(f"{NAME}: unknown chip '{chip}'; expected one of {', '.join(CHIPS)}")
    # Loops left on the host (a schedule whose loops folded away, or, in upstream's mapping, a loop
    # shorter than its tile) cannot run: drop the schedule, then halve the block until all map.
    # A documented limit (README): one block size serves every loop the schedule does not cover.
    schedule = tiles is not None
    while True:
        context = mlir_ir.Context()
        with context, mlir_ir.Location.unknown():
            module = bufferized(spec, context, NAME)
            if schedule and tiles is not None:
                try:
                    if tiles.threads and mark_for_generalize(
                        module
                    ):  # named ops (fill, copy, ...) as generics
                        apply_script(module, GENERALIZE_SCRIPT, "generalize", NAME)
                    script, count = gpu_schedule(module, tiles)
                    if count:
                        apply_script(module, script, "schedule", NAME)
                except BackendError as e:
                    warnings.warn(
                        f"{NAME}: the GPU schedule failed, running @{spec.func_name} on upstream's loop mapping: {e}",
                        stacklevel=2,
                    )
                    schedule = False
                    continue
            mapping, lowering, serialize = cuda_stages(chip, block, find_libdevice())
            run_stage(module, mapping, NAME)
            if _host_loops(module, spec.func_name):
                if schedule:
                    warnings.warn(
                        f"{NAME}: the GPU schedule left loops on the host in @{spec.func_name}; "
                        "running it on upstream's loop mapping",
                        stacklevel=2,
                    )
                    schedule = False
                    continue
                if block != (1, 1):
                    block = (max(1, block[0] // 2), max(1, block[1] // 2))
                    continue
            run_stage(module, lowering, NAME)
            sigs = kernel_signatures(module)
            run_stage(module, serialize, NAME)
            buffers, steps = read_host(module, spec.func_name, sigs)
            return LaunchPlan(spec.func_name, chip, tuple(buffers), tuple(steps), tuple(binaries(module)))


def profile(runner: PlanRunner, driver: CudaDriver, calls: int = 10) -> list[tuple[float, str]]:
    """Median device milliseconds of each step of ``runner``'s plan (CUDA events around every
    launch and copy, ``calls`` times), slowest first, each with what the step is."""
    events = [(driver.event(), driver.event()) for _ in runner.calls]
    times: list[list[float]] = [[] for _ in runner.calls]
    driver.make_current()
    for _ in range(calls):
        for (start, end), call in zip(events, runner.calls, strict=True):
            driver.record(start)
            if call[0] == "launch":
                driver.launch(*call[1:])
            else:
                driver.copy(*call[1:])
            driver.record(end)
        for t, (start, end) in zip(times, events, strict=True):
            t.append(driver.elapsed_ms(start, end))
    steps = runner.plan.steps
    rows = []
    for t, step in zip(times, steps, strict=True):
        if isinstance(step, Launch):
            what = f"{step.kernel} grid {step.grid} block {step.block} ({step.origin})"
        else:
            what = f"copy {step.nbytes} bytes"
        rows.append((float(np.median(t)), what))
    return sorted(rows, reverse=True)


def cuda_driver_available() -> bool:
    """True when a CUDA driver loads and reports a GPU."""
    return driver_available()


class MlirCudaBackend:
    """Upstream MLIR for NVIDIA GPUs: linalg tiled into thread blocks through parallel loops,
    outlined into gpu kernels, lowered through NVVM to PTX (``source`` shows it) and run through
    the CUDA driver. Symbolic dims are bound from the input shapes at call time: one launch plan
    (and one set of device buffers) per binding."""

    name = NAME

    def __init__(
        self,
        ctx: Context | None = None,
        *,
        cache_dir: Path | None = None,
        block: tuple[int, int] | None = None,
        tiles: GpuTiles | None = GpuTiles(),  # noqa: B008 (frozen dataclass)
    ) -> None:
        self.ctx = ctx or default_context()
        self.target = get_target(NAME)
        self.cache_dir = cache_dir  # plans are kept in memory (PTX generation is ~0.1 s a graph)
        #: tile sizes of the two outer loop dims: the thread block of every kernel
        blk = tuple(block) if block is not None else self.target.gpu_block
        if len(blk) != 2 or min(blk) < 1 or blk[0] * blk[1] > 1024:
            raise BackendError(
                f"{NAME}: block must be two positive tile sizes with at most 1024 threads in all, got {block}"
            )
        self.block: tuple[int, int] = (int(blk[0]), int(blk[1]))
        #: register tiling of the f32 matmuls (None: one output element per thread)
        self.tiles = tiles

    def unsupported(self, graph: Graph) -> list[str]:
        lines = odd_width_values(graph)
        dims = dict.fromkeys(symbolic_dims(graph), 16)
        try:
            export_graph(graph, dims, NAME)
        except KilnError as e:
            if type(e).__name__ == "MlirExportError" or not dims:
                lines.append(str(e))
        return lines

    def ptx(self, graph: Graph, dims: Mapping[str, int] | None = None, chip: str = "sm_90") -> str:
        """The PTX of ``graph`` with its symbolic dims bound from ``dims`` (default 16 each)."""
        bound = {**dict.fromkeys(symbolic_dims(graph), 16), **(dims or {})}
        exp = export_graph(graph, bound, NAME)
        return PTX_SEPARATOR.join(text for _, text in launch_plan(exp, chip, self.block, self.tiles).ptx)

    def _runner(self, graph: Graph, dims: Mapping[str, int], driver: CudaDriver) -> tuple[Any, PlanRunner]:
        exp = export_graph(graph, dims, NAME)
        plan = launch_plan(exp, driver.chip, self.block, self.tiles)
        runner = PlanRunner(plan, driver)
        n_in = len(exp.input_names)
        for j, ref in enumerate(exp.constant_refs):
            if ref not in graph.constants:
                raise BackendError(f"{NAME}: constant '{ref}' of @{graph.name} has no data loaded")
            runner.set_arg(
                n_in + j, _prepare(graph.constants[ref], exp.arg_types[n_in + j], n_in + j, exp.func_name)
            )
        return exp, runner

    def compile(self, graph: Graph) -> CompiledFn:
        try:
            driver = CudaDriver.get()
        except BackendError as e:
            raise BackendError(
                f"{e}; @{graph.name} cannot run here. Its PTX is available without a GPU: "
                f"`kiln show FILE --target {NAME} --ptx` (or MlirCudaBackend.ptx(graph, dims, chip='sm_90'))"
            ) from None
        problems = self.unsupported(graph)
        if problems:
            raise BackendError(f"{NAME} cannot compile @{graph.name}:\n  " + "\n  ".join(problems))
        cache: dict[tuple[tuple[str, int], ...], tuple[Any, PlanRunner]] = {}
        lock = threading.Lock()
        if not symbolic_dims(graph):
            cache[()] = self._runner(graph, {}, driver)

        def run(inputs: Mapping[str, Any]) -> dict[str, Any]:
            dims = bind_dims(graph, inputs, NAME)
            key = tuple(sorted(dims.items()))
            with lock:  # one set of device buffers per binding: calls take turns
                entry = cache.get(key)
                if entry is None:
                    entry = cache[key] = self._runner(graph, dims, driver)
                exp, runner = entry
                missing = [n for n in exp.input_names if n not in inputs]
                if missing:
                    raise BackendError(f"{NAME}: @{graph.name} is missing inputs {missing}")
                args = [
                    (i, _prepare(inputs[n], exp.arg_types[i], i, exp.func_name))
                    for i, n in enumerate(exp.input_names)
                ]
                n_args = len(exp.arg_types)
                outs = [np.empty(shape, dtype) for shape, dtype in exp.result_types]
                runner.run(args, [(n_args + j, o) for j, o in enumerate(outs)])
            return dict(zip(exp.output_names, outs, strict=True))

        run.runners = cache  # type: ignore[attr-defined]
        return run

    def source(self, graph: Graph) -> str:
        """The launch plan and PTX for sm_90 (symbolic dims bound to 16 for display)."""
        try:
            bound = dict.fromkeys(symbolic_dims(graph), 16)
            plan = launch_plan(export_graph(graph, bound, NAME), "sm_90", self.block, self.tiles)
        except KilnError as e:
            return f"// {NAME}: no PTX for @{graph.name}: {e}"
        ptx = PTX_SEPARATOR.join(text for _, text in plan.ptx)
        return f"// {NAME}: PTX for sm_90\n{plan.describe()}\n{ptx}"


def _prepare(a: Any, argtype: tuple[tuple[int, ...], np.dtype], i: int, func: str) -> np.ndarray:
    shape, dtype = argtype
    arr = np.ascontiguousarray(np.asarray(a, dtype=dtype))
    if arr.shape != tuple(shape):
        raise BackendError(f"{NAME}: argument {i} of @{func} has shape {arr.shape}, expected {tuple(shape)}")
    return arr
