"""Graph -> Python source of one jax function, one line per IR node, from a lowering table.

``RULES`` maps an op name to a :class:`Rule` whose ``render`` writes the right-hand side of that
node's line from its operands' names; :class:`Emitter` walks the graph, names values, turns
``constant`` nodes into parameters (weights) or literals (small scalars), inlines ``fused``
bodies, and applies the dtype rules of ir/interpret.py around ``arith`` rules: f16/bf16 operands
are widened to f32 and the result rounded once; integer results narrower than their storage
(``i4`` in int8) wrap to their width; ``widens`` rules compute integers in i64 and store back.
"""

from __future__ import annotations

import keyword
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ...ir.core import Graph, Node, Value
from ...ir.dtypes import DType, QuantType
from ...ir.ops.shape import slice_length
from ...ir.types import Dim, HostType, Shape, TensorType, Type

Render = Callable[[Node, list[str], "Emitter"], str]

#: Names the generated code uses for modules and settings (parameters must not shadow them).
RESERVED = {"jax", "jnp", "lax", "lib", "np", "HIGHEST", "kernel"}
#: Constants up to this many elements become literals in the program (XLA folds them);
#: larger ones are parameters held on the device, so that no big literal slows XLA down.
LITERAL_MAX_ELEMENTS = 1


@dataclass(frozen=True)
class Rule:
    """How one op lowers: ``render`` writes the expression; ``arith``: computes in the reference's
    compute dtypes (f16/bf16 in f32, rounded once; narrow ints wrapped); ``widens``: integer results
    are computed in i64 and stored back to the result's width."""

    render: Render
    arith: bool = False
    widens: bool = False


def lit(x: object) -> str:
    """A Python literal for an attribute value."""
    if isinstance(x, float) and not math.isfinite(x):
        return f'float("{x}")'
    if isinstance(x, tuple):
        return f"({lit(x[0])},)" if len(x) == 1 else "(" + ", ".join(lit(v) for v in x) + ")"
    return repr(x)


def atom(expr: str) -> str:
    """``expr`` parenthesised unless it is a name, a call or an index (so ``.astype`` binds to all)."""
    m = re.match(r"[A-Za-z_][\w.]*", expr)
    if m is None:
        return f"({expr})"
    depth = 0
    for ch in expr[m.end() :]:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif depth == 0:
            return f"({expr})"  # an operator at the top level
    return expr


def jnp_dtype(dt: DType) -> str:
    return f"jnp.{dt.np_dtype.name}"


def is_half(t: Type) -> bool:
    return (
        isinstance(t, TensorType) and isinstance(t.dtype, DType) and t.dtype.is_float and t.dtype.bits == 16
    )


def scalar(v: Value) -> DType:
    return v.tensor_type.scalar_dtype


def _ident(name: str, taken: set[str]) -> str:
    base = re.sub(r"\W", "_", name) or "x"
    if base[0].isdigit() or keyword.iskeyword(base) or base in RESERVED or re.fullmatch(r"(v|qt)\d+", base):
        base = f"{base}_"
    out, i = base, 1
    while out in taken:
        i += 1
        out = f"{base}_{i}"
    taken.add(out)
    return out


@dataclass
class Program:
    """The generated kernel: its source, parameters (graph inputs, then weights) and, per source
    line, the node it lowers (for error messages)."""

    source: str
    params: list[str]
    weights: list[np.ndarray]
    qtypes: dict[str, QuantType]
    line_nodes: dict[int, Node] = field(default_factory=dict)
    filename: str = ""  # set when the source is compiled


