"""The kernel cache: generated sources written as modules under the cache directory.

A kernel's module name is the hash of its source, so kernels with the same structure (12 layers
of one model, or a prefill and a decode step) are one module, compiled once; Numba's own cache
(``cache=True``) keeps the machine code in the module's ``__pycache__`` for the next process.
The key covers the source and the versions of kiln, numba and llvmlite. A module file whose text
does not hash to its name, or a Numba cache entry that fails to load, is deleted and rebuilt.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import llvmlite
import numba
from numba.core.errors import NumbaError

from ...ir.errors import BackendError

_PLACEHOLDER = "__KERNEL__"


def kernel_key(source: str) -> str:
    from ... import __version__

    text = f"{source}\nkiln={__version__} numba={numba.__version__} llvmlite={llvmlite.__version__}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class KernelCache:
    """Writes, verifies and imports kernel modules under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root) / "kernels"
        self.modules: dict[str, ModuleType] = {}

    def module(self, source: str) -> tuple[str, ModuleType]:
        """Import the module for ``source`` (whose function is named ``__KERNEL__``)."""
        key = kernel_key(source)
        name = f"k_{key}"
        if name in self.modules:
            return name, self.modules[name]
        text = f"# kiln kernel {key}\n" + source.replace(_PLACEHOLDER, name)
        path = self.root / f"{name}.py"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if not path.exists() or path.read_text() != text:
                if path.exists():  # corrupt or edited: never trust its compiled code either
                    self._drop_compiled(name)
                path.write_text(text)
        except OSError as e:
            raise BackendError(f"cannot write the kernel cache at {self.root}: {e.strerror}") from None
        mod = self._import(name, path)
        self.modules[name] = mod
        return name, mod

    def _import(self, name: str, path: Path) -> ModuleType:
        modname = f"kiln_kernels.{name}"
        spec = importlib.util.spec_from_file_location(modname, path)
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules[modname] = mod
        spec.loader.exec_module(mod)
        return mod

    def _drop_compiled(self, name: str) -> None:
        cache = self.root / "__pycache__"
        if cache.exists():
            for f in cache.glob(f"{name}*"):
                f.unlink(missing_ok=True)

    def call_checked(self, name: str, fn: Any, args: tuple[Any, ...]) -> Any:
        """First call of a kernel: a Numba cache entry that cannot be loaded is dropped and the
        kernel recompiled from source, once."""
        try:
            return fn(*args)
        except NumbaError as e:  # a typing or lowering failure: the kernel, not the cache
            raise BackendError(f"kernel {name} failed to compile: {str(e).splitlines()[0]}") from None
        except Exception as e:  # numba raises pickle, EOF, OS, ... errors for a damaged entry
            if not (self.root / "__pycache__").exists():
                raise
            warnings.warn(f"kiln: kernel cache entry {name} unreadable ({type(e).__name__}); recompiling",
                          RuntimeWarning, stacklevel=2)  # fmt: skip
            self._drop_compiled(name)
            sys.modules.pop(f"kiln_kernels.{name}", None)
            mod = self._import(name, self.root / f"{name}.py")
            self.modules[name] = mod
            fresh = getattr(mod, fn.__name__ if hasattr(fn, "__name__") else name)
            return fresh(*args)

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self.modules.clear()
