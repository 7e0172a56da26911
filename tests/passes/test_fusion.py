"""Fusion passes: ``fuse`` (vertical kernel groups + horizontal launches), ``fuse-attention``,
``fuse-horizontal`` and their inverse ``unfuse``.

The independent truth is :func:`kiln.ir.interpret.interpret` on the graph *before* the pipeline
(the pass manager works on a copy): fused kernels run their bodies with the same reference
semantics, so fusion itself changes no rounding. Only ``fuse-horizontal`` (a matmul on
concatenated weights) and the numba-cpu pipeline's canonicalisation may move results by a few
ulps, hence ``rtol = atol = 1e-5`` in float32; random values are kept within ``LIMIT`` and
``floor``/``ceil``/comparisons only see values every pass keeps bit-exact.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

import kiln
from kiln.cli import _fusion_report
from kiln.cli import main as cli_main
from kiln.ir.builder import GraphBuilder
from kiln.ir.core import Graph, Node, Value
from kiln.ir.dtypes import f32
from kiln.ir.interpret import interpret
from kiln.ir.registry import default_context
from kiln.ir.targets import get_target
from kiln.ir.types import TensorType
from kiln.passes.fuse import ROW_OPS, ROW_REDUCE, elementwise_ops, kernel_counts
from kiln.passes.manager import PassManager

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


def run_pipeline(graph: Graph, pipeline: str) -> Graph:
    return PassManager.parse(pipeline, verify_each=True).run(graph)


def assert_same_results(before: Graph, after: Graph, inputs: dict[str, np.ndarray]) -> None:
    want = interpret(before, inputs)
    got = interpret(after, inputs)
    assert list(got) == list(want)
    for name, w in want.items():
        g = np.asarray(got[name])
        w = np.asarray(w)
        assert g.dtype == w.dtype and g.shape == w.shape, name
        if w.dtype.kind in "biu":
            np.testing.assert_array_equal(g, w, err_msg=name)
        else:
            np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL, err_msg=name)


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


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"fusion_example_{name}", ROOT / "examples" / f"{name}.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


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


@pytest.mark.parametrize("pipeline", PIPELINES)
@PROPERTY_SETTINGS
@given(case=fusion_graphs())
def test_fusion_preserves_results_and_round_trips(pipeline: str, case: Case) -> None:
    graph = case.graph
    note(graph.as_text())
    after = run_pipeline(graph, pipeline)
    note(after.as_text())
    assert after.input_names == graph.input_names
    assert after.output_names == graph.output_names
    assert [v.type for _, v in after.outputs] == [v.type for _, v in graph.outputs]
    assert_same_results(graph, after, case.inputs)

    # Structure: flat bodies, kinds that match the body, fewer or as many launches.
    for n in fused_nodes(after):
        ops = body_ops(n)
        kind = n.attrs.kind  # type: ignore[attr-defined]
        assert ops, n.describe()
        assert "fused" not in ops
        assert (kind == "matmul") == (ops[0] == "matmul")
        assert all(
            o in ELEMENTWISE or o in ROW_OPS or o in ROW_REDUCE or o == "reshape"
            for o in ops[kind == "matmul" :]
        )
        if kind == "elementwise":
            assert not any(o in ROW_OPS or o in ROW_REDUCE for o in ops)
        if pipeline == "fuse{horizontal=false}":
            body = n.attrs.body  # type: ignore[attr-defined]
            assert _connected(body), f"a vertical group is a connected chain:\n{body.as_text()}"
    ops_before, kernels_before = kernel_counts(graph)
    ops_after, kernels_after = kernel_counts(after)
    if pipeline == "fuse":
        assert ops_after == ops_before, "fuse moves ops into groups, it removes none"
    if "fuse-horizontal" not in pipeline:  # (horizontal matmul merging adds a split view)
        assert kernels_after <= kernels_before
    event(f"{len(fused_nodes(after))} fused nodes")

    # The fused graph prints and parses back equal.
    text = after.as_text()
    assert kiln.parse(text, weights=after.constants) == after, text

    # unfuse restores a graph of primitive ops with the same results.
    flat = run_pipeline(after, "unfuse")
    assert not any(n.op in ("fused", "attention") for n in flat.nodes)
    assert_same_results(graph, flat, case.inputs)


# --------------------------------------------------------------------------------------------
# fuse: the GPT block of examples/gpt_block.py
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt() -> tuple[Graph, dict[str, np.ndarray], ModuleType]:
    ex = load_example("gpt_block")
    p = ex.init_weights(64)
    x = np.random.default_rng(7).standard_normal((16, 64)).astype(np.float32)
    return ex.make_block(p, 4).lower(x).graph, {"x": x}, ex


@pytest.fixture(scope="module")
def gpt_fused(gpt: tuple[Graph, dict[str, np.ndarray], ModuleType]) -> Graph:
    return run_pipeline(gpt[0], NUMBA_PIPELINE)


def _const_ref(graph: Graph, v: Value) -> str | None:
    p = graph.producers().get(v)
    return p.attrs.ref if p is not None and p.op == "constant" else None  # type: ignore[attr-defined]


def test_gpt_block_kernel_count_cut(gpt: Any, gpt_fused: Graph) -> None:
    graph, inputs, ex = gpt
    _, kernels_before = kernel_counts(graph)
    ops_after, kernels_after = kernel_counts(gpt_fused)
    assert kernels_before >= 3 * kernels_after, (kernels_before, kernels_after)
    assert ops_after >= 3 * kernels_after, (ops_after, kernels_after)
    assert_same_results(graph, gpt_fused, inputs)
    np.testing.assert_allclose(interpret(gpt_fused, inputs)["out"], ex.numpy_block(inputs["x"], ex.init_weights(64), 4),
                               rtol=1e-4, atol=1e-5)  # fmt: skip


def test_gpt_block_mlp_is_one_matmul_kernel(gpt_fused: Graph) -> None:
    mlp = [n for n in fused_nodes(gpt_fused) if "gelu" in body_ops(n)]
    assert len(mlp) == 1
    (node,) = mlp
    assert node.attrs.kind == "matmul"  # type: ignore[attr-defined]
    assert body_ops(node) == ["matmul", "add", "gelu"]
    assert _const_ref(gpt_fused, node.operands[1]) == "p_w_fc"
    assert not any(n.op in ("gelu", "matmul") for n in gpt_fused.nodes), "no bare matmul or gelu is left"


def test_gpt_block_attention_output_projection_group(gpt_fused: Graph) -> None:
    """attn @ w_o + residual + b_o and the second layer_norm: one group, two outputs (the new
    residual stream and the normalised activations)."""
    (node,) = [n for n in fused_nodes(gpt_fused) if _const_ref(gpt_fused, n.operands[1]) == "p_w_o"]
    assert node.attrs.kind == "matmul"  # type: ignore[attr-defined]
    assert body_ops(node) == ["matmul", "add", "add", "layer_norm"]
    assert len(node.results) == 2
    refs = {_const_ref(gpt_fused, v) for v in node.operands}
    assert {"p_w_o", "p_b_o", "p_ln2_w", "p_ln2_b"} <= refs
    assert gpt_fused.inputs[0] in node.operands  # the residual


def test_gpt_block_fused_body_is_printed(gpt: Any, gpt_fused: Graph, tmp_path: Path, capsys: Any) -> None:
    text = gpt_fused.as_text()
    assert "fused(" in text and 'kind="matmul", body=graph @k_matmul(' in text
    mlp = next(n for n in fused_nodes(gpt_fused) if "gelu" in body_ops(n))
    body_text = mlp.attrs.body.as_text()  # type: ignore[attr-defined]
    for line in body_text.splitlines()[1:-1]:
        assert line.strip() in text
    report = _fusion_report(gpt_fused)
    assert "matmul > add > gelu" in report and "matmul > add > add > layer_norm" in report
    # `kiln show --fusion` prints the same (the reference target runs the fused graph: no kernels).
    graph = gpt[0]
    path = tmp_path / "block.kir"
    kiln.save(graph, path)
    assert cli_main(["show", str(path), "--fusion", "--target", "reference", "-p", NUMBA_PIPELINE]) == 0
    out = capsys.readouterr().out
    assert "body=graph @k_matmul(" in out and "gelu(" in out and "matmul > add > gelu" in out


#: For each option: the pipeline with it off, and whether the GPT block must get more kernels.
OPTIONS = {"elementwise": False, "epilogue": True, "rows": True, "horizontal": False}


@pytest.mark.parametrize("option", list(OPTIONS))
def test_gpt_block_options_off_give_more_kernels(option: str, gpt: Any, gpt_fused: Graph) -> None:
    graph, inputs, _ = gpt
    off = run_pipeline(graph, NUMBA_PIPELINE.replace(",fuse,", f",fuse{{{option}=false}},"))
    _, k_on = kernel_counts(gpt_fused)
    _, k_off = kernel_counts(off)
    assert k_off >= k_on
    if OPTIONS[option]:  # the block has no bare elementwise chain and no small sibling groups
        assert k_off > k_on
    assert_same_results(graph, off, inputs)


def _mixed_graph() -> Graph:
    """Each fusion option matters here: an elementwise chain, a second independent small chain
    (a horizontal partner), a matmul with an epilogue and a softmax after it (in another
    iteration space, so that a loose epilogue cannot hide in the chains' launch)."""
    b = GraphBuilder("mixed")
    x = b.input("x", TensorType(f32, (4, 8)))
    y = b.input("y", TensorType(f32, (4, 8)))
    a = b.op("mul", b.op("exp", b.op("tanh", x)), b.constant(np.float32(2.0)))
    c = b.op("add", b.op("sigmoid", y), b.constant(np.float32(1.0)))
    w = b.constant(np.random.default_rng(0).uniform(-1, 1, (8, 16)).astype(np.float32), "w")
    m = b.op("add", b.op("matmul", x, w), b.constant(np.full(16, 0.5, np.float32), "bias"))
    s = b.op("softmax", b.op("relu", m), axis=1)
    b.output("a", a)
    b.output("c", c)
    b.output("s", s)
    return b.build()


@pytest.mark.parametrize("option", list(OPTIONS))
def test_fuse_options_off_give_more_kernels(option: str) -> None:
    graph = _mixed_graph()
    on = run_pipeline(graph, "fuse")
    off = run_pipeline(graph, f"fuse{{{option}=false}}")
    assert kernel_counts(off)[1] > kernel_counts(on)[1], off.as_text()
    assert_same_results(graph, off, random_inputs(graph))
    assert kernel_counts(on)[1] == 2  # {tanh, exp, mul} + {sigmoid, add} share a launch; matmul group
    assert_same_results(graph, on, random_inputs(graph))


# --------------------------------------------------------------------------------------------
# fuse: cycles, horizontal groups, dead values
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("through", ["transpose", "gather", "softmax0"])
def test_fuse_avoids_cycle_through_non_fusable_op(through: str) -> None:
    """c = a + f(a) where f is not fusable: c must not join a's group (f sits between)."""
    b = GraphBuilder("cyc")
    x = b.input("x", TensorType(f32, (8, 8)))
    a = b.op("exp", b.op("tanh", x))
    if through == "transpose":
        t = b.op("transpose", a, perm=(1, 0))
    elif through == "gather":
        t = b.op("gather", a, b.constant(np.arange(8)[::-1].copy().astype(np.int64)), axis=0)
    else:
        t = b.op("softmax", a, axis=0)
    c = b.op("mul", b.op("sin", a), t)
    b.output("c", c)
    graph = b.build()
    for pipeline in ("fuse", "fuse{horizontal=false}", NUMBA_PIPELINE):
        after = run_pipeline(graph, pipeline)
        after.verify()
        assert_same_results(graph, after, random_inputs(graph))
        groups = fused_nodes(after)
        assert len(groups) == 2  # {tanh, exp, sin?} and {mul ...}: never one group
        (first,) = [n for n in groups if "tanh" in body_ops(n)]
        assert "mul" not in body_ops(first)


def _cycle_via_group() -> Graph:
    """a is group A; b0 -> {b1 = b0 + a, b2 = sin(b0)} is group B; n = a + b2 joins A although
    B reads A (b1) and A would read B (b2): a cycle between the groups."""
    b = GraphBuilder("cyc2")
    x = b.input("x", TensorType(f32, (4, 8)))
    a = b.op("exp", x)
    b0 = b.op("tanh", x)
    b1 = b.op("add", b0, a)
    b2 = b.op("sin", b0)
    n = b.op("add", a, b2)
    b.output("b1", b1)
    b.output("n", n)
    return b.build()


def _cycle_via_horizontal() -> Graph:
    """H = {exp(x)}; C = {tanh(x), tanh + exp, sin}; G = {cos(transpose(sin))}. H and G are
    independent node-wise, but merging them puts C both before and after the merged group."""
    b = GraphBuilder("cyc3")
    x = b.input("x", TensorType(f32, (8, 8)))
    h1 = b.op("exp", x)
    c0 = b.op("tanh", x)
    c1 = b.op("add", c0, h1)
    c2 = b.op("sin", c0)
    g1 = b.op("cos", b.op("transpose", c2, perm=(1, 0)))
    b.output("c1", c1)
    b.output("g1", g1)
    return b.build()


def test_fuse_cycle_through_another_group() -> None:
    graph = _cycle_via_group()
    for pipeline in ("fuse{horizontal=false}", "fuse", NUMBA_PIPELINE):
        after = run_pipeline(graph, pipeline)
        assert_same_results(graph, after, random_inputs(graph))


def test_fuse_cycle_through_horizontal_merge() -> None:
    graph = _cycle_via_horizontal()
    assert_same_results(graph, run_pipeline(graph, "fuse{horizontal=false}"), random_inputs(graph))
    after = run_pipeline(graph, "fuse")
    assert_same_results(graph, after, random_inputs(graph))


def test_fuse_dead_value_round_trips() -> None:
    b = GraphBuilder("dead")
    x = b.input("x", TensorType(f32, (4, 8)))
    b.op("tanh", b.op("transpose", x, perm=(1, 0)))  # nothing reads it
    b.output("o", b.op("exp", x))
    graph = b.build()
    after = run_pipeline(graph, "fuse")
    assert all(n.results for n in after.nodes), after.as_text()
    assert kiln.parse(after.as_text(), weights=after.constants) == after


def _two_chains(dependent: bool) -> Graph:
    b = GraphBuilder("chains")
    x = b.input("x", TensorType(f32, (8, 8)))
    y = b.input("y", TensorType(f32, (8, 8)))
    a = b.op("mul", b.op("exp", b.op("tanh", x)), b.constant(np.float32(0.5)))
    src = b.op("transpose", a, perm=(1, 0)) if dependent else y
    c = b.op("sub", b.op("sigmoid", src), b.constant(np.float32(1.0)))
    b.output("a", a)
    b.output("c", c)
    return b.build()


@pytest.mark.parametrize("dependent", [False, True])
def test_horizontal_groups(dependent: bool) -> None:
    graph = _two_chains(dependent)
    inputs = random_inputs(graph)
    merged = run_pipeline(graph, "fuse")
    vertical = run_pipeline(graph, "fuse{horizontal=false}")
    assert len(fused_nodes(vertical)) == 2
    assert len(fused_nodes(merged)) == (2 if dependent else 1)
    if not dependent:
        (node,) = fused_nodes(merged)
        assert len(node.results) == 2 and sorted(body_ops(node)) == sorted(
            ["tanh", "exp", "mul", "sigmoid", "sub"]
        )
    for g in (merged, vertical):
        assert_same_results(graph, g, inputs)
        assert kiln.parse(g.as_text(), weights=g.constants) == g


def test_horizontal_skips_large_groups() -> None:
    """Groups at or above Target.parallel_min_elements run alone (they parallelise by rows)."""
    n = get_target("numba-cpu").parallel_min_elements
    b = GraphBuilder("big")
    x = b.input("x", TensorType(f32, (n // 64, 64)))
    y = b.input("y", TensorType(f32, (n // 64, 64)))
    b.output("a", b.op("exp", x))
    b.output("c", b.op("tanh", y))
    graph = b.build()
    assert len(fused_nodes(run_pipeline(graph, "fuse"))) == 2


def test_fuse_access_patterns_join_one_group() -> None:
    """Full, row vector, per-row column, scalar and other broadcast operands all fit one group."""
    b = GraphBuilder("access")
    x = b.input("x", TensorType(f32, (2, 3, 8)))
    row = b.input("row", TensorType(f32, (8,)))
    col = b.input("col", TensorType(f32, (2, 3, 1)))
    sca = b.input("sca", TensorType(f32, ()))
    bc = b.input("bc", TensorType(f32, (2, 1, 8)))
    v = b.op("add", x, row)
    v = b.op("mul", v, col)
    v = b.op("sub", v, sca)
    v = b.op("maximum", v, bc)
    v = b.op("sub", v, b.op("reduce_max", v, axes=(2,), keepdims=True))
    v = b.op("softmax", b.op("reshape", v, shape=(6, 8)), axis=1)
    b.output("o", v)
    graph = b.build()
    after = run_pipeline(graph, "fuse")
    (node,) = fused_nodes(after)
    assert node.attrs.kind == "rows"  # type: ignore[attr-defined]
    assert len(after.nodes) == 1
    assert_same_results(graph, after, random_inputs(graph))


# --------------------------------------------------------------------------------------------
# fuse-attention
# --------------------------------------------------------------------------------------------

B, H, SQ, D = 2, 2, 5, 4


def _attention_graph(
    scale_at: str = "after",
    mask: str = "causal",
    sk: int = SQ,
    sq: int = SQ,
    softmax_axis: int = 3,
    extra: str | None = None,
) -> Graph:
    """q @ k^T, a scale (on q, on k^T, or after as mul / div), a mask, softmax, @ v."""
    b = GraphBuilder("attn")
    q = b.input("q", TensorType(f32, (B, H, sq, D)))
    k = b.input("k", TensorType(f32, (B, H, sk, D)))
    v = b.input("v", TensorType(f32, (B, H, sk, D + 2)))
    c = b.constant(np.float32(0.5), "c")
    if scale_at == "q":
        q = b.op("mul", q, c)
    kt = b.op("transpose", k, perm=(0, 1, 3, 2))
    if scale_at == "k":
        kt = b.op("mul", c, kt)
    mm = s = b.op("matmul", q, kt)
    if scale_at == "after":
        s = b.op("mul", s, c)
    elif scale_at == "after_div":
        s = b.op("div", s, b.constant(np.float32(2.0), "d"))
    if mask == "causal":
        keep = b.constant(np.tri(sq, sk, sk - sq, dtype=bool), "keep")
        s = b.op("where", keep, s, b.constant(np.float32(-1e9), "big"))
    elif mask == "additive":  # a constant, non-causal additive mask
        rng = np.random.default_rng(3)
        m = np.where(rng.uniform(size=(sq, sk)) < 0.3, -1e4, rng.standard_normal((sq, sk))).astype(np.float32)
        m[:, 0] = 0.0  # every query sees at least one key
        s = b.op("add", s, b.constant(m, "mask"))
    elif mask == "input":  # a runtime mask broadcast over heads
        s = b.op("add", s, b.input("m", TensorType(f32, (B, 1, sq, sk))))
    p = b.op("softmax", s, axis=softmax_axis)
    b.output("o", b.op("matmul", p, v))
    if extra == "probs":
        b.output("p", p)
    elif extra == "probs_sum":
        b.output("p", b.op("reduce_sum", p, axes=(3,), keepdims=True))
    elif extra == "scores":
        b.output("s", b.op("tanh", mm))
    return b.build()


def _fuse_attention(graph: Graph) -> Graph:
    return run_pipeline(graph, "canonicalize,constant-fold,cse,fuse-attention,canonicalize,cse")


def _assert_attention(graph: Graph, inputs: dict[str, np.ndarray], count: int = 1, **attrs: Any) -> Graph:
    after = _fuse_attention(graph)
    counts = after.op_counts()
    assert counts.get("attention") == count and "softmax" not in counts, after.as_text()
    for n in after.nodes:
        if n.op == "attention":
            for k, want in attrs.items():
                got = getattr(n.attrs, k)
                assert got == pytest.approx(want) if isinstance(want, float) else got == want, (k, got)
    assert_same_results(graph, after, inputs)
    # unfuse expands attention back into primitives with the same results
    flat = run_pipeline(after, "unfuse")
    assert "attention" not in flat.op_counts() and "softmax" in flat.op_counts()
    assert_same_results(graph, flat, inputs)
    return after


@pytest.mark.parametrize(
    ("kwargs", "scale", "causal"),
    [
        ({}, 0.5, True),
        ({"scale_at": "q"}, 0.5, True),
        ({"scale_at": "k"}, 0.5, True),
        ({"scale_at": "after_div"}, 0.5, True),
        ({"mask": "additive"}, 0.5, False),
        ({"mask": "input"}, 0.5, False),
        ({"mask": "none"}, 0.5, False),
        ({"mask": "causal", "sk": 9}, 0.5, True),  # a KV cache longer than the queries
        ({"mask": "none", "sq": 1, "sk": 7}, 0.5, False),  # one decoding query
        ({"scale_at": "none", "mask": "none"}, 1.0, False),
    ],
    ids=[
        "causal-where",
        "scale-q",
        "scale-k",
        "scale-div",
        "additive-mask",
        "input-mask",
        "no-mask",
        "causal-sk>sq",
        "decode",
        "unscaled",
    ],
)
def test_fuse_attention_forms(kwargs: dict[str, Any], scale: float, causal: bool) -> None:
    graph = _attention_graph(**kwargs)
    _assert_attention(graph, random_inputs(graph, 1), scale=scale, causal=causal)


@pytest.mark.parametrize(
    "kwargs",
    [{"softmax_axis": 2}, {"extra": "probs"}, {"extra": "probs_sum"}, {"extra": "scores"}],
    ids=[
        "softmax-not-last-axis",
        "probs-are-an-output",
        "probs-have-another-user",
        "scores-have-another-user",
    ],
)
def test_fuse_attention_not_recognised(kwargs: dict[str, Any]) -> None:
    graph = _attention_graph(**kwargs)
    after = run_pipeline(graph, "fuse-attention")
    assert after == graph, after.as_text()
    assert "attention" not in after.op_counts()


def test_fuse_attention_gpt_block(gpt: Any) -> None:
    graph, inputs, _ = gpt
    after = _assert_attention(graph, inputs, scale=0.25, causal=True)
    (node,) = [n for n in after.nodes if n.op == "attention"]
    assert node.results[0].tensor_type.static_shape == (4, 16, 16)


def test_fuse_attention_decode_step() -> None:
    tr = load_example("transformer")
    cfg = tr.Config(d_model=32, n_heads=4, d_ff=64, n_layers=1)
    step = tr.make_decode_step(cfg, tr.init_layer(cfg))
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 32)).astype(np.float32)
    past_k, past_v = (rng.standard_normal((4, 6, 8)).astype(np.float32) for _ in range(2))
    graph = step.lower(x, past_k, past_v).graph
    after = _assert_attention(
        graph, {"x": x, "past_k": past_k, "past_v": past_v}, scale=cfg.scale, causal=False
    )
    (node,) = [n for n in after.nodes if n.op == "attention"]
    assert node.operands[0].tensor_type.static_shape == (4, 1, 8)
    assert node.operands[1].tensor_type.static_shape == (4, 7, 8)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_fuse_attention_onnx_fixtures(name: str) -> None:
    """Exported attention (torch's isnan guard, additive masks, llama's grouped-query K/V
    repeated with broadcast_to) becomes one attention op per layer."""
    graph = kiln.from_onnx(FIXTURES / f"{name}.onnx")
    io = np.load(FIXTURES / f"{name}_io.npz")
    inputs = {k: io[k] for k in io.files if not k.startswith("out_")}
    layers = graph.op_counts()["softmax"]
    after = _assert_attention(graph, inputs, count=layers)
    if name == "llama":  # grouped-query attention: K and V reach attention through broadcast_to
        producers = after.producers()

        def reaches_broadcast(v: Value, depth: int = 6) -> bool:
            p = producers.get(v)
            return (
                p is not None
                and depth > 0
                and (p.op == "broadcast_to" or any(reaches_broadcast(u, depth - 1) for u in p.operands))
            )

        assert all(reaches_broadcast(n.operands[1]) for n in after.nodes if n.op == "attention")
    truth = {k[4:]: io[k] for k in io.files if k.startswith("out_")}
    got = interpret(after, inputs)
    for k, want in truth.items():
        np.testing.assert_allclose(got[k], want, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------
# fuse-horizontal
# --------------------------------------------------------------------------------------------


def _siblings(weights: list[str], lhs_shape: tuple[int, ...] = (4, 8)) -> Graph:
    """x @ W_i for each entry: "cK,N" a constant [K, N], "iK,N" an input, "bK,N" a constant
    batched [2, K, N]; "y..." reads a second activation y instead of x."""
    rng = np.random.default_rng(2)
    b = GraphBuilder("sib")
    x = b.input("x", TensorType(f32, lhs_shape))
    y = b.input("y", TensorType(f32, lhs_shape))
    for i, spec in enumerate(weights):
        lhs = y if spec.startswith("y") else x
        spec = spec.removeprefix("y")
        kind, (k, n) = spec[0], map(int, spec[1:].split(","))
        if kind == "c":
            w = b.constant(rng.uniform(-1, 1, (k, n)).astype(np.float32), f"w{i}")
        elif kind == "b":
            w = b.constant(rng.uniform(-1, 1, (lhs_shape[0], k, n)).astype(np.float32), f"w{i}")
        else:
            w = b.input(f"w{i}", TensorType(f32, (k, n)))
        b.output(f"o{i}", b.op("tanh", b.op("matmul", lhs, w)))
    return b.build()


@pytest.mark.parametrize(
    ("weights", "lhs_shape", "merged"),
    [
        (["c8,4", "c8,6", "c8,8"], (4, 8), 3),
        (["c8,4", "c8,4"], (2, 3, 8), 2),
        (["c8,4", "i8,4", "c8,6"], (4, 8), 2),
    ],
    ids=["three-constant", "batched-activations", "one-weight-is-an-input"],
)
def test_fuse_horizontal_merges_constant_siblings(
    weights: list[str], lhs_shape: tuple[int, ...], merged: int
) -> None:
    graph = _siblings(weights, lhs_shape)
    after = run_pipeline(graph, "fuse-horizontal")
    counts = after.op_counts()
    assert counts["matmul"] == len(weights) - merged + 1
    (split,) = [n for n in after.nodes if n.op == "split"]
    assert len(split.results) == merged
    assert split.attrs.axis == len(lhs_shape) - 1  # type: ignore[attr-defined]
    assert_same_results(graph, after, random_inputs(graph))
    # and then fused: each part's epilogue reads a split view of one GEMM
    fused = run_pipeline(graph, "fuse-horizontal,fuse")
    assert_same_results(graph, fused, random_inputs(graph))


@pytest.mark.parametrize(
    ("weights", "lhs_shape"),
    [
        (["c8,4", "yc8,4"], (4, 8)),
        (["i8,4", "i8,6"], (4, 8)),
        (["b8,4", "b8,4"], (3, 4, 8)),
        (["c8,4"], (4, 8)),
    ],
    ids=["different-activations", "input-weights", "batched-3d-weights", "single"],
)
def test_fuse_horizontal_leaves_others(weights: list[str], lhs_shape: tuple[int, ...]) -> None:
    graph = _siblings(weights, lhs_shape)
    after = run_pipeline(graph, "fuse-horizontal")
    assert after == graph, after.as_text()


def test_fuse_horizontal_groups_by_k() -> None:
    """Siblings are grouped by K: with one activation K is one value, so the grouping key is
    checked on two activations of different widths (x: K=8, z: K=4), each with two siblings."""
    rng = np.random.default_rng(4)
    b = GraphBuilder("bykey")
    x = b.input("x", TensorType(f32, (4, 8)))
    z = b.input("z", TensorType(f32, (4, 4)))
    for i, (lhs, k) in enumerate([(x, 8), (z, 4), (x, 8), (z, 4)]):
        w = b.constant(rng.uniform(-1, 1, (k, 3)).astype(np.float32), f"w{i}")
        b.output(f"o{i}", b.op("matmul", lhs, w))
    graph = b.build()
    after = run_pipeline(graph, "fuse-horizontal")
    mms = [n for n in after.nodes if n.op == "matmul"]
    assert len(mms) == 2 and sorted(n.operands[1].tensor_type.static_shape for n in mms) == [(4, 6), (8, 6)]
    assert_same_results(graph, after, random_inputs(graph))
