"""Export of kiln graphs to MLIR (upstream dialects: func, arith, math, tensor, linalg, scf).

``export(graph, dims=...)`` writes one public ``func.func`` per graph: the graph's inputs, then
its large constants (weights, passed as arguments so that modules stay small), as static ranked
tensors; the graph's outputs as results. Each kiln op is lowered by a rule from the table in
:mod:`.rules` (keyed by op name); ops without an upstream form appear as ``kiln`` dialect ops
(``lower_kiln=False``). The text is parsed and verified with the MLIR Python bindings; parse or
verifier diagnostics are mapped back to the kiln op they came from through op locations.

Symbolic dims are specialised: bind them with ``dims`` (``kiln show --mlir --dim seq=128``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core import Graph, Node
from ..dtypes import DType, QuantType
from ..errors import KilnError
from ..quant import codes_dtype, codes_shape
from ..registry import Context, default_context
from ..types import HostType
from .emit import Emitter, MlirExportError, Operand, elem_type, tensor_of, tensor_type

if TYPE_CHECKING:
    from mlir import ir as mlir_ir

#: Constants with at most this many elements are inlined as ``arith.constant dense<...>``.
INLINE_LIMIT = 64


class MlirError(KilnError):
    """MLIR rejected a module kiln produced (a kiln bug): the message holds the diagnostics, each
    with the kiln op it came from."""


@dataclass(frozen=True)
class MlirExport:
    """An exported graph: the module text and the calling convention of its one function."""

    text: str
    func_name: str
    input_names: list[str]
    constant_refs: list[str]
    output_names: list[str]
    arg_types: list[tuple[tuple[int, ...], np.dtype]]
    result_types: list[tuple[tuple[int, ...], np.dtype]]
    dims: dict[str, int] = field(default_factory=dict)

    def parse(self, context: mlir_ir.Context) -> mlir_ir.Module:
        """The module, parsed and verified in ``context`` (raises MlirError with mapped diagnostics)."""
        return parse_module(self.text, context)

    def as_text(self, locs: bool = False) -> str:
        """The module as MLIR prints it (``locs``: with the kiln op of every line)."""
        with new_context() as ctx:
            m = self.parse(ctx)
            return str(m.operation.get_asm(enable_debug_info=locs))


def new_context() -> mlir_ir.Context:
    """An MLIR context with every upstream dialect, accepting the ``kiln`` dialect's ops."""
    from mlir import ir as mlir_ir

    from .lower_kiln import load_kiln_dialect

    ctx = mlir_ir.Context()
    ctx.allow_unregistered_dialects = True
    load_kiln_dialect(ctx)  # kiln.qmatmul/qgather (lower_kiln=False) and !kiln.* host types, in IRDL
    return ctx


_LOC = re.compile(r'loc\("((?:[^"\\]|\\.)*)"\)')


def parse_module(text: str, context: mlir_ir.Context) -> mlir_ir.Module:
    """Parse and verify ``text``; diagnostics come back as MlirError naming the kiln op."""
    from mlir import ir as mlir_ir

    diags: list[str] = []

    def handler(d: Any) -> bool:
        diags.append(f"{d.message} (from kiln op {str(d.location)[5:-2] or '?'})")
        return True

    with context, mlir_ir.Location.unknown():
        h = context.attach_diagnostic_handler(handler)
        try:
            module = mlir_ir.Module.parse(text)
            ok = module.operation.verify()
        except mlir_ir.MLIRError as e:
            raise MlirError(_explain(str(e), text, diags)) from None
        finally:
            h.detach()
    if not ok:
        raise MlirError(_explain("the MLIR verifier rejected the module", text, diags))
    return module


def _explain(message: str, text: str, diags: list[str]) -> str:
    """Parse errors quote a line of the text: name the kiln op that line came from."""
    lines = text.splitlines()
    out = [message.splitlines()[0]]
    for m in re.finditer(r'"-":(\d+):\d+: (.*)', message):
        no = int(m.group(1))
        loc = _LOC.search(lines[no - 1]) if 0 < no <= len(lines) else None
        out.append(f"  {m.group(2)} (from kiln op {loc.group(1) if loc else '?'})")
    # verifier errors raised while parsing carry the op's own location: the kiln op's text
    for m in re.finditer(r'^error: "((?:[^"\\]|\\.)*)": (.*)$', message, re.M):
        out.append(f"  {m.group(2)} (from kiln op {m.group(1)})")
    out += [f"  {d}" for d in diags]
    return "\n".join(out) + "\nThis is a bug in kiln's MLIR export: please report it with the graph."


def _symbol(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$.]*", name) else f'"{name}"'


