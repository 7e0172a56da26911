"""ONNX import: ``kiln.from_onnx(path_or_model)`` -> a verified ``ir.Graph``.

Opsets 13 up to the newest the installed ``onnx`` knows are accepted. The model is checked before
any conversion: every unsupported operator (with node names), every dangling input, cycles and
unsupported dtypes are reported in ONE error. Values that only depend on constants (the
``Shape -> Gather -> Concat -> Reshape`` chains exporters emit) are folded while importing, so
shapes become static whenever the inputs are; symbolic dims (ONNX ``dim_param``) stay symbolic
unless bound with ``dims={"seq": 128}``. The per-operator rules live in ``onnx_rules.py``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..ir.builder import GraphBuilder
from ..ir.core import Graph, Value
from ..ir.dtypes import DType, from_numpy, parse_dtype
from ..ir.errors import KilnError
from ..ir.interpret import run_node
from ..ir.registry import Context, default_context
from ..ir.types import Dim, TensorType
from ..passes.simplify import DCE

MIN_OPSET = 13  # what kiln claims; older models import when each op's semantics are handled

#: Ops whose older schema versions mean something the rules do not implement: the oldest
#: ``since_version`` each rule handles (attributes that later became inputs are handled).
OLDEST_SCHEMA = {"Slice": 10, "TopK": 10, "Clip": 11, "Pad": 11, "Resize": 11, "Upsample": 100}


class OnnxImportError(KilnError):
    """The ONNX model cannot be imported (corrupt, unsupported, or ill-formed)."""


def _onnx() -> Any:
    import onnx

    return onnx


def max_opset() -> int:
    return int(_onnx().defs.onnx_opset_version())


_SPECIAL_DTYPES = {"INT4": "i4", "UINT4": "u4"}


def onnx_dtype(elem_type: int, where: str) -> DType:
    """The kiln dtype of an ONNX TensorProto element type."""
    onnx = _onnx()
    name = onnx.TensorProto.DataType.Name(elem_type) if elem_type else "UNDEFINED"
    if name in _SPECIAL_DTYPES:
        return parse_dtype(_SPECIAL_DTYPES[name])
    try:
        return from_numpy(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, KilnError):
        raise OnnxImportError(f"{where}: ONNX element type {name} has no kiln dtype") from None


def to_array(tensor: Any, where: str) -> np.ndarray:
    """An ONNX TensorProto's data as NumPy, in kiln's storage dtype."""
    onnx = _onnx()
    dt = onnx_dtype(tensor.data_type, where)
    try:
        arr = onnx.numpy_helper.to_array(tensor)
    except (ValueError, TypeError, OSError) as e:
        raise OnnxImportError(f"{where}: cannot read tensor data: {e}") from None
    return np.asarray(arr).astype(dt.np_dtype)


def _symbol(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return s if s and not s[0].isdigit() else f"d_{s}"


def load_model(model: str | os.PathLike[str] | Any) -> Any:
    """Load (and sanity-check the container of) an ONNX model; errors are OnnxImportError."""
    onnx = _onnx()
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.exists():
        raise OnnxImportError(f"{path}: no such file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError and friends
        raise OnnxImportError(
            f"{path} is not a readable ONNX model (truncated or corrupt?): {type(e).__name__}: {e}"
        ) from None
    if not proto.HasField("graph"):
        raise OnnxImportError(f"{path} holds no graph: is it an ONNX model?")
    try:
        onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as e:
        raise OnnxImportError(f"{path}: cannot load external weight data: {e}") from None
    return proto


class Importer:
    """State of one import: the builder, ONNX names -> kiln values, and constant data."""

    def __init__(self, opset: int, dims: Mapping[str, int], ctx: Context, name: str) -> None:
        self.opset = opset
        self.dims = dict(dims)
        self.builder = GraphBuilder(name, ctx)
        self.ctx = ctx
        self.env: dict[str, Value] = {}
        self.data: dict[Value, np.ndarray] = {}
        self.node_desc = ""

    # -- values ------------------------------------------------------------------------------
    def constant(self, arr: np.ndarray, hint: str = "c") -> Value:
        v = self.builder.constant(np.asarray(arr, order="C"), name=_symbol(hint) or "c")  # 0-d stays 0-d
        self.data[v] = self.builder.graph.constants[self.builder.graph.nodes[-1].attrs.ref]  # type: ignore[attr-defined]
        return v

    def const_of(self, v: Value | None) -> np.ndarray | None:
        return None if v is None else self.data.get(v)

    def require_const(self, v: Value | None, what: str) -> np.ndarray:
        data = self.const_of(v)
        if data is None:
            hint = ""
            if self.unbound_symbols:
                example = {s: 1 for s in sorted(self.unbound_symbols)}
                hint = (
                    f" It may depend on the symbolic dims {sorted(self.unbound_symbols)}: bind them, "
                    f"e.g. kiln.from_onnx(model, dims={example})"
                )
            raise OnnxImportError(f"{self.node_desc}: {what} must be a constant (static).{hint}")
        return data

    @property
    def unbound_symbols(self) -> set[str]:
        syms: set[str] = set()
        for v in self.builder.graph.inputs:
            if isinstance(v.type, TensorType):
                syms.update(d for d in v.type.shape if isinstance(d, str))
        return syms

    def emit(self, op: str, *operands: Value, **attrs: Any) -> Value:
        return self.emit_values(op, *operands, **attrs)[0]

    def emit_values(self, op: str, *operands: Value, **attrs: Any) -> list[Value]:
        """Add an op; when every operand is a constant, evaluate it now (shape arithmetic)."""
        g = self.builder.graph
        try:
            results = list(self.builder.op_values(op, *operands, **attrs))
        except KilnError as e:
            raise OnnxImportError(f"{self.node_desc}: {e}") from None
        datas = [self.const_of(v) for v in operands]
        if all(d is not None for d in datas) and all(r.tensor_type.is_static for r in results):
            biggest = max([d.size for d in datas if d is not None] + [1 << 16])
            if all(r.tensor_type.size <= biggest for r in results):
                node = g.nodes.pop()
                try:
                    ys = run_node(g, node, list(datas), {}, self.ctx)
                except KilnError as e:
                    raise OnnxImportError(f"{self.node_desc}: {e}") from None
                sized = [
                    (v, d.size) for v, d in zip(operands, datas, strict=True) if d is not None and d.size > 1
                ]
                src = max(sized, key=lambda vd: vd[1])[0].name if sized else None
                hint = f"{src}_{op}" if src else "fold"  # a folded weight keeps its source's name
                vals = [
                    self.constant(np.asarray(y), hint=r.name or hint)
                    for y, r in zip(ys, results, strict=True)
                ]
                for v, r in zip(vals, results, strict=True):
                    v.name = r.name  # the value takes the ONNX output's name (set by the caller)
                return vals
        return results


def _graph_input_type(vi: Any, dims: Mapping[str, int]) -> TensorType:
    where = f"graph input '{vi.name}'"
    if not vi.type.HasField("tensor_type"):
        raise OnnxImportError(
            f"{where}: only tensor inputs are supported (got {vi.type.WhichOneof('value')})"
        )
    tt = vi.type.tensor_type
    dt = onnx_dtype(tt.elem_type, where)
    if not tt.HasField("shape"):
        raise OnnxImportError(f"{where} has no shape: kiln needs the rank of every input")
    shape: list[Dim] = []
    for i, d in enumerate(tt.shape.dim):
        if d.HasField("dim_value"):
            shape.append(int(d.dim_value))
        else:
            sym = _symbol(d.dim_param) if d.dim_param else _symbol(f"{vi.name}_d{i}")
            shape.append(dims.get(sym, dims.get(d.dim_param, sym)))
    return TensorType(dt, tuple(shape))


def _describe(node: Any, i: int) -> str:
    return f"node '{node.name or f'#{i}'}' ({node.op_type})"


def _check_model(proto: Any, rules: Mapping[str, Any]) -> tuple[int, list[Any]]:
    """Every structural problem at once: opset, unsupported ops, dangling inputs, cycles."""
    g = proto.graph
    opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    opset = opsets.get("ai.onnx", 0)
    problems: list[str] = []
    if not 1 <= opset <= max_opset():
        problems.append(f"opset {opset} is outside what the installed onnx knows (1..{max_opset()})")
    unsupported: dict[str, list[str]] = {}
    for i, n in enumerate(g.node):
        domain = n.domain or "ai.onnx"
        key = n.op_type if domain == "ai.onnx" else f"{domain}.{n.op_type}"
        if key not in rules:
            unsupported.setdefault(key, []).append(n.name or f"#{i}")
        elif domain == "ai.onnx" and 1 <= opset <= max_opset():
            since = _since_version(n.op_type, opset)
            if since < OLDEST_SCHEMA.get(n.op_type, 0):
                unsupported.setdefault(f"{key}-{since}", []).append(n.name or f"#{i}")
    if unsupported:
        listing = "; ".join(f"{op} ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
                            for op, names in sorted(unsupported.items()))  # fmt: skip
        problems.append(f"unsupported operators at opset {opset}: {listing}")
    known = {vi.name for vi in g.input} | {t.name for t in g.initializer}
    known |= {o for n in g.node for o in n.output if o}
    for i, n in enumerate(g.node):
        missing = [x for x in n.input if x and x not in known]
        if missing:
            problems.append(
                f"{_describe(n, i)} uses {missing}: no graph input, initializer or node produces them"
            )
    for o in g.output:
        if o.name not in known:
            problems.append(f"graph output '{o.name}' is produced by no node")
    order = _topological(g.node)
    if len(order) < len(g.node) and not any("uses" in p for p in problems):
        stuck = sorted(set(range(len(g.node))) - set(order))
        names = ", ".join(_describe(g.node[i], i) for i in stuck[:6])
        problems.append(f"the graph has a cycle through {names}")
    if problems:
        raise OnnxImportError("cannot import this ONNX model:\n  " + "\n  ".join(problems))
    return opset, [g.node[i] for i in order]


def _since_version(op_type: str, opset: int) -> int:
    try:
        return int(_onnx().defs.get_schema(op_type, opset).since_version)
    except Exception:  # an op unknown to this onnx version: the rule decides
        return opset


def _topological(nodes: Sequence[Any]) -> list[int]:
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    deps = [{producer[x] for x in n.input if x in producer} for n in nodes]
    users: dict[int, list[int]] = {}
    for i, ds in enumerate(deps):
        for d in ds:
            users.setdefault(d, []).append(i)
    remaining = [len(ds) for ds in deps]
    ready = [i for i, r in enumerate(remaining) if r == 0]
    order: list[int] = []
    while ready:
        i = ready.pop(0)
        order.append(i)
        for u in users.get(i, []):
            remaining[u] -= 1
            if remaining[u] == 0:
                ready.append(u)
    return order


def from_onnx(
    model: str | os.PathLike[str] | Any,
    *,
    dims: Mapping[str, int] | None = None,
    constants: Mapping[str, np.ndarray] | None = None,
    ctx: Context | None = None,
) -> Graph:
    """Import an ONNX model (a path, or an ``onnx.ModelProto``) as a verified kiln graph.

    ``dims`` binds symbolic input dims (ONNX ``dim_param`` names) to sizes; ``constants`` turns
    graph inputs into constants (for inputs that set shapes, axes or K, which kiln needs static).
    """
    from .onnx_rules import RULES, attributes

    proto = load_model(model)
    opset, nodes = _check_model(proto, RULES)
    g = proto.graph
    imp = Importer(opset, dims or {}, ctx or default_context(), _symbol(g.name or "main") or "main")
    for t in g.initializer:
        imp.env[t.name] = imp.constant(to_array(t, f"initializer '{t.name}'"), hint=t.name)
    bound = dict(constants or {})
    unknown = set(bound) - {vi.name for vi in g.input}
    if unknown:
        raise OnnxImportError(f"constants= names {sorted(unknown)}, which are not graph inputs")
    for vi in g.input:
        if vi.name in bound:
            t = _graph_input_type(vi, imp.dims)
            arr = np.asarray(bound[vi.name]).astype(t.scalar_dtype.np_dtype)
            imp.env[vi.name] = imp.constant(arr, hint=vi.name)
        elif vi.name not in imp.env:  # old exporters list initializers as inputs too
            imp.env[vi.name] = imp.builder.input(vi.name, _graph_input_type(vi, imp.dims))
    for i, node in enumerate(nodes):
        imp.node_desc = _describe(node, i)
        imp.builder.loc = f"onnx:{node.name or node.op_type}"
        domain = node.domain or "ai.onnx"
        rule = RULES[node.op_type if domain == "ai.onnx" else f"{domain}.{node.op_type}"]
        args = [imp.env[x] if x else None for x in node.input]
        try:
            outs = rule(imp, attributes(node), args)
        except OnnxImportError:
            raise
        except KilnError as e:
            raise OnnxImportError(f"{imp.node_desc}: {e}") from None
        for name, v in zip(node.output, outs, strict=False):
            if name:
                if v.name is None or v.name.startswith("fold"):
                    v.name = name
                imp.env[name] = v
        if len([o for o in node.output if o]) > len(outs):
            extra = [o for o in node.output[len(outs) :] if o]
            if any(o in {x for n in nodes for x in n.input} | {o.name for o in g.output} for o in extra):
                raise OnnxImportError(f"{imp.node_desc}: optional outputs {extra} are not supported")
    for o in g.output:
        imp.builder.output(o.name, imp.env[o.name])
    # Initializers and folded values that only fed shape arithmetic are dead now.
    DCE().run(imp.builder.graph, imp.ctx)
    try:
        return imp.builder.build()
    except KilnError as e:
        raise OnnxImportError(f"the imported graph does not verify: {e}") from None
