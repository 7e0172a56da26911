"""The CUDA driver API through ctypes: the dozen calls the mlir-cuda runner needs (device memory,
PTX modules JIT-compiled by the driver, kernel launches, events).

Why not a binding library: cuda-python or numba-cuda would add a dependency (and a version pinned
to the toolkit) for twelve C calls whose ABI has been stable since CUDA 4; libcuda itself comes
with the NVIDIA driver, not from pip.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from typing import Any

import numpy as np

from ...ir.errors import BackendError

_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76
_CU_JIT_INFO_LOG_BUFFER = 3
_CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES = 4
_CU_JIT_ERROR_LOG_BUFFER = 5
_CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES = 6
_LOG_BYTES = 16384


class CudaError(BackendError):
    """A CUDA driver call failed: names the call, the CUDA error and what kiln was doing."""


def _load_libcuda() -> ctypes.CDLL | None:
    for name in (ctypes.util.find_library("cuda"), "libcuda.so.1", "libcuda.so"):
        if not name:
            continue
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


class CudaDriver:
    """Device 0's primary context and the calls on it. ``CudaDriver.get()`` is the process-wide
    instance (a CudaError when there is no driver or no device)."""

    _instance: CudaDriver | None = None
    _lock = threading.Lock()

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        self.check(lib.cuInit(0), "cuInit")
        count = ctypes.c_int()
        self.check(lib.cuDeviceGetCount(ctypes.byref(count)), "cuDeviceGetCount")
        if count.value < 1:
            raise CudaError("mlir-cuda: the CUDA driver reports no GPU")
        dev = ctypes.c_int()
        self.check(lib.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
        self.device = dev.value
        ctx = ctypes.c_void_p()
        self.check(lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
        self.context = ctx
        name = ctypes.create_string_buffer(256)
        self.check(lib.cuDeviceGetName(name, 256, dev), "cuDeviceGetName")
        self.name = name.value.decode(errors="replace")
        major, minor = ctypes.c_int(), ctypes.c_int()
        self.check(
            lib.cuDeviceGetAttribute(ctypes.byref(major), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev),
            "cuDeviceGetAttribute",
        )
        self.check(
            lib.cuDeviceGetAttribute(ctypes.byref(minor), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev),
            "cuDeviceGetAttribute",
        )
        #: the PTX target of this GPU (sm_90 for Hopper)
        self.chip = f"sm_{major.value}{minor.value}"
        lib.cuLaunchKernel.argtypes = [
            ctypes.c_void_p, *([ctypes.c_uint] * 7), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        for fn in ("cuMemcpyHtoD_v2", "cuMemcpyDtoH_v2", "cuMemcpyDtoD_v2"):
            getattr(lib, fn).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        self.make_current()

    @classmethod
    def get(cls) -> CudaDriver:
        with cls._lock:
            if cls._instance is None:
                lib = _load_libcuda()
                if lib is None:
                    raise CudaError("mlir-cuda: no CUDA driver (libcuda.so) was found on this machine")
                cls._instance = cls(lib)
            return cls._instance

    def error_text(self, code: int) -> str:
        name, text = ctypes.c_char_p(), ctypes.c_char_p()
        self.lib.cuGetErrorName(code, ctypes.byref(name))
        self.lib.cuGetErrorString(code, ctypes.byref(text))
        n = name.value.decode() if name.value else f"error {code}"
        return f"{n}: {text.value.decode() if text.value else 'unknown'}"

    def check(self, code: int, call: str, doing: str = "") -> None:
        if code != 0:
            what = f" while {doing}" if doing else ""
            raise CudaError(f"mlir-cuda: {call} failed{what}: {self.error_text(code)}")

    def make_current(self) -> None:
        """The primary context on the calling thread (each thread that launches needs it)."""
        self.check(self.lib.cuCtxSetCurrent(self.context), "cuCtxSetCurrent")

    # -- memory ----------------------------------------------------------------------------------
    def alloc(self, nbytes: int) -> int:
        ptr = ctypes.c_uint64()
        self.check(
            self.lib.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(max(nbytes, 1))),
            "cuMemAlloc",
            f"allocating {nbytes} bytes",
        )
        return ptr.value

    def free(self, ptr: int) -> None:
        self.check(self.lib.cuMemFree_v2(ctypes.c_uint64(ptr)), "cuMemFree")

    def upload(self, ptr: int, data: np.ndarray) -> None:
        if data.nbytes:
            self.check(self.lib.cuMemcpyHtoD_v2(ptr, data.ctypes.data, data.nbytes), "cuMemcpyHtoD")

    def download(self, ptr: int, out: np.ndarray) -> None:
        if out.nbytes:
            self.check(self.lib.cuMemcpyDtoH_v2(out.ctypes.data, ptr, out.nbytes), "cuMemcpyDtoH")

    def copy(self, dst: int, src: int, nbytes: int) -> None:
        if nbytes:
            self.check(self.lib.cuMemcpyDtoD_v2(dst, src, nbytes), "cuMemcpyDtoD")

    # -- code --------------------------------------------------------------------------------------
    def load_ptx(self, ptx: str, what: str) -> ctypes.c_void_p:
        """A module JIT-compiled by the driver from PTX text; its error log goes into the error."""
        module = ctypes.c_void_p()
        err = ctypes.create_string_buffer(_LOG_BYTES)
        opts = (ctypes.c_int * 2)(_CU_JIT_ERROR_LOG_BUFFER, _CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES)
        vals = (ctypes.c_void_p * 2)(ctypes.cast(err, ctypes.c_void_p), ctypes.c_void_p(_LOG_BYTES))
        image = ctypes.c_char_p(ptx.encode() + b"\0")
        code = self.lib.cuModuleLoadDataEx(ctypes.byref(module), image, 2, opts, vals)
        if code != 0:
            log = err.value.decode(errors="replace").strip()
            raise CudaError(
                f"mlir-cuda: the driver could not load the PTX of {what}: {self.error_text(code)}"
                + (f"\n    {log}" if log else "")
            )
        return module

    def function(self, module: ctypes.c_void_p, name: str) -> ctypes.c_void_p:
        fn = ctypes.c_void_p()
        self.check(
            self.lib.cuModuleGetFunction(ctypes.byref(fn), module, name.encode()),
            "cuModuleGetFunction",
            f"looking up kernel {name}",
        )
        return fn

    def unload(self, module: ctypes.c_void_p) -> None:
        self.check(self.lib.cuModuleUnload(module), "cuModuleUnload")

    def launch(
        self,
        fn: Any,
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        smem: int,
        params: Any,
        what: str,
    ) -> None:
        code = self.lib.cuLaunchKernel(fn, *grid, *block, smem, None, params, None)
        if code != 0:
            self.check(code, "cuLaunchKernel", f"launching {what} (grid {grid}, block {block})")

    def synchronize(self, doing: str = "") -> None:
        self.check(self.lib.cuCtxSynchronize(), "cuCtxSynchronize", doing)

    # -- timing --------------------------------------------------------------------------------
    def event(self) -> ctypes.c_void_p:
        ev = ctypes.c_void_p()
        self.check(self.lib.cuEventCreate(ctypes.byref(ev), 0), "cuEventCreate")
        return ev

    def record(self, ev: ctypes.c_void_p) -> None:
        self.check(self.lib.cuEventRecord(ev, None), "cuEventRecord")

    def elapsed_ms(self, start: ctypes.c_void_p, end: ctypes.c_void_p) -> float:
        self.check(self.lib.cuEventSynchronize(end), "cuEventSynchronize")
        ms = ctypes.c_float()
        # CUDA 12.8 added a _v2 (same arguments); older drivers have only the first
        fn = getattr(self.lib, "cuEventElapsedTime_v2", None) or self.lib.cuEventElapsedTime
        self.check(fn(ctypes.byref(ms), start, end), "cuEventElapsedTime")
        return float(ms.value)


def driver_available() -> bool:
    """True when libcuda loads and reports at least one GPU."""
    try:
        CudaDriver.get()
    except CudaError:
        return False
    return True
