"""The host side of an mlir-cuda module as data: a launch plan.

After outlining, the public function of a bufferized kiln module is straight-line host code:
index constants, ``memref.alloc`` of temporaries, views of buffers, ``gpu.launch_func`` of the
outlined kernels and ``memref.dealloc``. Every shape is static (symbolic dims are bound before
export). :func:`launch_plan` reads that code into a :class:`LaunchPlan`: the device buffers
(arguments, temporaries, globals), and the launches with their grids and flattened kernel
parameters. :class:`PlanRunner` runs a plan on a :class:`Device`: buffers are allocated once, the
parameter blocks of every launch are built once (addresses do not move), and a call is uploads,
launches and downloads. Host code the plan cannot express (a loop or a load on the host) is
refused with the op's name and the kiln op it came from.

Kernel parameters follow MLIR's default memref calling convention, which ``convert-gpu-to-nvvm``
uses for the kernels: a memref of rank r becomes (allocated ptr, aligned ptr, offset, r sizes,
r strides), index becomes i64. The plan checks its flattening against each lowered kernel's
LLVM signature, so a mismatch is an error at compile time, not a crash on the GPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import ml_dtypes
import numpy as np

from ...ir.errors import BackendError
from .common import kiln_ops_of

NAME = "mlir-cuda"

#: ctypes storage of each scalar kernel parameter type (f16/bf16 are passed as their raw bits)
_CTYPES: dict[str, Any] = {
    "ptr": ctypes.c_uint64,
    "i1": ctypes.c_int8,
    "i8": ctypes.c_int8,
    "i16": ctypes.c_int16,
    "i32": ctypes.c_int32,
    "i64": ctypes.c_int64,
    "f16": ctypes.c_uint16,
    "bf16": ctypes.c_uint16,
    "f32": ctypes.c_float,
    "f64": ctypes.c_double,
}


@dataclass(frozen=True)
class Buffer:
    """A device allocation: argument ``arg`` of the function, a temporary, or a global's data."""

    kind: str  # "arg" | "temp" | "global"
    nbytes: int
    arg: int = -1
    data: np.ndarray | None = field(default=None, compare=False)


@dataclass(frozen=True)
class View:
    """A memref value: a buffer seen with a static offset, shape and strides (in elements)."""

    buffer: int
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    itemsize: int

    def flat(self) -> list[tuple[str, int | float]]:
        """The memref descriptor's fields as kernel parameters (pointers as buffer numbers)."""
        return [
            ("ptr", self.buffer),
            ("ptr", self.buffer),
            ("i64", self.offset),
            *(("i64", s) for s in self.shape),
            *(("i64", s) for s in self.strides),
        ]

    def contiguous(self) -> bool:
        expect = 1
        for size, stride in zip(reversed(self.shape), reversed(self.strides), strict=True):
            if size != 1 and stride != expect:
                return False
            expect *= size
        return True


@dataclass(frozen=True)
class Scalar:
    """A scalar kernel parameter: its LLVM type name and value."""

    type: str
    value: int | float

    def flat(self) -> list[tuple[str, int | float]]:
        return [(self.type, self.value)]


@dataclass(frozen=True)
class Launch:
    """One ``gpu.launch_func``: kernel ``kernel`` of binary ``module``."""

    module: str
    kernel: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    smem: int
    args: tuple[View | Scalar, ...]
    origin: str  # the kiln ops the kernel came from (for errors)

    def params(self) -> list[tuple[str, int | float]]:
        return [p for a in self.args for p in a.flat()]


@dataclass(frozen=True)
class Copy:
    """A device-to-device copy between two contiguous views of the same size."""

    dst: View
    src: View
    nbytes: int


@dataclass(frozen=True)
class LaunchPlan:
    """What the runner executes: buffers, steps in order, and the PTX of each kernel module."""

    func_name: str
    chip: str
    buffers: tuple[Buffer, ...]
    steps: tuple[Launch | Copy, ...]
    ptx: tuple[tuple[str, str], ...]  # (gpu.binary name, PTX text)

    @property
    def launches(self) -> list[Launch]:
        return [s for s in self.steps if isinstance(s, Launch)]

    def describe(self) -> str:
        """One line per step (``kiln show --target mlir-cuda`` prints it beside the PTX)."""
        lines = [f"// @{self.func_name}: {len(self.buffers)} device buffers, {len(self.steps)} steps"]
        for s in self.steps:
            if isinstance(s, Launch):
                lines.append(
                    f"//   launch {s.module}::{s.kernel} grid {s.grid} block {s.block}  ({s.origin})"
                )
            else:
                lines.append(f"//   copy {s.nbytes} bytes: buffer {s.src.buffer} -> buffer {s.dst.buffer}")
        return "\n".join(lines)


