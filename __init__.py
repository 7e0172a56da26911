"""kiln: lower agent graphs and transformer graphs to fused, quantized kernels.

The public API (names only; the code lives in the sub-packages)::

    @kiln.jit                      trace a function written with kiln.ops / NumPy operators
    kiln.compile(graph, target=)   run a pipeline and compile a graph to an executable
    kiln.parse(text), kiln.load(path), kiln.save(graph, path)
    kiln.from_onnx(path), kiln.to_onnx(graph, path), kiln.targets(), kiln.KilnError
"""

from __future__ import annotations

from . import ops
from .frontends.jit import Compiled, Jitted, Lowered, jit
from .frontends.onnx import OnnxImportError, from_onnx
from .frontends.onnx_export import OnnxExportError, to_onnx
from .ir.builder import GraphBuilder
from .ir.core import Graph, Node, Value
from .ir.dtypes import DType, QuantType, bf16, boolean, f16, f32, f64, i8, i16, i32, i64, u8
from .ir.errors import (
    BackendError,
    KilnError,
    ParseError,
    PipelineError,
    SignatureError,
    TraceError,
    UnknownOpError,
    VerifyError,
)
from .ir.io import load, save
from .ir.parser import parse
from .ir.registry import Context, default_context
from .ir.targets import Target
from .ir.types import HostType, TensorType
from .passes.manager import PassManager
from .runtime.executable import Executable
from .runtime.executable import compile_graph as compile  # noqa: A004 - the public name

__version__ = "0.1.0"


def targets() -> list[Target]:
    """The targets this installation can compile for."""
    from .ir.targets import TARGETS

    return list(TARGETS)


__all__ = [
    "BackendError",
    "Compiled",
    "Context",
    "DType",
    "Executable",
    "Graph",
    "GraphBuilder",
    "HostType",
    "Jitted",
    "KilnError",
    "Lowered",
    "Node",
    "OnnxExportError",
    "OnnxImportError",
    "ParseError",
    "PassManager",
    "PipelineError",
    "QuantType",
    "SignatureError",
    "Target",
    "TensorType",
    "TraceError",
    "UnknownOpError",
    "Value",
    "VerifyError",
    "__version__",
    "bf16",
    "boolean",
    "compile",
    "default_context",
    "f16",
    "f32",
    "f64",
    "from_onnx",
    "i8",
    "i16",
    "i32",
    "i64",
    "jit",
    "load",
    "ops",
    "parse",
    "save",
    "targets",
    "to_onnx",
    "u8",
]
