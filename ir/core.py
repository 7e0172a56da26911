"""The IR's data structures: SSA values, nodes (one small node type for every op) and graphs.

A :class:`Graph` has named inputs, a list of nodes in a valid (topological) order, named outputs,
and a table of constants (weights) that the text form refers to by name instead of inlining.
Values are compared by identity; names are only hints for printing.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .types import TensorType, Type

if TYPE_CHECKING:
    from .mlir import MlirExport
    from .registry import Context


@dataclass(frozen=True)
class Attrs:
    """Base of every op's typed attribute dataclass; subclasses add fields and ``verify``."""

    def verify(self) -> None:
        """Raise VerifyError when the attribute values are invalid on their own."""

    def replace(self, **changes: Any) -> Attrs:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class NoAttrs(Attrs):
    """The attributes of an op that takes none."""


_ids = itertools.count()


class Value:
    """An SSA value: a type, an optional name hint, and identity."""

    __slots__ = ("id", "name", "type")

    def __init__(self, type: Type, name: str | None = None) -> None:
        self.type = type
        self.name = name
        self.id = next(_ids)

    @property
    def tensor_type(self) -> TensorType:
        assert isinstance(self.type, TensorType), f"{self} is not a tensor"
        return self.type

    def __repr__(self) -> str:
        return f"Value(%{self.name or self.id}: {self.type})"


class Node:
    """One op application: ``results = op(operands) {attrs}``.

    ``loc`` is where the node came from (a Python ``file:line`` for traced code, an ONNX node
    name for imported models); errors quote it.
    """

    __slots__ = ("attrs", "loc", "op", "operands", "results")

    def __init__(
        self,
        op: str,
        operands: Sequence[Value],
        attrs: Attrs,
        results: Sequence[Value],
        loc: str | None = None,
    ) -> None:
        self.op = op
        self.operands = tuple(operands)
        self.attrs = attrs
        self.results = tuple(results)
        self.loc = loc

    @property
    def result(self) -> Value:
        assert len(self.results) == 1, f"{self.op} has {len(self.results)} results"
        return self.results[0]

    def describe(self) -> str:
        """A short description for error messages: the op, its first result and its location."""
        first = self.results[0].name if self.results and self.results[0].name else "?"
        where = f" at {self.loc}" if self.loc else ""
        return f"'{self.op}' (result %{first}){where}"

    def __repr__(self) -> str:
        return f"Node({self.op}, {len(self.operands)} operands, attrs={self.attrs})"


class Graph:
    """A function over tensors and host values.

    ``inputs`` are block arguments; ``outputs`` are (name, value) pairs; ``constants`` maps a
    constant's ``ref`` to its array (an absent ref means the data was not loaded).
    """

    def __init__(
        self,
        name: str,
        inputs: Sequence[Value],
        nodes: Sequence[Node],
        outputs: Sequence[tuple[str, Value]],
        constants: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        self.name = name
        self.inputs = list(inputs)
        self.nodes = list(nodes)
        self.outputs = list(outputs)
        self.constants: dict[str, np.ndarray] = dict(constants or {})

    # -- queries ---------------------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        return [v.name or f"arg{i}" for i, v in enumerate(self.inputs)]

    @property
    def output_names(self) -> list[str]:
        return [n for n, _ in self.outputs]

    def producers(self) -> dict[Value, Node]:
        return {r: n for n in self.nodes for r in n.results}

    def users(self) -> dict[Value, list[Node]]:
        out: dict[Value, list[Node]] = {}
        for n in self.nodes:
            for v in n.operands:
                out.setdefault(v, []).append(n)
        return out

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return counts

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def constant_of(self, node: Node) -> np.ndarray | None:
        """The data of a ``constant`` node, or None when it is not one or its data is absent."""
        if node.op != "constant":
            return None
        return self.constants.get(node.attrs.ref)  # type: ignore[attr-defined]

    # -- transforms ------------------------------------------------------------------------
    def replace_uses(self, mapping: Mapping[Value, Value]) -> None:
        """Rewrite every use of a key of ``mapping`` to its value (in nodes and outputs)."""

        def sub(v: Value) -> Value:
            while v in mapping:
                v = mapping[v]
            return v

        for n in self.nodes:
            n.operands = tuple(sub(v) for v in n.operands)
        self.outputs = [(name, sub(v)) for name, v in self.outputs]

    def prune_constants(self) -> None:
        """Drop constant data no ``constant`` node refers to any more."""
        live = {n.attrs.ref for n in self.nodes if n.op == "constant"}  # type: ignore[attr-defined]
        self.constants = {k: v for k, v in self.constants.items() if k in live}

    def copy(self) -> Graph:
        """A deep copy of the structure (new Values and Nodes); constant arrays are shared."""
        vmap: dict[Value, Value] = {}

        def cp(v: Value) -> Value:
            if v not in vmap:
                vmap[v] = Value(v.type, v.name)
            return vmap[v]

        inputs = [cp(v) for v in self.inputs]
        nodes = [
            Node(n.op, [cp(v) for v in n.operands], n.attrs, [cp(r) for r in n.results], n.loc)
            for n in self.nodes
        ]
        outputs = [(name, cp(v)) for name, v in self.outputs]
        return Graph(self.name, inputs, nodes, outputs, dict(self.constants))

    # -- text, checks and equality ---------------------------------------------------------
    def as_text(self, *, locs: bool = False, inline_limit: int = 8) -> str:
        from .printer import print_graph

        return print_graph(self, locs=locs, inline_limit=inline_limit)

    def __str__(self) -> str:
        return self.as_text()

    def to_mlir(self, dims: Mapping[str, int] | None = None, **kw: Any) -> MlirExport:
        """The graph as an MLIR module (upstream dialects; see kiln.ir.mlir.export): ``dims``
        binds symbolic dims; ``lower_kiln=False`` keeps quantized ops as ``kiln`` dialect ops."""
        from .mlir import export

        return export(self, dims=dims, **kw)

    def verify(self, ctx: Context | None = None) -> None:
        from .verifier import verify

        verify(self, ctx)

    def structural_key(self) -> tuple[Any, ...]:
        """A hashable description of the graph's structure, ignoring value names and locations."""
        index: dict[Value, int] = {}
        for i, v in enumerate(self.inputs):
            index[v] = i
        parts: list[Any] = [self.name, tuple((v.name, v.type) for v in self.inputs)]
        for n in self.nodes:
            ops = tuple(index.get(v, -1 - v.id) for v in n.operands)
            for r in n.results:
                index[r] = len(index)
            parts.append((n.op, ops, n.attrs, tuple(r.type for r in n.results)))
        parts.append(tuple((name, index.get(v, -1)) for name, v in self.outputs))
        return tuple(parts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Graph):
            return NotImplemented
        if self.structural_key() != other.structural_key():
            return False
        if self.constants.keys() != other.constants.keys():
            return False
        return all(
            a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
            for a, b in ((self.constants[k], other.constants[k]) for k in self.constants)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable; use structural_key() to hash

    def __repr__(self) -> str:
        return f"Graph(@{self.name}, {len(self.inputs)} inputs, {len(self.nodes)} nodes)"