# -- reading the host function ----------------------------------------------------------------------
def _itemsize(t: Any) -> int:
    from mlir import ir as mlir_ir

    if isinstance(t, mlir_ir.IndexType):
        return 8
    width = int(getattr(t, "width", 0))
    if width % 8 or not width:
        raise BackendError(f"{NAME}: buffers of {t} cannot be addressed by the runner (not a whole byte)")
    return width // 8


def _scalar_type(t: Any) -> str:
    from mlir import ir as mlir_ir

    return "i64" if isinstance(t, mlir_ir.IndexType) else str(t)


def _layout(t: Any, what: str) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    from mlir import ir as mlir_ir

    dyn = mlir_ir.ShapedType.get_dynamic_size()
    strides, offset = t.get_strides_and_offset()
    shape = list(t.shape)
    if dyn in shape or dyn in strides or offset == dyn:
        raise BackendError(
            f"{NAME}: {what} has a dynamic shape or layout ({t}); the runner needs static ones"
        )
    return tuple(shape), tuple(strides), offset


def _extent(shape: Sequence[int], strides: Sequence[int], offset: int) -> int:
    """Elements from the buffer's start to one past the view's last element."""
    if 0 in shape:
        return 0
    return offset + 1 + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))


def _origin(op: Any) -> str:
    ops = kiln_ops_of(str(op.location))
    return "; ".join(ops) if ops else "no kiln op recorded"


def kernel_signatures(module: Any) -> dict[tuple[str, str], list[str]]:
    """(gpu.module name, kernel name) -> the LLVM types of the lowered kernel's parameters
    (read after ``convert-gpu-to-nvvm``, before serialisation to PTX)."""
    sigs: dict[tuple[str, str], list[str]] = {}
    for op in module.body.operations:
        if op.operation.name != "gpu.module":
            continue
        mod = str(op.attributes["sym_name"]).strip('"')
        for f in op.regions[0].blocks[0].operations:
            if f.operation.name == "llvm.func" and "nvvm.kernel" in f.attributes:
                name = str(f.attributes["sym_name"]).strip('"')
                sigs[(mod, name)] = [str(a.type) for a in f.regions[0].blocks[0].arguments]
    return sigs


def binaries(module: Any) -> list[tuple[str, str]]:
    """(gpu.binary name, PTX text) of each serialised kernel module."""
    from mlir.dialects import gpu

    out = []
    for op in module.body.operations:
        if op.operation.name == "gpu.binary":
            name = str(op.attributes["sym_name"]).strip('"')
            objects = op.attributes["objects"]  # one per target: kiln attaches one
            out.append((name, gpu.ObjectAttr(objects[0]).object.decode()))
    return out


_VIEW_OPS = frozenset({
    "memref.subview", "memref.expand_shape", "memref.collapse_shape", "memref.reinterpret_cast",
    "memref.cast", "memref.assume_alignment", "memref.reshape",
})  # fmt: skip
_IGNORED = frozenset({"memref.dealloc", "func.return"})


