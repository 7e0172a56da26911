"""What the MLIR backends share: the module description they compile, running pass stages with
diagnostics mapped back to kiln ops, binding symbolic dims, and calling the graph exporter.

The exporter (``kiln.ir.mlir.export``) gives every MLIR op a location
``loc("<kiln op> %<result> at <src>")``; a diagnostic's location therefore names the kiln op it
came from, and :func:`kiln_ops_of` pulls those names out of a printed location (transforms fuse
locations, so one diagnostic may name several ops).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ...ir.core import Graph
from ...ir.dtypes import DType
from ...ir.errors import BackendError, KilnError
from ...ir.types import TensorType

if TYPE_CHECKING:
    from mlir import ir as mlir_ir

ArgType = tuple[tuple[int, ...], np.dtype]


class ModuleSpec(Protocol):
    """A tensor-level MLIR module with one public function (what ``kiln.ir.mlir.export`` returns).

    The function takes ``arg_types`` (ranked static tensors) and returns ``result_types``;
    ``constant_refs`` name the graph constants passed after the graph inputs.
    """

    @property
    def text(self) -> str: ...
    @property
    def func_name(self) -> str: ...
    @property
    def arg_types(self) -> Sequence[ArgType]: ...
    @property
    def result_types(self) -> Sequence[ArgType]: ...


@dataclass(frozen=True)
class HandModule:
    """A hand-written module: the same fields as an export (tests, benchmarks)."""

    text: str
    func_name: str
    arg_types: list[ArgType]
    result_types: list[ArgType]


@dataclass(frozen=True)
class Stage:
    """One named step of a backend pipeline: an MLIR pass pipeline string and why it is there."""

    name: str
    passes: str
    doc: str


_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def kiln_ops_of(location: str) -> list[str]:
    """The kiln ops named by a printed MLIR location (``loc("matmul %3 at f.py:2")``), in order."""
    out: list[str] = []
    for name in _QUOTED.findall(location):
        if name and name not in out and not name.startswith("-"):  # "-" is the parser's file name
            out.append(name)
    return out


@dataclass
class Diagnostic:
    severity: str
    location: str
    message: str
    notes: list[str]

    def describe(self) -> str:
        ops = kiln_ops_of(self.location)
        where = f" (from kiln op {'; '.join(ops)})" if ops else ""
        notes = "".join(f"\n      note: {n}" for n in self.notes[:3])
        return f"{self.severity}: {self.message}{where}{notes}"


class DiagnosticLog:
    """Collects the diagnostics a context emits while it is attached (errors and warnings)."""

    def __init__(self) -> None:
        self.items: list[Diagnostic] = []

    def handler(self, d: Any) -> bool:
        sev = str(d.severity).rsplit(".", 1)[-1].lower()
        notes = [f"{n.message} [{n.location}]" for n in d.notes]
        self.items.append(Diagnostic(sev, str(d.location), str(d.message), notes))
        return True  # handled: MLIR must not print it to stderr

    def errors(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity == "error"]


@contextmanager
def diagnostics(context: mlir_ir.Context) -> Iterator[DiagnosticLog]:
    log = DiagnosticLog()
    handle = context.attach_diagnostic_handler(log.handler)
    try:
        yield log
    finally:
        handle.detach()


def stage_error(backend: str, stage: str, exc: BaseException, log: DiagnosticLog) -> BackendError:
    """A BackendError naming the failing step and, through locations, the kiln ops involved."""
    diags = log.errors()
    extra = getattr(exc, "error_diagnostics", None) or []
    for d in extra:  # MLIRError carries its own diagnostics when no handler saw them
        diags.append(Diagnostic("error", str(d.location), str(d.message), [str(n.message) for n in d.notes]))
    if diags:
        detail = "\n    ".join(d.describe() for d in diags[:5])
    else:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return BackendError(
        f"{backend}: the '{stage}' step failed:\n    {detail}\n"
        "  (this is a backend limitation, not an error in the graph; try --target reference or numba-cpu)"
    )


def run_stage(module: mlir_ir.Module, stage: Stage, backend: str) -> None:
    """Run one pass stage on ``module``; failures become BackendError naming the stage and op."""
    from mlir import passmanager

    ctx = module.context
    with diagnostics(ctx) as log:
        try:
            pm = passmanager.PassManager.parse(f"builtin.module({stage.passes})", context=ctx)
            pm.run(module.operation)
        except Exception as e:
            raise stage_error(backend, stage.name, e, log) from None


def apply_script(module: mlir_ir.Module, script: str, stage: str, backend: str) -> None:
    """Run the transform-dialect ``script`` (a named sequence ``@__transform_main``) on ``module``;
    a failure is a BackendError naming ``stage`` with the diagnostics."""
    from mlir import ir as mlir_ir
    from mlir.dialects.transform import interpreter

    ctx = module.context
    with diagnostics(ctx) as log:
        try:
            sched = mlir_ir.Module.parse(script, context=ctx)
            interpreter.apply_named_sequence(module.operation, sched.body.operations[0], sched)
        except Exception as e:
            raise stage_error(backend, stage, e, log) from None


def parse_module(spec: ModuleSpec, context: mlir_ir.Context, backend: str) -> mlir_ir.Module:
    """Parse the module text (through the export's own ``parse`` when it has one)."""
    from mlir import ir as mlir_ir

    with diagnostics(context) as log:
        try:
            parse = getattr(spec, "parse", None)
            if parse is not None:
                return parse(context)  # type: ignore[no-any-return]
            return mlir_ir.Module.parse(spec.text, context=context)
        except KilnError:
            raise
        except Exception as e:
            raise stage_error(backend, "parse", e, log) from None


# -- graphs ---------------------------------------------------------------------------------
def symbolic_dims(graph: Graph) -> set[str]:
    return {
        d for v in graph.inputs if isinstance(v.type, TensorType) for d in v.type.shape if isinstance(d, str)
    }


def bind_dims(graph: Graph, inputs: Mapping[str, Any], backend: str) -> dict[str, int]:
    """Symbolic dims bound from the shapes of the actual inputs (BackendError on a conflict)."""
    dims: dict[str, int] = {}
    for name, v in zip(graph.input_names, graph.inputs):
        if not isinstance(v.type, TensorType) or name not in inputs:
            continue
        shape = np.shape(inputs[name])
        if len(shape) != len(v.type.shape):
            raise BackendError(f"{backend}: input '{name}' has rank {len(shape)}, expected {v.type}")
        for d, n in zip(v.type.shape, shape):
            if isinstance(d, str):
                if dims.setdefault(d, int(n)) != int(n):
                    raise BackendError(f"{backend}: dim '{d}' is {dims[d]} in one input and {n} in '{name}'")
            elif d != n:
                raise BackendError(f"{backend}: input '{name}' has shape {shape}, expected {v.type}")
    return dims


def odd_width_values(graph: Graph) -> list[str]:
    """Graph inputs, outputs and constants whose integers are narrower than their storage
    (i4 in an int8): LLVM leaves the padding bits of such memref elements unspecified, so they
    cannot cross the function boundary reliably."""

    def odd(t: Any) -> bool:
        return (
            isinstance(t, TensorType)
            and isinstance(t.dtype, DType)
            and t.dtype.is_int
            and t.dtype.bits not in (8, 16, 32, 64)
        )

    lines = [f"input %{v.name}: {v.type}" for v in graph.inputs if odd(v.type)]
    lines += [f"output {n}: {v.type}" for n, v in graph.outputs if odd(v.type)]
    lines += [
        f"constant %{n.result.name}: {n.result.type}"
        for n in graph.nodes
        if n.op == "constant" and odd(n.result.type)
    ]
    return [
        f"{x}: integers narrower than their storage (i4 in int8) cannot cross the MLIR memref boundary reliably"
        for x in lines
    ]


def export_graph(graph: Graph, dims: Mapping[str, int] | None, backend: str) -> Any:
    """``kiln.ir.mlir.export`` of ``graph``; export refusals keep their KilnError message."""
    try:
        from ...ir.mlir import export
    except ImportError as e:  # the exporter is a separate module of kiln.ir
        raise BackendError(f"{backend}: the MLIR export (kiln.ir.mlir) is not available: {e}") from None
    return export(graph, dims=dict(dims) if dims else None)
