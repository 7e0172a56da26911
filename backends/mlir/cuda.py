"""The mlir-cuda backend: the exported tensor-level module mapped to the gpu dialect and lowered
through NVVM to PTX, which needs no GPU (LLVM's NVPTX backend runs in-process).

``ptx(graph, dims, chip)`` and ``source(graph)`` give the PTX. Running it is not implemented: no
CUDA driver or GPU was available to test a launcher (cuModuleLoadData + cuLaunchKernel over the
gpu.launch_func configurations), so ``compile`` raises BackendError, saying how to get the PTX.
"""

from __future__ import annotations

import ctypes.util
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

from ...ir.core import Graph
from ...ir.errors import BackendError, KilnError
from ...ir.registry import Context, default_context
from ...ir.targets import get_target
from ..base import CompiledFn
from .common import ModuleSpec, export_graph, odd_width_values, run_stage, symbolic_dims
from .pipeline import bufferized, cuda_stages

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
    for cand in (Path("/usr/local/cuda/nvvm/libdevice/libdevice.10.bc"),):
        if cand.is_file():
            return str(cand)
    return None


_ASSEMBLY = re.compile(r'assembly = "((?:[^"\\]|\\.)*)"')


def _unescape(s: str) -> str:
    # MLIR prints string attributes with \XX hex escapes (\0A newline, \09 tab) and \" \\
    return re.sub(
        r"\\([0-9A-Fa-f]{2}|\\|\")",
        lambda m: m.group(1) if len(m.group(1)) == 1 else chr(int(m.group(1), 16)),
        s,
    )


def module_ptx(spec: ModuleSpec, chip: str = "sm_90", block: tuple[int, int] = (16, 16)) -> str:
    """PTX text of every kernel of ``spec``: one PTX module per outlined gpu.module, separated
    by a comment line (ptxas takes them one at a time: see :func:`ptx_modules`)."""
    # A thread block larger than a loop's trip count leaves that loop unmapped (upstream's
    # gpu-map-parallel-loops then outlines nothing): halve the block until the kernels map.
    # A documented limit (README): one block size serves every kernel of the module, so one small
    # loop nest shrinks the blocks of all of them.
    while True:
        try:
            return PTX_SEPARATOR.join(ptx_modules(spec, chip, block))
        except BackendError as e:
            if "no gpu.binary" not in str(e) or block == (1, 1):
                raise
            block = (max(1, block[0] // 2), max(1, block[1] // 2))


PTX_SEPARATOR = "\n// ----- next gpu.module -----\n"


def ptx_modules(spec: ModuleSpec, chip: str = "sm_90", block: tuple[int, int] = (16, 16)) -> list[str]:
    """One PTX text per kernel module of ``spec`` (each assembles on its own)."""
    from mlir import ir as mlir_ir

    if chip not in CHIPS and not re.fullmatch(r"sm_\d+a?", chip):
        raise BackendError(f"{NAME}: unknown chip '{chip}'; expected one of {', '.join(CHIPS)}")
    context = mlir_ir.Context()
    with context, mlir_ir.Location.unknown():
        module = bufferized(spec, context, NAME)
        for stage in cuda_stages(chip, block, find_libdevice()):
            run_stage(module, stage, NAME)
        text = str(module)
    parts = [_unescape(m) for m in _ASSEMBLY.findall(text)]
    if not parts:
        raise BackendError(f"{NAME}: no gpu.binary was produced for @{spec.func_name}")
    return parts


def cuda_driver_available() -> bool:
    name = ctypes.util.find_library("cuda")
    if not name:
        return False
    try:
        lib = ctypes.CDLL(name)
        return int(lib.cuInit(0)) == 0
    except OSError:
        return False


class MlirCudaBackend:
    """Upstream MLIR for NVIDIA GPUs: linalg tiled into thread blocks through parallel loops,
    outlined into gpu kernels and lowered through NVVM to PTX (``source`` shows it). Running the
    PTX is not implemented (no GPU to test it on): ``compile`` refuses with a BackendError."""

    name = NAME

    def __init__(self, ctx: Context | None = None, *, cache_dir: Path | None = None) -> None:
        self.ctx = ctx or default_context()
        self.target = get_target(NAME)
        self.cache_dir = cache_dir

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
        return module_ptx(exp, chip, self.target.gpu_block)

    def compile(self, graph: Graph) -> CompiledFn:
        where = (
            "a CUDA driver (libcuda) is present but"
            if cuda_driver_available()
            else "no GPU/CUDA driver was found, and"
        )
        raise BackendError(
            f"{NAME}: cannot run @{graph.name}: {where} the mlir-cuda runner is not implemented; "
            f"the PTX is available with `kiln show FILE --target {NAME} --ptx` "
            "(or MlirCudaBackend.ptx(graph, dims, chip='sm_90'))"
        )

    def source(self, graph: Graph) -> str:
        """PTX for sm_90 (symbolic dims bound to 16 for display)."""
        try:
            return f"// {NAME}: PTX for sm_90\n" + self.ptx(graph)
        except KilnError as e:
            return f"// {NAME}: no PTX for @{graph.name}: {e}"
