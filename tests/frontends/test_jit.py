"""@kiln.jit: tracing, caching per signature, staging, errors that name the user's line."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special

import kiln
from kiln import ops

RNG = np.random.default_rng(0)


def rand(*shape: int, dtype: type = np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


def test_operators_and_numpy_names_match_numpy() -> None:
    w = rand(4, 3)

    @kiln.jit
    def f(x, y):
        a = (x @ w + y) * 2.0 - 1.0
        b = -a / (ops.abs(a) + 1.0) ** 2
        c = ops.where(a > 0, ops.exp(ops.tanh(a)), ops.maximum(a, b))
        return ops.sum(c, axis=-1, keepdims=True), ops.mean(c), ops.max(b, axis=0)

    x, y = rand(2, 4), rand(3)
    s, m, mx = f(x, y)
    a = (x @ w + y) * 2.0 - 1.0
    b = -a / (np.abs(a) + 1.0) ** 2
    c = np.where(a > 0, np.exp(np.tanh(a)), np.maximum(a, b))
    np.testing.assert_allclose(s, c.sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m, c.mean(), rtol=1e-5)
    np.testing.assert_allclose(mx, b.max(0), rtol=1e-6)
    assert s.dtype == np.float32 and m.shape == ()


def test_composites_match_numpy() -> None:
    @kiln.jit
    def f(x, g, b):
        return (
            ops.softmax(x, axis=1),
            ops.log_softmax(x, axis=-1),
            ops.layer_norm(x, g, b, eps=1e-5),
            ops.rms_norm(x, g, eps=1e-6),
            ops.gelu(x),
            ops.gelu(x, approximate="tanh"),
            ops.silu(x),
            ops.sigmoid(x),
            ops.relu(x),
            ops.erf(x),
            ops.rsqrt(ops.abs(x) + 1.0),
        )

    x, g, b = rand(3, 5), rand(5), rand(5)
    out = f(x, g, b)
    e = np.exp(x - x.max(1, keepdims=True))
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    sig = 1 / (1 + np.exp(-x))
    want = [
        e / e.sum(1, keepdims=True),
        np.log(e / e.sum(1, keepdims=True)),
        (x - mu) / np.sqrt(var + 1e-5) * g + b,
        x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6) * g,
        0.5 * x * (1 + scipy.special.erf(x / math.sqrt(2))),
        0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
        x * sig,
        sig,
        np.maximum(x, 0),
        scipy.special.erf(x),
        1 / np.sqrt(np.abs(x) + 1),
    ]
    for got, exp in zip(out, want, strict=True):
        np.testing.assert_allclose(got, exp, rtol=2e-5, atol=2e-6)


def test_shape_ops_and_indexing_match_numpy() -> None:
    @kiln.jit
    def f(x, idx):
        parts = ops.split(x, [1, 3], axis=1)
        return (
            ops.concatenate([parts[2], parts[0]], axis=1),
            ops.reshape(x, (-1, 2)),
            x.T,
            ops.transpose(x[None], (2, 0, 1)),
            x[1:, ::-2],
            x[-1],
            x[..., 1],
            ops.take(x, idx, axis=0),
            ops.expand_dims(x, 0),
            ops.squeeze(ops.expand_dims(x, (0, 2))),
            ops.broadcast_to(x[:, :1], (3, 4)),
            ops.triu(x, 1),
            ops.tril(x, -1),
            ops.cumsum(x, axis=1),
            ops.argmax(x, axis=1),
            ops.argmax(x),
        )

    x, idx = rand(3, 4), np.array([2, 0, -1], dtype=np.int64)
    got = f(x, idx)
    p = np.split(x, [1, 3], axis=1)
    want = [
        np.concatenate([p[2], p[0]], axis=1),
        x.reshape(-1, 2),
        x.T,
        np.transpose(x[None], (2, 0, 1)),
        x[1:, ::-2],
        x[-1],
        x[..., 1],
        np.take(x, idx, axis=0),
        x[None],
        x,
        np.broadcast_to(x[:, :1], (3, 4)),
        np.triu(x, 1),
        np.tril(x, -1),
        np.cumsum(x, axis=1),
        np.argmax(x, axis=1),
        np.argmax(x),
    ]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6)
        assert g.shape == w.shape


def test_topk_arange_and_astype() -> None:
    @kiln.jit
    def f(x):
        vals, idx = ops.topk(x, 2, axis=-1)
        r = ops.arange(4) * 2
        return vals, idx, r, ops.astype(x * 10.0, "int8"), ops.astype(x, kiln.f16)

    x = rand(2, 4)
    vals, idx, r, i8, h = f(x)
    order = np.argsort(-x, axis=-1, kind="stable")[:, :2]
    np.testing.assert_array_equal(idx, order)
    np.testing.assert_allclose(vals, np.take_along_axis(x, order, -1))
    np.testing.assert_array_equal(r, np.arange(4) * 2)
    np.testing.assert_array_equal(i8, np.trunc(x * 10).astype(np.int8))
    assert h.dtype == np.float16
    np.testing.assert_array_equal(h, x.astype(np.float16))
    assert "iota" in f.lower(x).as_text()


def test_numpy_ufuncs_on_tracers_record_kiln_ops() -> None:
    @kiln.jit
    def f(x):
        return np.exp(x) + np.maximum(x, 0.5)

    x = rand(3)
    np.testing.assert_allclose(f(x), np.exp(x) + np.maximum(x, 0.5), rtol=1e-6)
    text = f.lower(x).as_text()
    assert "exp(" in text and "maximum(" in text


def test_eager_ops_run_on_numpy() -> None:
    x = rand(2, 3)
    np.testing.assert_allclose(ops.softmax(x), np.exp(x) / np.exp(x).sum(-1, keepdims=True), rtol=1e-6)
    assert isinstance(ops.exp(x), np.ndarray)
    a = ops.split(x, 3, axis=1)[0]
    np.testing.assert_array_equal(a, x[:, :1])


def test_promotion_rules() -> None:
    @kiln.jit
    def f(i, h, x):
        return i + 1, i * 1.5, h + x, i / 2, i + x

    i, h, x = np.arange(3, dtype=np.int32), rand(3, dtype=np.float16), rand(3)
    a, b, c, d, e = f(i, h, x)
    assert a.dtype == np.int32 and b.dtype == np.float32 and c.dtype == np.float32
    assert d.dtype == np.float32 and e.dtype == np.float32
    np.testing.assert_allclose(b, i * 1.5)
    np.testing.assert_allclose(d, i / 2)
    np.testing.assert_allclose(c, h.astype(np.float32) + x, rtol=1e-6)


def test_cache_per_signature_and_retrace_on_new_shapes() -> None:
    @kiln.jit
    def f(x, scale):
        return x * scale

    x = rand(2, 3)
    np.testing.assert_allclose(f(x, 2.0), x * 2)
    f(rand(2, 3), 2.0)
    assert f.trace_count == 1 and f.cache_size() == 1
    f(rand(4, 3), 2.0)  # new shape
    assert f.trace_count == 2
    f(x.astype(np.float16), 2.0)  # new dtype
    assert f.trace_count == 3
    np.testing.assert_allclose(f(x, 3.0), x * 3)  # a new static scalar retraces
    assert f.trace_count == 4 and f.cache_size() == 4


def test_weights_as_constants_or_inputs() -> None:
    w = rand(3, 3)

    def f(x, weight):
        return x @ weight

    as_input = kiln.jit(f)
    as_const = kiln.jit(f, const_argnums=(1,))
    x = rand(2, 3)
    g_in = as_input.lower(x, w).graph
    g_const = as_const.lower(x, w).graph
    assert g_in.input_names == ["x", "weight"] and not g_in.constants
    assert g_const.input_names == ["x"] and "weight" in g_const.constants
    np.testing.assert_allclose(as_input(x, w), x @ w, rtol=1e-6)
    np.testing.assert_allclose(as_const(x, w), x @ w, rtol=1e-6)


def test_staged_api_lower_compile_as_text() -> None:
    @kiln.jit
    def f(x):
        return (x + 0.0) * 1.0

    x = rand(2)
    lowered = f.lower(x)
    assert isinstance(lowered.graph, kiln.Graph)
    assert "add(" in lowered.as_text()
    compiled = lowered.compile(target="reference")
    assert "add(" not in compiled.as_text()  # the default pipeline removed x + 0 and x * 1
    np.testing.assert_array_equal(compiled(x), x)
    raw = lowered.compile(pipeline="")
    assert "add(" in raw.as_text()


def test_pipeline_option_is_used() -> None:
    @kiln.jit(pipeline="canonicalize,dce")
    def f(x):
        return ops.negative(ops.negative(x))

    assert "neg" not in f.lower(rand(2)).compile().as_text()


def test_dict_and_list_outputs() -> None:
    @kiln.jit
    def f(x):
        return {"double": x * 2, "neg": -x}

    x = rand(2)
    out = f(x)
    assert set(out) == {"double", "neg"}
    np.testing.assert_allclose(out["neg"], -x)
    assert f.lower(x).graph.output_names == ["double", "neg"]


def test_control_flow_on_traced_values_names_the_line() -> None:
    @kiln.jit
    def f(x):
        if x.sum() > 0:  # the offending line
            return x
        return -x

    with pytest.raises(kiln.TraceError) as e:
        f(rand(3))
    assert "test_jit.py" in str(e.value) and "bool()" in str(e.value)
    assert f"test_jit.py:{f.fn.__code__.co_firstlineno + 2}" in str(e.value)


def test_int_and_float_of_traced_value_are_errors() -> None:
    @kiln.jit
    def f(x):
        return x * int(x[0])

    with pytest.raises(kiln.TraceError, match="int\\(\\)"):
        f(rand(3))


def test_shape_errors_name_the_line_and_the_op() -> None:
    @kiln.jit
    def f(x, y):
        return x @ y

    with pytest.raises(kiln.TraceError) as e:
        f(rand(2, 3), rand(4, 5))
    msg = str(e.value)
    assert "matmul" in msg and "f32[2,3]" in msg and "test_jit.py" in msg


def test_compiled_checks_argument_types() -> None:
    @kiln.jit
    def f(x):
        return x + 1.0

    compiled = f.lower(rand(2, 3)).compile()
    with pytest.raises(kiln.SignatureError) as e:
        compiled(rand(3, 3))
    assert "'x'" in str(e.value) and "f32[2,3]" in str(e.value) and "f32[3,3]" in str(e.value)
    with pytest.raises(kiln.SignatureError, match="f64"):
        compiled(np.zeros((2, 3)))


def test_bad_arguments() -> None:
    @kiln.jit
    def f(x):
        return x

    with pytest.raises(kiln.SignatureError, match="'x'"):
        f({"a": 1})
    with pytest.raises(kiln.KilnError, match="unknown target 'tpu'"):
        kiln.jit(f, target="tpu")
    with pytest.raises(kiln.TraceError, match="returned a str"):
        kiln.jit(lambda x: "no")(rand(2))


def test_kiln_compile_and_executable_run() -> None:
    b = kiln.GraphBuilder("g")
    x = b.input("x", kiln.TensorType(kiln.f32, (2, 3)))
    b.output("y", b.op("exp", x))
    exe = kiln.compile(b.build())
    x_val = rand(2, 3)
    np.testing.assert_allclose(exe(x_val), np.exp(x_val), rtol=1e-6)
    np.testing.assert_allclose(exe.run({"x": x_val})["y"], np.exp(x_val), rtol=1e-6)
    with pytest.raises(kiln.SignatureError, match="takes 1 inputs"):
        exe(x_val, x_val)
    with pytest.raises(kiln.SignatureError, match="missing"):
        exe.run({})
    assert {"reference", "numba-cpu"} <= {t.name for t in kiln.targets()}