class Emitter:
    """Writes the kernel of one graph; rules call :meth:`shape` and :meth:`qtype` back."""

    def __init__(self, graph: Graph, rules: dict[str, Rule]) -> None:
        self.graph = graph
        self.rules = rules
        self.body: list[tuple[str, Node | None]] = []
        self.names: dict[Value, str] = {}
        self.taken: set[str] = set()
        self.inputs = [_ident(n, self.taken) for n in graph.input_names]
        self.weight_params: list[str] = []
        self.weights: list[np.ndarray] = []
        self._weight_ids: dict[int, str] = {}
        self.qtypes: dict[str, QuantType] = {}
        self.dims: dict[str, str] = {}
        self.literals: dict[Value, float | int | bool] = {}  # values of the literal constants
        self._count = 0

    # -- helpers for rules ---------------------------------------------------------------------
    def dim(self, d: Dim) -> str:
        return str(d) if isinstance(d, int) else self.dims[d]

    def shape(self, shape: Shape) -> str:
        dims = [self.dim(d) for d in shape]
        return f"({dims[0]},)" if len(dims) == 1 else f"({', '.join(dims)})"

    def qtype(self, q: QuantType) -> str:
        for name, known in self.qtypes.items():
            if known == q:
                return name
        name = f"qt{len(self.qtypes)}"
        self.qtypes[name] = q
        return name

    # -- the walk ------------------------------------------------------------------------------
    def _fresh(self) -> str:
        self._count += 1
        return f"v{self._count - 1}"

    def _bind_dims(self) -> None:
        for v, param in zip(self.graph.inputs, self.inputs, strict=True):
            if isinstance(v.type, TensorType):
                for i, d in enumerate(v.type.shape):
                    if isinstance(d, str) and d not in self.dims:
                        self.dims[d] = _ident(d, self.taken)
                        self.body.append((f"{self.dims[d]} = {param}.shape[{i}]", None))

    def _constant(self, graph: Graph, node: Node) -> None:
        ref = node.attrs.ref  # type: ignore[attr-defined]
        data = graph.constants[ref]  # unsupported() reported constants without data
        t = node.result.tensor_type
        if isinstance(t.dtype, DType) and data.size <= LITERAL_MAX_ELEMENTS:
            py = float if t.dtype.is_float else bool if t.dtype.is_bool else int
            scalar_value = py(data.reshape(-1)[0]) if data.size else 0
            self.literals[node.result] = scalar_value
            value = lit(scalar_value)
            name = self._fresh()
            self.names[node.result] = name
            self.body.append(
                (f"{name} = jnp.full({self.shape(t.shape)}, {value}, {jnp_dtype(t.dtype)})", node)
            )
            return
        key = id(data)  # fused bodies share their arrays with the graph: one parameter each
        if key not in self._weight_ids:
            self._weight_ids[key] = _ident(f"w_{ref}", self.taken)
            self.weight_params.append(self._weight_ids[key])
            self.weights.append(data)
        self.names[node.result] = self._weight_ids[key]

    def _finish(self, expr: str, rule: Rule, node: Node, r: Value) -> str:
        t = r.type
        if not (rule.arith or rule.widens) or not isinstance(t, TensorType) or not isinstance(t.dtype, DType):
            return expr
        dt = t.dtype
        if rule.arith and is_half(t):
            return f"{atom(expr)}.astype({jnp_dtype(dt)})"
        if dt.is_int and not dt.is_storage_exact:
            return f'lib.wrap({expr}, "{dt}")'
        if dt.is_int and rule.widens and dt.np_dtype != np.int64:
            return f"{atom(expr)}.astype({jnp_dtype(dt)})"
        return expr

    def _node(self, graph: Graph, node: Node) -> None:
        if node.op == "constant":
            self._constant(graph, node)
            return
        if node.op == "fused":
            body: Graph = node.attrs.body  # type: ignore[attr-defined]
            for v, outer in zip(body.inputs, node.operands, strict=True):
                self.names[v] = self.names[outer]
            self.body.append((f"# fused {node.attrs.kind}: {node.describe()}", None))  # type: ignore[attr-defined]
            for n in body.nodes:
                self._node(body, n)
            for r, (_, v) in zip(node.results, body.outputs, strict=True):
                self.names[r] = self.names[v]
            return
        rule = self.rules[node.op]
        args = [
            f"{self.names[v]}.astype(jnp.float32)" if rule.arith and is_half(v.type) else self.names[v]
            for v in node.operands
        ]
        expr = rule.render(node, args, self)
        outs = [self._fresh() for _ in node.results]
        for r, name in zip(node.results, outs, strict=True):
            self.names[r] = name
        if len(outs) == 1:
            self.body.append((f"{outs[0]} = {self._finish(expr, rule, node, node.results[0])}", node))
            return
        self.body.append((f"{', '.join(outs)} = {expr}", node))
        for r, name in zip(node.results, outs, strict=True):
            done = self._finish(name, rule, node, r)
            if done != name:
                self.body.append((f"{name} = {done}", node))

    def program(self) -> Program:
        g = self.graph
        for v, p in zip(g.inputs, self.inputs, strict=True):
            self.names[v] = p
        self._bind_dims()
        for node in g.nodes:
            self._node(g, node)
        outs = [self.names[v] for _, v in g.outputs]
        ret = f"({outs[0]},)" if len(outs) == 1 else f"({', '.join(outs)})"
        self.body.append((f"return {ret}", None))
        params = self.inputs + self.weight_params
        head = [f"# graph @{g.name}: {len(g.nodes)} nodes -> outputs {', '.join(g.output_names)}"]
        head += [f"# {name} = {q}" for name, q in self.qtypes.items()]
        head.append(f"def kernel({', '.join(params)}):")
        lines = list(head)
        line_nodes: dict[int, Node] = {}
        for text, src in self.body:
            lines.append(f"    {text}")
            if src is not None:
                line_nodes[len(lines)] = src
        return Program("\n".join(lines) + "\n", params, self.weights, dict(self.qtypes), line_nodes)


