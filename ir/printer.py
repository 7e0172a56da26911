"""The IR's text form.

::

    graph @block(%x: f32[1,128,768]) -> (out: f32[1,128,768]) {
      %w = constant {ref="w"} : f32[768,768]
      %0 = matmul(%x, %w) : f32[1,128,768]
      %1 = softmax(%0) {axis=2} : f32[1,128,768]
      return out=%1
    }

Constants with at most ``inline_limit`` (default 8) elements carry their data (``dense<[...]>``); larger ones
refer to the graph's constant table by ``ref`` (saved beside the text as ``.npz``).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re

import numpy as np

from .core import Attrs, Graph, Node, Value
from .dtypes import DType
from .types import TensorType

_NAME = re.compile(r"^[A-Za-z0-9_.]+\Z")  # \Z: "$" would accept a trailing newline
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*\Z")


def format_name(name: str) -> str:
    """An output or graph name: bare when it is an identifier, else a JSON string."""
    return name if _IDENT.match(name) else json.dumps(name)


def format_scalar(v: object) -> str:
    if isinstance(v, bool | np.bool_):
        return "true" if v else "false"
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        f = float(v)
        if f != f:
            return "nan"
        if f in (float("inf"), float("-inf")):
            return "inf" if f > 0 else "-inf"
        return repr(f)
    raise TypeError(f"cannot print {v!r}")


def format_attr_value(v: object) -> str:
    if isinstance(v, enum.Enum):
        return json.dumps(str(v.value))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, DType):
        return v.name
    if isinstance(v, Graph):
        # A region (a fused kernel's body): the nested graph, indented under its node.
        return print_graph(v).rstrip("\n").replace("\n", "\n    ")
    if isinstance(v, tuple | list):
        # Symbolic dims inside lists print bare, as in types: shape=[1,seq,768].
        return "[" + ",".join(_bare(x) if isinstance(x, str) else format_attr_value(x) for x in v) + "]"
    return format_scalar(v)


def _bare(s: str) -> str:
    return s if _IDENT.match(s) and s not in _KEYWORDS else json.dumps(s)


_KEYWORDS = {"true", "false", "inf", "nan", "dense", "loc"}


def format_attrs(attrs: Attrs) -> str:
    parts = []
    for f in dataclasses.fields(attrs):
        v = getattr(attrs, f.name)
        if f.default is not dataclasses.MISSING and v == f.default and type(v) is type(f.default):
            continue  # defaults are implied
        parts.append(f"{f.name}={format_attr_value(v)}")
    return "{" + ", ".join(parts) + "}" if parts else ""


def format_float_element(v: np.generic) -> str:
    """The shortest text that parses back to the same value of ``v``'s own (float) dtype."""
    f = float(v)
    if f != f or f in (float("inf"), float("-inf")):
        return format_scalar(f)
    text = str(v)
    if np.dtype(type(v)).type(float(text)) != v:  # e.g. a dtype without a shortest repr
        return repr(f)
    return text if any(c in text for c in ".en") else text + ".0"


def format_dense(arr: np.ndarray) -> str:
    def rec(a: np.ndarray) -> str:
        if a.ndim == 0:
            if a.dtype.kind in "biu":
                return format_scalar(a.item())
            return format_float_element(a[()])  # type: ignore[arg-type]
        return "[" + ", ".join(rec(x) for x in a) + "]"

    return f"dense<{rec(np.asarray(arr))}>"


class Namer:
    """Assigns printable, unique names: hints where valid, numbers elsewhere."""

    def __init__(self) -> None:
        self.names: dict[Value, str] = {}
        self.used: set[str] = set()
        self.counter = 0

    def name(self, v: Value) -> str:
        if v in self.names:
            return self.names[v]
        hint = v.name
        if hint is not None and not _NAME.match(hint):
            hint = re.sub(r"[^A-Za-z0-9_.]", "_", hint).strip("_") or None
        if hint is None or hint in self.used or hint.isdigit():
            if hint is not None and not hint.isdigit():
                i = 1
                while f"{hint}_{i}" in self.used:
                    i += 1
                hint = f"{hint}_{i}"
            else:
                while str(self.counter) in self.used:
                    self.counter += 1
                hint = str(self.counter)
                self.counter += 1
        self.used.add(hint)
        self.names[v] = hint
        return hint

    def claim(self, v: Value) -> str:
        """An input keeps its exact name (it is the graph's signature), quoted when not bare."""
        if v.name and v.name not in self.used:
            self.used.add(v.name)
            self.names[v] = v.name if _NAME.match(v.name) else json.dumps(v.name)
            return self.names[v]
        return self.name(v)


def is_inlined(node: Node, data: np.ndarray, inline_limit: int) -> bool:
    """Whether a constant's data is printed in the text (small, plain) or kept by reference."""
    t = node.results[0].type
    quantized = isinstance(t, TensorType) and t.is_quantized  # codes are not values of the type
    return not quantized and np.size(data) <= inline_limit


def print_node(node: Node, namer: Namer, graph: Graph, *, locs: bool, inline_limit: int) -> str:
    results = ", ".join(f"%{namer.name(r)}" for r in node.results)
    operands = ", ".join(f"%{namer.name(v)}" for v in node.operands)
    text = f"{results} = {node.op}"
    if operands or node.op != "constant":
        text += f"({operands})"
    attrs = format_attrs(node.attrs)
    if attrs:
        text += f" {attrs}"
    if node.op == "constant":
        data = graph.constants.get(node.attrs.ref)  # type: ignore[attr-defined]
        if data is not None and is_inlined(node, data, inline_limit):
            text += f" {format_dense(data)}"
    text += " : " + ", ".join(str(r.type) for r in node.results)
    if locs and node.loc:
        text += f" loc({json.dumps(node.loc)})"
    return text


def print_graph(graph: Graph, *, locs: bool = False, inline_limit: int = 8) -> str:
    namer = Namer()
    # Inputs claim their names first so that hints elsewhere cannot take them.
    args = ", ".join(f"%{namer.claim(v)}: {v.type}" for v in graph.inputs)
    rets = ", ".join(f"{format_name(n)}: {v.type}" for n, v in graph.outputs)
    lines = [f"graph @{format_name(graph.name)}({args}) -> ({rets}) {{"]
    for node in graph.nodes:
        lines.append("  " + print_node(node, namer, graph, locs=locs, inline_limit=inline_limit))
    outs = ", ".join(f"{format_name(n)}=%{namer.name(v)}" for n, v in graph.outputs)
    lines.append(f"  return {outs}")
    lines.append("}")
    return "\n".join(lines) + "\n"
