"""The jax target against the reference backend: every op, the quantized formats, @kiln.jit, errors.

Each per-op case (the reference tests' table) is built as a one-op graph and compiled twice with
no pipeline, for "reference" and for "jax": integers and bools must match exactly, floats within
the golden tolerances (tests/golden/test_golden.py), result dtypes and shapes exactly.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
from kiln_testing.op_cases_elementwise import elementwise_cases
from kiln_testing.op_cases_structural import structural_cases
from kiln_testing.op_truths import Case

import kiln
from kiln import ops
from kiln.backends.jax import RULES, JaxBackend
from kiln.ir import dtypes as kd
from kiln.ir.builder import GraphBuilder
from kiln.ir.core import Graph, NoAttrs, Node, Value
from kiln.ir.dtypes import Layout, QuantType, Scheme
from kiln.ir.errors import BackendError, KilnError
from kiln.ir.quant import quantize
from kiln.ir.registry import default_context
from kiln.ir.types import HostType, TensorType

#: (rtol, atol) per float dtype, as the golden harness states them.
TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-9, 1e-12),
    "float32": (1e-4, 1e-5),
    "float16": (1e-2, 1e-3),
    "bfloat16": (3e-2, 1e-2),
}
CASES = elementwise_cases() + structural_cases()


def assert_same(got: dict[str, Any], want: dict[str, Any], what: str = "") -> None:
    assert set(got) == set(want)
    for name, w in want.items():
        g = got[name]
        assert isinstance(g, np.ndarray), f"{what} {name}: {type(g).__name__}"
        assert g.dtype == w.dtype and g.shape == w.shape, (what, name, g.dtype, g.shape, w.dtype, w.shape)
        if w.dtype.kind in "biu":
            np.testing.assert_array_equal(g, w, err_msg=f"{what} {name}")
        else:
            rtol, atol = TOLERANCES[str(w.dtype)]
            np.testing.assert_allclose(
                g.astype(np.float64), w.astype(np.float64), rtol=rtol, atol=atol, equal_nan=True, err_msg=what
            )


def check(graph: Graph, feeds: dict[str, np.ndarray], what: str = "") -> None:
    want = kiln.compile(graph, "reference", pipeline="").run(feeds)
    got = kiln.compile(graph, "jax", pipeline="").run(feeds)
    assert_same(got, want, what)


def one_op(case: Case) -> tuple[Graph, dict[str, np.ndarray]]:
    b = GraphBuilder("t")
    feeds: dict[str, np.ndarray] = {}
    values = []
    for i, a in enumerate(case.args):
        dt, arr = a if isinstance(a, tuple) else (kd.from_numpy(a.dtype), a)
        values.append(b.input(f"x{i}", TensorType(dt, tuple(arr.shape))))
        feeds[f"x{i}"] = arr
    for i, r in enumerate(b.op_values(case.op, *values, **case.attrs)):
        b.output(f"y{i}", r)
    return b.build(), feeds


def test_every_registered_op_has_a_rule() -> None:
    missing = set(default_context().ops) - set(RULES) - {"constant", "fused"}
    assert missing == set()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_op_matches_reference(case: Case) -> None:
    graph, feeds = one_op(case)
    check(graph, feeds, case.id)


# -- more cases than the reference table has -------------------------------------------------------
RNG = np.random.default_rng(5)


def build(fn: Any, *types: TensorType) -> Graph:
    b = GraphBuilder("g")
    xs = [b.input(f"x{i}", t) for i, t in enumerate(types)]
    out = fn(b, *xs)
    for i, v in enumerate(out if isinstance(out, tuple) else (out,)):
        b.output(f"y{i}", v)
    return b.build()


def f32(*shape: int | str) -> TensorType:
    return TensorType(kd.f32, shape)


@pytest.mark.parametrize("dt", [kd.f32, kd.f16], ids=str)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("sq", [1, 5, 8])
def test_attention_decode_and_prefill(sq: int, causal: bool, dt: kd.DType) -> None:
    """Decode (Sq=1) and prefill, causal aligned to the end, bias broadcast over heads."""
    sk = 8
    shapes = [(2, 3, sq, 16), (2, 3, sk, 16), (2, 3, sk, 4), (1, 1, sq, sk)]
    g = build(
        lambda b, q, k, v, bias: b.op("attention", q, k, v, bias, scale=0.3, causal=causal),
        *[TensorType(dt, s) for s in shapes],
    )
    check(g, {f"x{i}": RNG.standard_normal(s).astype(dt.np_dtype) for i, s in enumerate(shapes)})


def test_precision_option() -> None:
    assert JaxBackend(precision="highest").precision is not None
    with pytest.raises(BackendError, match="precision must be one of"):
        JaxBackend(precision="tf32")


def test_float_specials_and_integer_edges() -> None:
    nan, inf = math.nan, math.inf
    x = np.array([[nan, 1.0, -inf, 0.0], [2.0, nan, -0.0, inf]], np.float32)
    g = build(
        lambda b, x: (
            b.op("reduce_max", x, axes=(1,)),
            b.op("argmax", x, axis=1),
            b.op("argmin", x, axis=1, select_last=True),
            b.op_values("topk", x, k=3, axis=1)[1],
            b.op("softmax", x, axis=0),
        ),
        f32(2, 4),
    )
    check(g, {"x0": x})
    i = np.array([-(2**31), -1, 0, 7, 2**31 - 1], np.int32)
    g = build(
        lambda b, a, c: (b.op("div", a, c), b.op("mul", a, c), b.op("pow", a, c)),
        *[TensorType(kd.i32, (5,))] * 2,
    )
    check(g, {"x0": i, "x1": np.array([-1, 0, 3, -1, 2], np.int32)})
    u = np.array([2**64 - 1, 2**63, 5, 0], np.uint64)
    g = build(lambda b, a: b.op("reduce_sum", b.op("cumsum", a, axis=0), axes=(0,)), TensorType(kd.u64, (4,)))
    check(g, {"x0": u})


def test_symbolic_dims_retrace_per_shape() -> None:
    g = build(lambda b, x: b.op("reshape", b.op("softmax", x, axis=1), shape=(2, "n", 3)), f32("n", 6))
    exe = kiln.compile(g, "jax", pipeline="")
    for n in (1, 4):
        x = RNG.standard_normal((n, 6)).astype(np.float32)
        assert_same(exe.run({"x0": x}), kiln.compile(g, "reference", pipeline="").run({"x0": x}))
    assert "n = x0.shape[0]" in JaxBackend().program(g).source


# -- quantized ops ---------------------------------------------------------------------------------
def _qtypes() -> list[QuantType]:
    """Every width in both layouts (the unpacking paths), schemes in turn; every scheme at 3 and 4 bits."""
    schemes = list(Scheme)
    out = []
    for bits, (li, layout) in itertools.product(range(1, 9), enumerate(Layout)):
        for scheme in schemes if bits in (3, 4) else [schemes[(bits + li) % 3]]:
            if scheme == Scheme.SYM and bits == 1:
                scheme = Scheme.BIPOLAR
            out.append(QuantType(bits, scheme, 32 if bits % 2 else 64, kd.f16, layout))
    return list(dict.fromkeys(out))


@pytest.mark.parametrize("q", _qtypes(), ids=lambda q: q.name)
def test_qmatmul_and_qgather(q: QuantType) -> None:
    k, n = 128, 24
    qw = quantize((RNG.standard_normal((k, n)) * 0.1).astype(np.float32), q, clip_search=0)
    emb = quantize(RNG.standard_normal((k, 10)).astype(np.float32), q, clip_search=0)  # 10 rows of D=k
    b = GraphBuilder("q")
    x = b.input("x", f32(3, k))
    xh = b.input("xh", TensorType(kd.f16, (k,)))
    ids = b.input("ids", TensorType(kd.i32, (2, 3)))
    w = b.quantized(qw, "w")
    b.output("f32", b.op("qmatmul", x, *w, act="f32"))
    b.output("half-int8", b.op("qmatmul", xh, *w, act="int8"))
    xb = b.input("xb", f32(4, k))
    b.output("binary", b.op("qmatmul", xb, *w, act="binary"))
    b.output("rows", b.op("qgather", *b.quantized(emb, "emb"), ids))
    # binary activations: row 2 is half +0.0 / -0.0, which must binarize to +alpha (a sign of 0
    # or -1 would move the result far past the tolerance); row 3 holds a NaN, which poisons it
    x_bin = RNG.standard_normal((4, k)).astype(np.float32)
    x_bin[2, ::4], x_bin[2, 1::4] = 0.0, -0.0
    x_bin[3, 5] = np.nan
    feeds = {
        "x": RNG.standard_normal((3, k)).astype(np.float32),
        "xb": x_bin,
        # int8 activations: multiples of amax / 127 (exact in f16), so no value lies near a rounding
        # tie, where XLA's x / scale and NumPy's may round one step apart
        "xh": (np.r_[127, RNG.integers(-127, 128, k - 1)] / 64).astype(np.float16),
        "ids": np.array([[0, 9, -1], [-10, 3, 3]], np.int32),
    }
    check(b.build(), feeds, q.name)


def test_quantize_pass_graph() -> None:
    @kiln.jit
    def mlp(x: Any) -> Any:
        h = ops.relu(x @ W1)
        return h @ W2

    W1 = (RNG.standard_normal((64, 128)) * 0.1).astype(np.float32)  # noqa: N806
    W2 = (RNG.standard_normal((128, 64)) * 0.1).astype(np.float32)  # noqa: N806
    x = RNG.standard_normal((5, 64)).astype(np.float32)
    g = kiln.PassManager.parse("quantize{bits=3,group=32,scheme=asym,act=int8}").run(mlp.lower(x).graph)
    assert g.op_counts().get("qmatmul") == 2
    source = JaxBackend().program(g).source
    assert "lib.qmatmul(" in source and 'act="int8"' in source
    check(g, {"x": x})


# -- the kernel, weights, jit, errors --------------------------------------------------------------
def test_weights_are_device_arguments_not_literals() -> None:
    w = RNG.standard_normal((64, 64)).astype(np.float32)
    b = GraphBuilder("w")
    x = b.input("x", f32(2, 64))
    b.output(
        "y", b.op("add", b.op("matmul", x, b.constant(w, "proj.weight")), b.constant(np.float32(0.5), "half"))
    )
    g = b.build()
    src = JaxBackend().source(g)
    assert "def kernel(x, w_proj_weight):" in src
    assert "jnp.full((), 0.5, jnp.float32)" in src  # a scalar is a literal
    hlo = src.split("StableHLO")[-1]
    assert "tensor<64x64xf32>" in hlo and "dense<" not in hlo.replace("dense<5.000000e-01>", "")
    run = JaxBackend().compile(g)
    assert len(run.weights) == 1  # type: ignore[attr-defined]
    x_val = RNG.standard_normal((2, 64)).astype(np.float32)
    np.testing.assert_allclose(run({"x": x_val})["y"], x_val @ w + 0.5, rtol=1e-5, atol=1e-5)


def test_kiln_jit_target_jax() -> None:
    w = RNG.standard_normal((4, 3)).astype(np.float32)

    @kiln.jit(target="jax")
    def f(x: Any, y: Any) -> Any:
        a = ops.softmax(x @ w + y, axis=-1)
        return ops.sum(a * a, axis=0), ops.argmax(a, axis=1)

    x, y = RNG.standard_normal((2, 4)).astype(np.float32), RNG.standard_normal(3).astype(np.float32)
    s, idx = f(x, y)
    a = x @ w + y
    a = np.exp(a - a.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    np.testing.assert_allclose(s, (a * a).sum(0), rtol=1e-5)
    assert idx.dtype == np.int64 and idx.tolist() == a.argmax(1).tolist()


def _with_node(graph: Graph, node: Node) -> Graph:
    graph.nodes.append(node)
    graph.outputs.append((node.results[0].name or "extra", node.results[0]))
    return graph


def test_unsupported_op_is_listed_and_compile_refuses() -> None:
    from kiln.ir.registry import Context, OpDef

    ctx = Context()
    ctx.register(default_context().ops.values())
    ctx.register(OpDef("frobnicate", ("x",), lambda a, ts: [ts[0]], lambda a, xs, ts: [xs[0]]))
    b = GraphBuilder("u", ctx)
    x = b.input("x", f32(2))
    b.loc = "model.py:12"
    b.output("y", b.op("frobnicate", b.op("exp", x)))
    g = b.build()
    lines = JaxBackend(ctx).unsupported(g)
    assert len(lines) == 1 and "'frobnicate'" in lines[0] and "model.py:12" in lines[0]
    assert "no jax lowering rule" in lines[0]
    with pytest.raises(KilnError, match=r"target 'jax' cannot compile graph @u:\n  'frobnicate'"):
        kiln.compile(g, "jax", pipeline="", ctx=ctx)


def test_host_values_are_refused() -> None:
    g = build(lambda b, x: b.op("exp", x), f32(2))
    s = Value(HostType("str"), "prompt")
    g.inputs.append(s)
    g.nodes.append(Node("exp", (s,), NoAttrs(), (Value(HostType("str"), "bad"),), "agent.py:3"))
    lines = JaxBackend().unsupported(g)
    assert any("input 'prompt'" in ln and "host value (!str)" in ln for ln in lines)
    assert any("'exp' (result %bad) at agent.py:3" in ln and "tensors only" in ln for ln in lines)
    with pytest.raises(BackendError, match="host value"):
        JaxBackend().compile(g)


def test_trace_errors_name_the_node() -> None:
    """A failure while jax traces a line is a BackendError naming that line's node."""
    g = build(lambda b, x: b.op("argmax", b.op("exp", x), axis=0), f32(0, 3))
    g.nodes[-1].loc = "model.py:7"
    with pytest.raises(BackendError, match=r"'argmax' \(result %.*\) at model\.py:7: jax failed"):
        kiln.compile(g, "jax", pipeline="")


def test_stablehlo_needs_bound_dims() -> None:
    g = build(lambda b, x, y: b.op("add", x, y), f32("seq", 4), f32("seq", 4))
    be = JaxBackend()
    with pytest.raises(BackendError, match="symbolic dims seq"):
        be.stablehlo(g, {})
    assert "tensor<3x4xf32>" in be.stablehlo(g, {"seq": 3})
    assert "bind" in be.source(g).split("StableHLO")[-1]


def test_fused_bodies_are_inlined() -> None:
    g = kiln.PassManager.parse("fuse").run(
        build(lambda b, x, y: b.op("exp", b.op("tanh", b.op("add", x, y))), f32(3, 4), f32(4))
    )
    assert g.op_counts().get("fused")
    src = JaxBackend().program(g).source
    assert "# fused" in src and "jnp.tanh(" in src
    check(g, {"x0": RNG.standard_normal((3, 4)).astype(np.float32), "x1": np.ones(4, np.float32)})
