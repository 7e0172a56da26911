"""The pass interface and the graph rewriter passes build on."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ..ir.builder import infer_types, make_attrs
from ..ir.core import Attrs, Graph, Node, Value
from ..ir.quant import QuantizedWeight
from ..ir.registry import Context


@dataclass(frozen=True)
class Pass(abc.ABC):
    """A graph-to-graph transformation. Subclasses are frozen dataclasses whose fields are the
    pass's typed options (they become pipeline options: ``name{field=value}``)."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    @abc.abstractmethod
    def run(self, graph: Graph, ctx: Context) -> Graph:
        """Transform ``graph`` (the manager hands over a copy it may mutate) and return it."""

    @classmethod
    def options(cls) -> list[dataclasses.Field[Any]]:
        return list(dataclasses.fields(cls))

    def spec(self) -> str:
        """The pipeline text that recreates this pass with its options."""
        opts = [
            f"{f.name}={_fmt(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default
        ]
        return self.name + ("{" + ",".join(opts) + "}" if opts else "")


def _fmt(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"' if any(c in v for c in ",{} =") else v
    return str(v)


class Rewriter:
    """Walks a graph once, in order, letting a callback replace each node.

    The callback gets the node (operands already remapped) and returns None to keep it, or a list
    of replacement values for its results; it may build new nodes with :meth:`op`, which are
    placed before the node being replaced.
    """

    def __init__(self, graph: Graph, ctx: Context) -> None:
        self.graph = graph
        self.ctx = ctx
        self.new_nodes: list[Node] = []
        self.mapping: dict[Value, Value] = {}
        self.producer: dict[Value, Node] = {}
        self.loc: str | None = None
        self.changed = False

    def op(self, op: str, *operands: Value, attrs: Attrs | None = None, **kwargs: Any) -> Value:
        return self.op_values(op, *operands, attrs=attrs, **kwargs)[0]

    def op_values(self, op: str, *operands: Value, attrs: Attrs | None = None, **kwargs: Any) -> list[Value]:
        opdef = self.ctx.lookup(op)
        a = make_attrs(opdef, attrs, kwargs)
        results = [Value(t) for t in infer_types(opdef, a, [v.type for v in operands])]
        node = Node(op, operands, a, results, self.loc)
        self.new_nodes.append(node)
        for r in results:
            self.producer[r] = node
        return results

    def constant(self, data: Any, hint: str = "c") -> Value:
        from ..ir.builder import GraphBuilder

        b = GraphBuilder(self.graph.name, self.ctx)
        b.graph.constants = self.graph.constants
        b.loc = self.loc
        v = b.constant(data, name=self._fresh(hint))
        node = b.graph.nodes[-1]
        self.new_nodes.append(node)
        self.producer[v] = node
        return v

    def quantized(self, qw: QuantizedWeight, hint: str = "w") -> list[Value]:
        """Add a quantized weight's constants (codes, scales[, zeros]); returns them as operands."""
        from ..ir.builder import GraphBuilder

        b = GraphBuilder(self.graph.name, self.ctx)
        b.graph.constants = self.graph.constants
        b.loc = self.loc
        vals = b.quantized(qw, name=self._fresh(hint))
        for node in b.graph.nodes:
            self.new_nodes.append(node)
            self.producer[node.result] = node
        return vals

    def _fresh(self, hint: str) -> str:
        name, i = hint, 0
        while name in self.graph.constants:
            i += 1
            name = f"{hint}_{i}"
        return name

    def run(self, fn: Callable[[Node, Rewriter], list[Value] | None]) -> Graph:
        def sub(v: Value) -> Value:
            while v in self.mapping:
                v = self.mapping[v]
            return v

        for node in self.graph.nodes:
            node.operands = tuple(sub(v) for v in node.operands)
            self.loc = node.loc
            mark = len(self.new_nodes)
            repl = fn(node, self)
            if repl is not None and [v.type for v in repl] == [r.type for r in node.results]:
                self.mapping.update(zip(node.results, repl, strict=True))
                self.changed = True
                continue
            del self.new_nodes[mark:]  # a declined rewrite leaves nothing behind
            self.new_nodes.append(node)
            for r in node.results:
                self.producer[r] = node
        self.graph.nodes = self.new_nodes
        self.graph.outputs = [(n, sub(v)) for n, v in self.graph.outputs]
        return self.graph
