"""The random-graph strategy aimed at fusion, and helpers the fusion tests share."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import kiln
from kiln.ir.builder import GraphBuilder
from kiln.ir.core import Graph, Node, Value
from kiln.ir.dtypes import f32
from kiln.ir.registry import default_context
from kiln.ir.targets import get_target
from kiln.ir.types import TensorType
from kiln.passes.fuse import elementwise_ops
from kiln_testing.random_graphs import assert_same_results, run_pipeline  # noqa: F401 - re-exported

ELEMENTWISE = elementwise_ops(default_context())
ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "models"
NUMBA_PIPELINE = get_target("numba-cpu").pipeline

RTOL = 1e-4  # concatenated weights (fuse-horizontal) change BLAS summation order
ATOL = 1e-4
LIMIT = 50.0  # bound on |x| of every generated value
MIN_POS = 0.3  # lower bound of every generated denominator, log / sqrt / rsqrt / pow base

#: The pipelines the random graphs go through.
PIPELINES = ["fuse", "fuse{horizontal=false}", "fuse-horizontal,fuse", NUMBA_PIPELINE]

#: Ops the passes keep bit-identical (given bit-identical operands): comparisons, floor and ceil
#: only ever see values built from these, so a ulp moved by a rewrite cannot flip a branch.
EXACT_OPS = {"add", "sub", "mul", "div", "neg", "abs", "maximum", "minimum", "relu", "sqrt", "reshape",
             "where", "floor", "ceil"}  # fmt: skip


def fused_nodes(graph: Graph, kind: str | None = None) -> list[Node]:
    return [n for n in graph.nodes if n.op == "fused" and (kind is None or n.attrs.kind == kind)]  # type: ignore[attr-defined]


def body_ops(node: Node) -> list[str]:
    return [m.op for m in node.attrs.body.nodes if m.op != "constant"]  # type: ignore[attr-defined]


def random_inputs(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        str(v.name): rng.uniform(-2, 2, v.tensor_type.static_shape).astype(
            v.tensor_type.scalar_dtype.np_dtype
        )
        for v in graph.inputs
    }


# --------------------------------------------------------------------------------------------
# A random graph generator aimed at fusion
# --------------------------------------------------------------------------------------------

FIRST_SHAPES = ((4, 8), (2, 3, 8), (3, 4), (2, 2, 4), (1, 8), (4, 1), (2, 3, 4))


@dataclass
class Val:
    """A generated f32 value and what the generator knows about it."""

    v: Value
    bound: float  # max |x|
    low: float | None  # a positive lower bound, when known
    exact: bool  # bit-identical under every pass

    @property
    def shape(self) -> tuple[int, ...]:
        return self.v.tensor_type.static_shape


@dataclass
class FusionGen:
    draw: Any
    rng: np.random.Generator
    b: GraphBuilder = field(default_factory=lambda: GraphBuilder("rand"))
    pool: list[Val] = field(default_factory=list)
    inputs: dict[str, np.ndarray] = field(default_factory=dict)

    # -- values -----------------------------------------------------------------------------
    def op(self, name: str, *args: Val, bound: float, low: float | None = None, **kw: Any) -> Val:
        v = self.b.op(name, *(a.v for a in args), **kw)
        val = Val(v, float(bound), low, name in EXACT_OPS and all(a.exact for a in args))
        self.pool.append(val)
        return val

    def input(self, shape: tuple[int, ...]) -> Val:
        name = f"x{len(self.inputs)}"
        self.inputs[name] = self.rng.uniform(-2, 2, shape).astype(np.float32)
        val = Val(self.b.input(name, TensorType(f32, shape)), 2.0, None, True)
        self.pool.append(val)
        return val

    def const(self, arr: Any) -> Val:
        arr = np.asarray(arr, np.float32)
        bound = float(np.max(np.abs(arr))) if arr.size else 0.0
        low = float(arr.min()) if arr.size and arr.min() >= MIN_POS else None
        return Val(self.b.constant(arr), bound, low, True)  # constants stay out of the pool

    def operand(self, shape: tuple[int, ...], lo: float = -2.0, hi: float = 2.0) -> Val:
        """A value of ``shape``: from the pool, a new input, a random constant or a splat."""
        kind = self.draw(st.sampled_from(["pool", "pool", "input", "const", "splat"]))
        if kind == "pool":
            cands = [p for p in self.pool if p.shape == shape and p.bound <= max(abs(lo), abs(hi))]
            if lo >= MIN_POS:
                cands = [p for p in cands if p.low is not None and p.low >= lo]
            if cands:
                return self.draw(st.sampled_from(cands))
        if kind == "input" and lo < 0:
            return self.input(shape)
        if kind == "splat":
            return self.const(
                np.full(shape, self.draw(st.sampled_from([lo, hi, 0.5 * (lo + hi)])), np.float32)
            )
        return self.const(self.rng.uniform(lo, hi, shape))

    def pick(self, pred: Callable[[Val], bool] | None = None) -> Val:
        """Mostly the latest value (so that chains form), else any value of the pool."""
        cands = [p for p in self.pool if p.shape and (pred is None or pred(p))]
        if self.draw(st.integers(0, 2)) > 0:
            return cands[-1]
        return self.draw(st.sampled_from(cands))

    def partner_shape(self, s: tuple[int, ...]) -> tuple[int, ...]:
        """A shape broadcasting to ``s`` in one of the access patterns of a row kernel."""
        c = s[-1]
        opts = [s, s, (c,), (*(1,) * (len(s) - 1), c), (*s[:-1], 1), (), (1,)]
        if len(s) == 3:
            opts += [(s[0], 1, c), (1, s[1], 1), s[1:]]  # other broadcasts (expanded by the kernel)
        return self.draw(st.sampled_from(opts))

    def tame(self, x: Val, limit: float = 1.0) -> Val:
        return x if x.bound <= limit else self.op("tanh", x, bound=1.0)

    def positive(self, x: Val) -> Val:
        if x.low is not None and x.low >= MIN_POS and x.bound <= 8:
            return x
        a = self.op("abs", self.tame(x, 4.0), bound=min(x.bound, 4.0))
        return self.op("add", a, self.const(np.float32(1.0)), bound=a.bound + 1, low=1.0)

    # -- steps ------------------------------------------------------------------------------
    STEPS = ("unary", "unary", "unary", "binary", "binary", "binary", "binary", "div", "pow", "where",
             "row", "row", "reduce", "reduce", "reshape", "matmul", "matmul", "siblings", "nonfusable",
             "feedback", "cast")  # fmt: skip

    def step(self) -> None:
        getattr(self, f"step_{self.draw(st.sampled_from(self.STEPS))}")()

    def step_unary(self) -> None:
        x = self.pick()
        u = self.draw(
            st.sampled_from(["neg", "abs", "tanh", "sigmoid", "relu", "silu", "gelu", "gelu_tanh", "erf",
                             "sin", "cos", "floor", "ceil", "exp", "log", "sqrt", "rsqrt", "reciprocal"])
        )  # fmt: skip
        if u in ("neg", "abs", "relu"):
            self.op(u, x, bound=x.bound, low=x.low if u != "neg" else None)
        elif u in ("floor", "ceil"):
            if x.exact:
                self.op(u, x, bound=x.bound + 1)
        elif u in ("tanh", "sigmoid", "erf", "sin", "cos"):
            self.op(u, x, bound=1.0)
        elif u in ("silu", "gelu", "gelu_tanh"):
            kw = {"approximate": "tanh"} if u == "gelu_tanh" else {}
            self.op(u.removesuffix("_tanh"), x, bound=x.bound, **kw)
        elif u == "exp":
            t = self.tame(x, 3.0)
            self.op("exp", t, bound=math.exp(t.bound), low=math.exp(-t.bound))
        else:
            p = self.positive(x)
            assert p.low is not None
            if u == "log":
                self.op("log", p, bound=max(abs(math.log(p.low)), math.log(p.bound)))
            elif u == "sqrt":
                self.op("sqrt", p, bound=math.sqrt(p.bound), low=math.sqrt(p.low))
            elif u == "rsqrt":
                self.op("rsqrt", p, bound=1 / math.sqrt(p.low), low=1 / math.sqrt(p.bound))
            else:
                self.op("reciprocal", p, bound=1 / p.low, low=1 / p.bound)

    def step_binary(self) -> None:
        name = self.draw(st.sampled_from(["add", "sub", "mul", "maximum", "minimum"]))
        x = self.pick()
        y = self.operand(self.partner_shape(x.shape))
        if self.draw(st.booleans()):
            x, y = y, x
        if name in ("mul", "add", "sub") and max(x.bound, y.bound) * 2 > LIMIT / 2:
            x, y = self.tame(x), self.tame(y)
        bound = {"add": x.bound + y.bound, "sub": x.bound + y.bound, "mul": x.bound * y.bound}
        self.op(name, x, y, bound=bound.get(name, max(x.bound, y.bound)))

    def step_div(self) -> None:
        x = self.pick()
        d = self.operand(self.partner_shape(x.shape), MIN_POS, 2.0)
        if d.low is None or d.low < MIN_POS:
            d = self.positive(d)
        assert d.low is not None
        if x.bound / d.low > LIMIT:
            x = self.tame(x)
        self.op("div", x, d, bound=x.bound / d.low)

    def step_pow(self) -> None:
        p = self.positive(self.tame(self.pick(), 4.0))
        assert p.low is not None
        e = float(self.draw(st.sampled_from([2.0, 0.5, -0.5, 3.0])))
        shape = self.draw(st.sampled_from([(), p.shape[-1:]]))
        bound = p.bound**e if e > 0 else p.low**e
        self.op("pow", p, self.const(np.full(shape, e, np.float32)), bound=bound)

    def step_where(self) -> None:
        a = self.pick(lambda p: p.exact)
        ref = self.const(
            np.full(self.partner_shape(a.shape), self.draw(st.sampled_from([0.0, 0.5])), np.float32)
        )
        cond = self.b.op(self.draw(st.sampled_from(["gt", "lt", "ge", "le", "ne"])), a.v, ref.v)
        x = self.pick(lambda p: p.shape == a.shape)
        y = self.operand(self.partner_shape(a.shape))
        self.op("where", Val(cond, 1.0, None, True), x, y, bound=max(x.bound, y.bound))

    def step_row(self) -> None:
        x = self.pick(lambda p: len(p.shape) >= 1)
        c, axis = x.shape[-1], len(x.shape) - 1
        kind = self.draw(st.sampled_from(["softmax", "log_softmax", "layer_norm", "rms_norm"]))
        if kind == "softmax":
            self.op("softmax", x, bound=1.0, axis=axis)
        elif kind == "log_softmax":
            self.op("log_softmax", x, bound=2 * x.bound + math.log(c) + 1, axis=axis)
        else:
            w = self.operand((c,))
            if kind == "rms_norm":
                self.op("rms_norm", self.tame(x, 4.0), w, bound=math.sqrt(c) * w.bound, axis=axis)
            else:
                bias = self.operand((c,))
                self.op("layer_norm", x, w, bias, bound=math.sqrt(c) * w.bound + bias.bound, axis=axis)

    def step_reduce(self) -> None:
        x = self.pick(lambda p: len(p.shape) >= 1)
        c, axis = x.shape[-1], len(x.shape) - 1
        name = self.draw(st.sampled_from(["reduce_sum", "reduce_mean", "reduce_max", "reduce_min"]))
        keep = self.draw(st.integers(0, 4)) > 0  # keepdims=False is no row op of the group
        if name == "reduce_sum" and x.bound * c > LIMIT:
            x = self.tame(x)
        bound = x.bound * (c if name == "reduce_sum" else 1)
        r = self.op(name, x, bound=bound, axes=(axis,), keepdims=keep)
        if keep and self.draw(st.booleans()):  # x - max(x), x * mean(x): a per-row operand
            if name in ("reduce_sum", "reduce_mean") and x.bound * r.bound > LIMIT:
                return
            how = "sub" if name in ("reduce_max", "reduce_min") else "mul"
            self.op(how, x, r, bound=x.bound + r.bound if how == "sub" else x.bound * r.bound)

    def step_reshape(self) -> None:
        x = self.pick(lambda p: len(p.shape) >= 1)
        *lead, c = x.shape
        n = math.prod(lead)
        divisors = [d for d in range(1, n + 1) if n % d == 0]
        opts = [(n, c), (1, n, c), *((d, n // d, c) for d in divisors)]
        if self.draw(st.integers(0, 4)) == 0:
            opts = [(math.prod(x.shape),)]  # a reshape that does not keep the rows
        self.op("reshape", x, bound=x.bound, low=x.low, shape=self.draw(st.sampled_from(opts)))

    def step_matmul(self) -> None:
        x = self.tame(self.pick(lambda p: len(p.shape) >= 2))
        k = x.shape[-1]
        n = self.draw(st.sampled_from([4, 8, k]))
        how = self.draw(st.sampled_from(["const", "const", "input", "batched"]))
        if how == "batched":
            w = self.tame(self.input((*x.shape[:-2], k, n)))
        elif how == "input":
            w = self.tame(self.input((k, n)))
        else:
            w = self.const(self.rng.uniform(-1, 1, (k, n)))
        self.op("matmul", x, w, bound=k * x.bound * w.bound)

    def step_siblings(self) -> None:
        """x @ W1, x @ W2 (constant, same K): work for fuse-horizontal, each with an epilogue."""
        x = self.tame(self.pick(lambda p: len(p.shape) >= 2))
        k = x.shape[-1]
        for n in self.draw(st.lists(st.sampled_from([4, 8]), min_size=2, max_size=3)):
            m = self.op("matmul", x, self.const(self.rng.uniform(-1, 1, (k, n))), bound=k * x.bound)
            if self.draw(st.booleans()):
                self.op("tanh", m, bound=1.0)

    def _nonfusable(self, x: Val) -> Val:
        """An op of x that fusion never takes into a group, keeping x's shape."""
        kind = self.draw(st.sampled_from(["gather", "softmax0", "transpose", "reduce0"]))
        if kind == "gather" or len(x.shape) < 2:
            idx = self.b.constant(self.rng.permutation(x.shape[0]).astype(np.int64))
            return self.op("gather", x, Val(idx, 0.0, None, True), bound=x.bound, low=x.low, axis=0)
        if kind == "softmax0":
            return self.op("softmax", x, bound=1.0, axis=0)
        if kind == "reduce0":
            return self.op("reduce_max", x, bound=x.bound, low=x.low, axes=(0,), keepdims=True)
        perm = (*range(len(x.shape) - 2), len(x.shape) - 1, len(x.shape) - 2)
        return self.op("transpose", x, bound=x.bound, low=x.low, perm=perm)

    def step_nonfusable(self) -> None:
        x = self.pick(lambda p: len(p.shape) >= 1)
        if self.draw(st.booleans()):
            self._nonfusable(x)
        else:
            self.op("concat", x, x, bound=x.bound, axis=0)

    def step_feedback(self) -> None:
        """y -> ... -> z in one chain, and an op of z that also reads y through a non-fusable op:
        joining the consumer to y's group would make a cycle."""
        y = self.pick(lambda p: len(p.shape) >= 1)
        z = self.op("tanh", y, bound=1.0)
        t = self._nonfusable(self.tame(y))
        if t.shape == z.shape:
            self.op("add", z, t, bound=z.bound + t.bound)

    def step_cast(self) -> None:
        x = self.pick()
        self.op("cast", x, bound=x.bound, low=x.low, dtype=f32)