def _dense(a: np.ndarray, dt: DType) -> str:
    from .emit import float_literal

    flat = a.reshape(-1)
    if dt.is_bool:
        items = ["true" if v else "false" for v in flat]
    elif dt.is_float:
        items = [float_literal(float(v), dt) for v in flat.astype(np.float64)]
    else:
        items = [str(int(v)) for v in flat]
    if len(set(items)) == 1 and a.size > 0:
        return f"dense<{items[0]}>"
    nested = np.array(items, dtype=object).reshape(a.shape)

    def fmt(x: Any) -> str:
        return f"[{', '.join(fmt(y) for y in x)}]" if isinstance(x, np.ndarray) else str(x)

    return f"dense<{fmt(nested) if a.ndim else items[0]}>"


def export(
    graph: Graph,
    *,
    dims: Mapping[str, int] | None = None,
    lower_kiln: bool = True,
    verify: bool = True,
    ctx: Context | None = None,
) -> MlirExport:
    """``graph`` as an MLIR module (see the module docstring). ``lower_kiln=False`` keeps
    quantized ops as ``kiln`` dialect ops instead of unpacking them in linalg."""
    from .rules import lowering_rules

    ctx = ctx or default_context()
    bound = dict(dims or {})
    rules = lowering_rules(lower_kiln)
    missing = sorted({n.op for n in graph.nodes if n.op not in rules and n.op != "constant"})
    if missing:
        where = "; ".join(next(n.describe() for n in graph.nodes if n.op == op) for op in missing)
        raise MlirExportError(
            f"graph @{graph.name}: no MLIR lowering for op(s) {', '.join(missing)} ({where}); "
            "run it on another target or rewrite those ops"
        )
    em = Emitter()
    params: list[str] = []
    arg_types: list[tuple[tuple[int, ...], np.dtype]] = []
    for v in graph.inputs:
        name = em.fresh("arg")
        if isinstance(v.type, HostType):
            params.append(f"{name}: !kiln.{v.type.kind}")
            arg_types.append(((), np.dtype(object)))
            continue
        shape, dt = tensor_of(v.type, bound)
        em.bind(v, Operand(name, shape, dt))
        params.append(f"{name}: {tensor_type(shape, dt)}")
        arg_types.append((shape, dt.np_dtype))
    refs: list[str] = []
    for node in graph.nodes:
        em.at(node)
        if node.op == "constant":
            _constant(em, graph, node, bound, refs, params, arg_types)
            continue
        ins = [em.get(v) for v in node.operands]
        outs = [tensor_of(r.tensor_type, bound) for r in node.results]
        try:
            ys = rules[node.op](em, node, ins, outs)
        except MlirExportError as e:
            raise MlirExportError(f"{node.describe()}: {e}") from None
        for r, y in zip(node.results, ys, strict=True):
            em.bind(r, y)
    results = [em.get(v) for _, v in graph.outputs]
    em.loc = "return"
    em.line(f"func.return {', '.join(r.name for r in results)} : {', '.join(r.type for r in results)}")
    sig = ", ".join(r.type for r in results)
    head = (
        f"func.func @{_symbol(graph.name)}({', '.join(params)}) -> ({sig}) "
        "attributes {llvm.emit_c_interface} {"
    )
    text = "\n".join(["module {", f"  {head}", *[f"  {ln}" for ln in em.lines], "  }", "}", ""])
    out = MlirExport(
        text,
        graph.name,
        [v.name or f"arg{i}" for i, v in enumerate(graph.inputs)],
        refs,
        [n for n, _ in graph.outputs],
        arg_types,
        [(r.shape, r.dtype.np_dtype) for r in results],
        bound,
    )
    if verify:
        with new_context() as mctx:
            out.parse(mctx)
    return out


def _constant(
    em: Emitter,
    graph: Graph,
    node: Node,
    dims: dict[str, int],
    refs: list[str],
    params: list[str],
    arg_types: list[tuple[tuple[int, ...], np.dtype]],
) -> None:
    """A constant: inlined when small and loaded, else a function argument (weights)."""
    ref: str = node.attrs.ref  # type: ignore[attr-defined]
    t = node.result.tensor_type
    data = graph.constants.get(ref)
    if isinstance(t.dtype, QuantType):
        k, n = t.static_shape
        shape, sdt = codes_shape(t.dtype, k, n), codes_dtype(t.dtype)
        dt: DType = DType("u", sdt.itemsize * 8)
    else:
        shape, dt = tensor_of(t, dims)
    size = int(np.prod(shape))
    # (an empty constant is passed as an argument: dense<[]> cannot say a shape like 2x0x1)
    if data is not None and 0 < size <= INLINE_LIMIT and not isinstance(t.dtype, QuantType):
        y = em.op(f"arith.constant {_dense(np.asarray(data), dt)} : {tensor_type(shape, dt)}", shape, dt)
    else:
        name = em.fresh("w")
        refs.append(ref)
        params.append(f"{name}: {tensor_type(shape, dt)}")
        arg_types.append((tuple(shape), dt.np_dtype))
        y = Operand(name, tuple(shape), dt)
    em.bind(node.result, y)


__all__ = ["MlirError", "MlirExport", "MlirExportError", "elem_type", "export", "new_context", "parse_module"]