def read_host(
    module: Any, func_name: str, sigs: dict[tuple[str, str], list[str]]
) -> tuple[list[Buffer], list[Launch | Copy]]:
    """The buffers and steps of the public function ``func_name`` after outlining."""
    from mlir import ir as mlir_ir

    func = None
    globals_: dict[str, Any] = {}
    for op in module.body.operations:
        name = op.operation.name
        if name == "func.func" and str(op.attributes["sym_name"]).strip('"') == func_name:
            func = op
        elif name == "memref.global":
            globals_[str(op.attributes["sym_name"]).strip('"')] = op
    if func is None:
        raise BackendError(f"{NAME}: the module has no function @{func_name}")
    buffers: list[Buffer] = []
    steps: list[Launch | Copy] = []
    values: dict[Any, Any] = {}
    block = func.regions[0].blocks[0]
    for i, arg in enumerate(block.arguments):
        t = arg.type
        if not isinstance(t, mlir_ir.MemRefType):
            raise BackendError(f"{NAME}: argument {i} of @{func_name} is {t}, not a memref")
        shape, strides, offset = _layout(t, f"argument {i} of @{func_name}")
        size = _itemsize(t.element_type)
        buffers.append(Buffer("arg", _extent(shape, strides, offset) * size, arg=i))
        values[arg] = View(len(buffers) - 1, offset, shape, strides, size)
    for op in block.operations:
        name = op.operation.name
        where = f"host op {name} in @{func_name} (from kiln op {_origin(op)})"
        if name == "arith.constant":
            attr = op.attributes["value"]
            if not isinstance(attr, (mlir_ir.IntegerAttr, mlir_ir.FloatAttr)):
                raise BackendError(f"{NAME}: {where}: a non-scalar constant on the host is not supported")
            values[op.results[0]] = Scalar(_scalar_type(op.results[0].type), attr.value)
        elif name == "ub.poison" and not isinstance(op.results[0].type, mlir_ir.ShapedType):
            values[op.results[0]] = Scalar(_scalar_type(op.results[0].type), 0)  # any value will do
        elif name in ("memref.alloc", "memref.alloca"):
            t = op.results[0].type
            shape, strides, offset = _layout(t, where)
            size = _itemsize(t.element_type)
            buffers.append(Buffer("temp", _extent(shape, strides, offset) * size))
            values[op.results[0]] = View(len(buffers) - 1, offset, shape, strides, size)
        elif name == "memref.get_global":
            t = op.results[0].type
            sym = str(op.attributes["name"]).lstrip("@")
            shape, strides, offset = _layout(t, where)
            size = _itemsize(t.element_type)
            init = globals_[sym].attributes["initial_value"] if sym in globals_ else None
            data = np.array(init) if isinstance(init, mlir_ir.DenseElementsAttr) else None
            if data is not None and data.size == 1 and math.prod(shape) > 1:  # a splat
                data = np.full(shape, data.reshape(()), data.dtype)
            buffers.append(Buffer("global", math.prod(shape) * size, data=data))
            values[op.results[0]] = View(len(buffers) - 1, offset, shape, strides, size)
        elif name in _VIEW_OPS:
            src = values.get(op.operands[0])
            if not isinstance(src, View):
                raise BackendError(f"{NAME}: {where}: its source is not a buffer the runner knows")
            t = op.results[0].type
            shape, strides, offset = _layout(t, where)
            values[op.results[0]] = View(src.buffer, offset, shape, strides, src.itemsize)
        elif name == "gpu.launch_func":
            steps.append(_launch(op.operation.opview, values, sigs, where, _origin(op)))
        elif name == "memref.copy":
            src, dst = values.get(op.operands[0]), values.get(op.operands[1])
            if not (
                isinstance(src, View) and isinstance(dst, View) and src.contiguous() and dst.contiguous()
            ):
                raise BackendError(f"{NAME}: {where}: only copies between contiguous buffers run on the host")
            steps.append(Copy(dst, src, math.prod(src.shape) * src.itemsize))
        elif name in _IGNORED:
            continue  # buffers live as long as the plan; the function ends at its return
        else:
            raise BackendError(
                f"{NAME}: {where} has no GPU mapping: the runner executes only launches, copies and "
                "views on the host (a loop or a scalar load left outside the kernels is not supported)"
            )
    return buffers, steps


def _launch(
    op: Any, values: dict[Any, Any], sigs: dict[tuple[str, str], list[str]], where: str, origin: str
) -> Launch:
    def scalar(v: Any) -> int:
        s = values.get(v)
        if not isinstance(s, Scalar):
            raise BackendError(f"{NAME}: {where}: a launch size is not a constant")
        return int(s.value)

    ref = op.kernel
    module, kernel = ref.value[0], ref.value[-1]
    grid = (scalar(op.gridSizeX), scalar(op.gridSizeY), scalar(op.gridSizeZ))
    block = (scalar(op.blockSizeX), scalar(op.blockSizeY), scalar(op.blockSizeZ))
    smem = scalar(op.dynamicSharedMemorySize) if op.dynamicSharedMemorySize is not None else 0
    args: list[View | Scalar] = []
    for i, v in enumerate(op.kernelOperands):
        a = values.get(v)
        if a is None:
            raise BackendError(f"{NAME}: {where}: kernel operand {i} is not known on the host")
        args.append(a)
    launch = Launch(module, kernel, grid, block, smem, tuple(args), origin)
    want = sigs.get((module, kernel))
    got = [t for t, _ in launch.params()]
    if want is None or [("ptr" if t.startswith("!llvm.ptr") else t) for t in want] != got:
        raise BackendError(
            f"{NAME}: the parameters of kernel {module}::{kernel} do not match its launch "
            f"(kernel takes {want}, the launch passes {got}): {where}"
        )
    return launch