def unsupported(graph: Graph, rules: dict[str, Rule]) -> list[str]:
    """One line per thing the table cannot lower: unknown ops, host values, quantized inputs."""
    out: list[str] = []
    for v, name in zip(graph.inputs, graph.input_names, strict=True):
        if isinstance(v.type, HostType):
            out.append(f"input '{name}' of @{graph.name} is a host value ({v.type}): jax runs tensors only")
        elif isinstance(v.type, TensorType) and isinstance(v.type.dtype, QuantType):
            out.append(f"input '{name}' of @{graph.name} is quantized ({v.type}): pass it as a constant")
    for node in graph.nodes:
        host = [v for v in (*node.operands, *node.results) if isinstance(v.type, HostType)]
        if host:
            out.append(
                f"{node.describe()}: takes or makes host value {host[0].type}; the jax target runs "
                "tensors only (place this op on the host)"
            )
        elif node.op == "fused":
            out.extend(unsupported(node.attrs.body, rules))  # type: ignore[attr-defined]
        elif node.op == "constant":
            if node.attrs.ref not in graph.constants:  # type: ignore[attr-defined]
                out.append(
                    f"{node.describe()}: constant @{node.attrs.ref} has no data: load the graph "  # type: ignore[attr-defined]
                    "with its weights (kiln.load, or parse(..., weights=...))"
                )
        elif node.op not in rules:
            out.append(f"{node.describe()}: op '{node.op}' has no jax lowering rule")
    return out


# --- the table ------------------------------------------------------------------------------------


def _call(fn: str) -> Render:
    return lambda n, a, e: f"{fn}({', '.join(a)})"


def _binary_int(float_fn: str, int_fn: str) -> Render:
    return lambda n, a, e: f"{int_fn if scalar(n.operands[0]).is_int else float_fn}({a[0]}, {a[1]})"


def _kw(**kw: object) -> str:
    return "".join(f", {k}={lit(v)}" for k, v in kw.items())


def _i64(n: Node, a: list[str]) -> list[str]:
    return [f"{x}.astype(jnp.int64)" if scalar(v).is_int else x for x, v in zip(a, n.operands, strict=True)]


def _matmul(n: Node, a: list[str], e: Emitter) -> str:
    if scalar(n.operands[0]).is_int:
        return f"jnp.matmul({', '.join(_i64(n, a))})"
    return f"jnp.matmul({a[0]}, {a[1]}, precision=HIGHEST)"


def _einsum(n: Node, a: list[str], e: Emitter) -> str:
    eq = n.attrs.equation  # type: ignore[attr-defined]
    if scalar(n.operands[0]).is_int:
        return f'jnp.einsum("{eq}", {", ".join(_i64(n, a))})'
    return f'jnp.einsum("{eq}", {", ".join(a)}, precision=HIGHEST)'


def _reduce(fn: str) -> Render:
    def render(n: Node, a: list[str], e: Emitter) -> str:
        at = n.attrs
        x = n.operands[0].tensor_type
        kw = _kw(axis=at.axes, keepdims=at.keepdims)  # type: ignore[attr-defined]
        if fn in ("max", "min"):
            if any(not isinstance(x.shape[i], int) or x.shape[i] == 0 for i in at.axes):  # type: ignore[attr-defined]
                dt = x.scalar_dtype
                ident: float | int = (
                    (-math.inf if fn == "max" else math.inf)
                    if dt.is_float
                    else (dt.min_value if fn == "max" else dt.max_value)
                )
                return f'lib.reduce_extreme({a[0]}, "{fn}", {lit(at.axes)}, {lit(at.keepdims)}, {lit(ident)})'  # type: ignore[attr-defined]
            return f"jnp.{fn}({a[0]}{kw})"
        wide = ", dtype=jnp.int64" if fn in ("sum", "prod") and x.scalar_dtype.is_int else ""
        return f"jnp.{fn}({a[0]}{kw}{wide})"

    return render


def _arg(fn: str) -> Render:
    def render(n: Node, a: list[str], e: Emitter) -> str:
        at = n.attrs
        if at.select_last:  # type: ignore[attr-defined]
            return f'lib.arg_extreme({a[0]}, "{fn}", {at.axis}, {at.keepdims}, True)'  # type: ignore[attr-defined]
        return f"jnp.arg{fn}({a[0]}{_kw(axis=at.axis, keepdims=at.keepdims)})"  # type: ignore[attr-defined]

    return render