@dataclass
class Case:
    graph: Graph
    inputs: dict[str, np.ndarray]


@st.composite
def fusion_graphs(draw: Any) -> Case:
    g = FusionGen(draw, np.random.default_rng(draw(st.integers(0, 2**32 - 1))))
    first = draw(st.sampled_from(FIRST_SHAPES))
    g.input(first)
    for _ in range(draw(st.integers(0, 2))):
        g.input(draw(st.sampled_from([first, first[-1:], (*first[:-1], 1)])))
    for _ in range(draw(st.integers(3, 14))):
        try:
            g.step()
        except kiln.KilnError:  # an op whose operands did not line up (rare): skip the step
            continue
    # Outputs: every value nothing uses (no dead code: see test_fuse_dead_value_*) and a few
    # values that are also used inside chains (a group with several outputs).
    graph = g.b.graph
    used = {v for n in graph.nodes for v in n.operands}
    outs = [p for p in g.pool if p.v not in used]
    inner = [p for p in g.pool if p.v in used and p.v not in {v for v in graph.inputs}]
    for _ in range(draw(st.integers(0, 2))):
        if inner:
            outs.append(draw(st.sampled_from(inner)))
    seen: set[Value] = set()
    for i, o in enumerate(outs):
        if o.v not in seen:
            seen.add(o.v)
            g.b.output(f"out{i}", o.v)
    # Constants nothing reads (a tamed operand that was dropped) are dead code too.
    graph.nodes = [n for n in graph.nodes if n.op != "constant" or any(r in used for r in n.results)]
    graph.prune_constants()
    return Case(g.b.build(), g.inputs)


PROPERTY_SETTINGS = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def _connected(body: Graph) -> bool:
    """Whether the body's non-constant nodes form one weakly connected component."""
    nodes = [n for n in body.nodes if n.op != "constant"]
    prod = {r: n for n in nodes for r in n.results}
    parent = {id(n): id(n) for n in nodes}

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for n in nodes:
        for v in n.operands:
            if v in prod:
                parent[find(id(n))] = find(id(prod[v]))
    return len({find(id(n)) for n in nodes}) <= 1