# -- running ------------------------------------------------------------------------------------------
class Device(Protocol):
    """What the runner needs of a GPU (``cudadrv.CudaDriver``; tests use a recording fake)."""

    chip: str

    def make_current(self) -> None: ...
    def alloc(self, nbytes: int) -> int: ...
    def free(self, ptr: int) -> None: ...
    def upload(self, ptr: int, data: np.ndarray) -> None: ...
    def download(self, ptr: int, out: np.ndarray) -> None: ...
    def copy(self, dst: int, src: int, nbytes: int) -> None: ...
    def load_ptx(self, ptx: str, what: str) -> Any: ...
    def function(self, module: Any, name: str) -> Any: ...
    def launch(self, fn: Any, grid: tuple[int, int, int], block: tuple[int, int, int], smem: int, params: Any, what: str) -> None: ...  # fmt: skip
    def synchronize(self, doing: str = "") -> None: ...


class PlanRunner:
    """A plan bound to a device: every buffer allocated once, every module loaded once, and the
    parameter block of every launch built once. ``set_arg`` uploads an argument that stays (a
    weight); ``run`` uploads the per-call inputs, launches the steps and downloads the outputs."""

    def __init__(self, plan: LaunchPlan, device: Device) -> None:
        self.plan = plan
        self.device = device
        device.make_current()
        self.addresses: list[int] = []
        self._arg_buffers = {b.arg: j for j, b in enumerate(plan.buffers) if b.kind == "arg"}
        try:
            for b in plan.buffers:
                self.addresses.append(device.alloc(b.nbytes))
            for b, ptr in zip(plan.buffers, self.addresses, strict=False):
                if b.kind == "global" and b.data is not None:
                    device.upload(ptr, np.ascontiguousarray(b.data))
            modules = {name: device.load_ptx(text, f"{name} of @{plan.func_name}") for name, text in plan.ptx}
            self.calls: list[tuple[Any, ...]] = []
            self._keep: list[Any] = [modules]
            for step in plan.steps:
                if isinstance(step, Copy):
                    self.calls.append(("copy", self._address(step.dst), self._address(step.src), step.nbytes))
                    continue
                fn = device.function(modules[step.module], step.kernel)
                cells = [
                    _CTYPES[t](self.addresses[int(v)] if t == "ptr" else _bits(t, v))
                    for t, v in step.params()
                ]
                argv = (ctypes.c_void_p * max(1, len(cells)))(*[ctypes.addressof(c) for c in cells])
                self._keep.append(cells)
                what = (
                    f"kernel {step.module}::{step.kernel} of @{plan.func_name} (from kiln op {step.origin})"
                )
                self.calls.append(("launch", fn, step.grid, step.block, step.smem, argv, what))
        except BaseException:
            self.close()
            raise

    def _address(self, v: View) -> int:
        return self.addresses[v.buffer] + v.offset * v.itemsize

    def arg_address(self, i: int) -> int:
        j = self._arg_buffers.get(i)
        if j is None:
            raise BackendError(f"{NAME}: @{self.plan.func_name} has no argument {i}")
        return self.addresses[j]

    def set_arg(self, i: int, data: np.ndarray) -> None:
        self.device.upload(self.arg_address(i), data)

    def launch_all(self) -> None:
        """The steps, asynchronously on the default stream (no upload, no download)."""
        dev = self.device
        for call in self.calls:
            if call[0] == "launch":
                dev.launch(*call[1:])
            else:
                dev.copy(*call[1:])

    def run(
        self, inputs: Sequence[tuple[int, np.ndarray]], outputs: Sequence[tuple[int, np.ndarray]]
    ) -> None:
        """Upload ``inputs`` ((argument, array)), run, download into ``outputs`` ((argument, array))."""
        dev = self.device
        dev.make_current()
        for i, a in inputs:
            dev.upload(self.arg_address(i), a)
        self.launch_all()
        for i, out in outputs:
            dev.download(self.arg_address(i), out)  # synchronous: waits for the launches
        dev.synchronize(f"running @{self.plan.func_name}")  # reports a kernel fault here if there was one

    def close(self) -> None:
        addresses, self.addresses = self.addresses, []
        for ptr in addresses:
            with contextlib.suppress(BackendError):  # at exit the context may be gone already
                self.device.free(ptr)

    def __del__(self) -> None:
        self.close()


def _bits(t: str, v: int | float) -> int | float:
    """f16/bf16 parameters are passed as their bit patterns."""
    if t == "f16":
        return int(np.array(v, np.float16).view(np.uint16))
    if t == "bf16":
        return int(np.array(v, ml_dtypes.bfloat16).view(np.uint16))
    if t.startswith("i"):
        return int(v)
    return float(v)