def _slice(n: Node, a: list[str], e: Emitter) -> str:
    at = n.attrs
    parts = [":"] * n.operands[0].tensor_type.rank
    for ax, s, stop, st in zip(at.axes, at.starts, at.stops, at.steps, strict=True):  # type: ignore[attr-defined]
        if slice_length(s, stop, st) == 0:
            parts[ax] = "0:0"  # a start of -1 would read as the last element
        else:
            end = "" if stop < 0 else str(stop)
            parts[ax] = f"{s}:{end}" + (f":{st}" if st != 1 else "")
    while parts and parts[-1] == ":":
        parts.pop()
    return f"{a[0]}[{', '.join(parts)}]" if parts else a[0]


def _split(n: Node, a: list[str], e: Emitter) -> str:
    cuts = list(np.cumsum(n.attrs.sizes)[:-1].tolist())  # type: ignore[attr-defined]
    return f"jnp.split({a[0]}, {cuts}, axis={n.attrs.axis})"  # type: ignore[attr-defined]


def _iota(n: Node, a: list[str], e: Emitter) -> str:
    at = n.attrs
    return f'lib.iota({lit(at.start)}, {lit(at.step)}, {at.length}, "{at.dtype}")'  # type: ignore[attr-defined]


def _qmatmul(n: Node, a: list[str], e: Emitter) -> str:
    w = n.operands[1].tensor_type
    zeros = a[3] if len(a) == 4 else "None"
    q = e.qtype(w.dtype)  # type: ignore[arg-type]
    expr = (
        f"lib.qmatmul({a[0]}, {a[1]}, {a[2]}, {zeros}, {q}, k={w.shape[0]}, "
        f'act="{n.attrs.act.value}", precision=HIGHEST)'  # type: ignore[attr-defined]
    )
    out = scalar(n.result)
    return f"{expr}.astype({jnp_dtype(out)})" if out.bits == 64 else expr


def _qgather(n: Node, a: list[str], e: Emitter) -> str:
    w = n.operands[0].tensor_type
    zeros = a[2] if len(a) == 4 else "None"
    q = e.qtype(w.dtype)  # type: ignore[arg-type]
    return f"lib.qgather({a[0]}, {a[1]}, {zeros}, {a[-1]}, {q}, k={w.shape[0]})"


def _attention(n: Node, a: list[str], e: Emitter) -> str:
    at = n.attrs
    if e.literals.get(n.operands[3]) == 0 and n.operands[3].tensor_type.rank == 0:
        a = [*a[:3], "None"]  # fuse-attention's "no bias": adding 0 only flips -0.0 (softmax ignores it)
    return f"lib.attention({', '.join(a)}{_kw(scale=at.scale, causal=at.causal)}, precision=HIGHEST)"  # type: ignore[attr-defined]


def _unary(fn: str) -> Rule:
    return Rule(lambda n, a, e: f"{fn}({a[0]})", arith=True)


def _table() -> dict[str, Rule]:
    at = lambda n: n.attrs  # type: ignore[no-any-return]  # noqa: E731
    rules: dict[str, Rule] = {
        name: _unary(fn)
        for name, fn in {
            "neg": "jnp.negative",
            "abs": "jnp.abs",
            "exp": "jnp.exp",
            "log": "jnp.log",
            "sqrt": "jnp.sqrt",
            "tanh": "jnp.tanh",
            "erf": "lax.erf",
            "sin": "jnp.sin",
            "cos": "jnp.cos",
            "floor": "jnp.floor",
            "ceil": "jnp.ceil",
            "sigmoid": "jax.nn.sigmoid",
        }.items()
    }
    rules.update(
        {
            "rsqrt": Rule(lambda n, a, e: f"1.0 / jnp.sqrt({a[0]})", arith=True),
            "reciprocal": Rule(lambda n, a, e: f"1.0 / {a[0]}", arith=True),
            "relu": Rule(lambda n, a, e: f"jnp.maximum({a[0]}, 0)", arith=True),
            "silu": Rule(lambda n, a, e: f"{a[0]} * jax.nn.sigmoid({a[0]})", arith=True),
            "gelu": Rule(lambda n, a, e: f'lib.gelu({a[0]}, "{at(n).approximate}")', arith=True),
            "isnan": Rule(_call("jnp.isnan")),
            "logical_not": Rule(_call("jnp.logical_not")),
            "cast": Rule(lambda n, a, e: f'lib.cast({a[0]}, "{at(n).dtype}")'),
            "where": Rule(_call("jnp.where")),
            "div": Rule(_binary_int("jnp.divide", "lib.int_div"), arith=True),
            "pow": Rule(_binary_int("jnp.power", "lib.int_pow"), arith=True, widens=True),
        }
    )
    for name, fn in {"add": "add", "sub": "subtract", "mul": "multiply", "maximum": "maximum",
                     "minimum": "minimum"}.items():  # fmt: skip
        rules[name] = Rule(_call(f"jnp.{fn}"), arith=True)
    for name in ("logical_and", "logical_or", "logical_xor"):
        rules[name] = Rule(_call(f"jnp.{name}"))
    for name, fn in {"eq": "equal", "ne": "not_equal", "lt": "less", "le": "less_equal", "gt": "greater",
                     "ge": "greater_equal"}.items():  # fmt: skip
        rules[name] = Rule(_call(f"jnp.{fn}"))
    rules.update(
        {
            "matmul": Rule(_matmul, arith=True, widens=True),
            "reduce_sum": Rule(_reduce("sum"), arith=True, widens=True),
            "reduce_prod": Rule(_reduce("prod"), arith=True, widens=True),
            "reduce_mean": Rule(_reduce("mean"), arith=True),
            "reduce_max": Rule(_reduce("max"), arith=True),
            "reduce_min": Rule(_reduce("min"), arith=True),
            "argmax": Rule(_arg("max")),
            "argmin": Rule(_arg("min")),
            "cumsum": Rule(
                lambda n, a, e: (
                    f"lib.cumsum({a[0]}{_kw(axis=at(n).axis, exclusive=at(n).exclusive, reverse=at(n).reverse)})"
                ),
                arith=True,
                widens=True,
            ),
            "softmax": Rule(lambda n, a, e: f"lib.softmax({a[0]}, axis={at(n).axis})", arith=True),
            "log_softmax": Rule(lambda n, a, e: f"lib.log_softmax({a[0]}, axis={at(n).axis})", arith=True),
            "layer_norm": Rule(
                lambda n, a, e: f"lib.layer_norm({', '.join(a)}{_kw(axis=at(n).axis, eps=at(n).eps)})",
                arith=True,
            ),
            "rms_norm": Rule(
                lambda n, a, e: f"lib.rms_norm({', '.join(a)}{_kw(axis=at(n).axis, eps=at(n).eps)})",
                arith=True,
            ),
            "reshape": Rule(lambda n, a, e: f"jnp.reshape({a[0]}, {e.shape(at(n).shape)})"),
            "broadcast_to": Rule(lambda n, a, e: f"jnp.broadcast_to({a[0]}, {e.shape(at(n).shape)})"),
            "transpose": Rule(lambda n, a, e: f"jnp.transpose({a[0]}, {lit(at(n).perm)})"),
            "slice": Rule(_slice),
            "concat": Rule(lambda n, a, e: f"jnp.concatenate([{', '.join(a)}], axis={at(n).axis})"),
            "split": Rule(_split),
            "gather": Rule(lambda n, a, e: f"lib.take({a[0]}, {a[1]}, axis={at(n).axis})"),
            "squeeze": Rule(lambda n, a, e: f"jnp.squeeze({a[0]}, axis={lit(at(n).axes)})"),
            "unsqueeze": Rule(lambda n, a, e: f"jnp.expand_dims({a[0]}, {lit(at(n).axes)})"),
            "iota": Rule(_iota),
            "topk": Rule(
                lambda n, a, e: f"lib.topk({a[0]}{_kw(k=at(n).k, axis=at(n).axis, largest=at(n).largest)})"
            ),
            "triu": Rule(lambda n, a, e: f"jnp.triu({a[0]}, k={at(n).k})"),
            "tril": Rule(lambda n, a, e: f"jnp.tril({a[0]}, k={at(n).k})"),
            "einsum": Rule(_einsum, arith=True, widens=True),
            "gather_nd": Rule(
                lambda n, a, e: f"lib.gather_nd({a[0]}, {a[1]}, batch_dims={at(n).batch_dims})"
            ),
            "attention": Rule(_attention, arith=True),
            "qmatmul": Rule(_qmatmul, arith=True),
            "qgather": Rule(_qgather),
        }
    )
    return rules


#: op name -> lowering rule (``constant`` and ``fused`` are handled by the emitter itself).
RULES: dict[str, Rule] = _table()
LOWERED_BY_EMITTER = ("constant", "fused")


def lowerable(ops: Sequence[str]) -> list[str]:
    """The ops of ``ops`` that have a rule."""
    return [op for op in ops if op in RULES or op in LOWERED_BY_EMITTER]
