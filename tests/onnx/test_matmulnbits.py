"""qmatmul <-> onnxruntime's com.microsoft MatMulNBits: export, import and round trips, checked by running
onnxruntime against kiln's reference interpreter."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import kiln
from kiln.frontends.onnx import OnnxImportError
from kiln.frontends.onnx_export import OnnxExportError, to_onnx
from kiln.ir import quant
from kiln.ir.builder import GraphBuilder
from kiln.ir.core import Graph
from kiln.ir.dtypes import Layout, QuantType, Scheme, f16, f32, i64
from kiln.ir.interpret import interpret
from kiln.ir.types import TensorType

ort = pytest.importorskip("onnxruntime")

K, N = 128, 24


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, feeds)[0])


def close(got: np.ndarray, want: np.ndarray, rel: float) -> None:
    """Equal up to ``rel`` times the largest magnitude (float sums in another order)."""
    assert got.shape == want.shape
    scale = float(np.abs(want).max()) or 1.0
    np.testing.assert_allclose(got, want, rtol=0, atol=rel * scale)


def qmatmul_graph(q: QuantType, xshape: tuple[int, ...], act: str = "f32", seed: int = 0) -> Graph:
    qw = quant.quantize(rng(seed).standard_normal((xshape[-1], N)).astype(np.float32), q)
    b = GraphBuilder("q")
    x = b.input("x", TensorType(f32, xshape))
    b.output("y", b.op("qmatmul", x, *b.quantized(qw), act=act))
    return b.build()


def export_quietly(g: Graph) -> onnx.ModelProto:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # MatMulNBits exports must not fall back
        return to_onnx(g)


def nbits_op(model: onnx.ModelProto) -> onnx.NodeProto:
    (node,) = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    return node


# -- kiln -> ONNX ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("scheme", [Scheme.SYM, Scheme.ASYM])
@pytest.mark.parametrize("group", [16, 32, 128])
@pytest.mark.parametrize("xshape", [(3, K), (2, 5, K)])
def test_export_matches_interpret(bits: int, scheme: Scheme, group: int, xshape: tuple[int, ...]) -> None:
    g = qmatmul_graph(QuantType(bits, scheme, group, f16, Layout.PACKED), xshape, seed=bits + group)
    model = export_quietly(g)
    node = nbits_op(model)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"K": K, "N": N, "bits": bits, "block_size": group, "accuracy_level": 0}
    assert ("com.microsoft", 1) in [(o.domain, o.version) for o in model.opset_import]
    x = rng(1).standard_normal(xshape).astype(np.float32)
    close(run_ort(model, {"x": x}), interpret(g, {"x": x})["y"], 1e-5)


def test_export_per_channel_is_one_block() -> None:
    g = qmatmul_graph(QuantType(4, Scheme.ASYM, 0, f32, Layout.PACKED), (4, 64))
    model = export_quietly(g)
    attrs = {a.name: helper.get_attribute_value(a) for a in nbits_op(model).attribute}
    assert attrs["block_size"] == 64  # one block of K
    x = rng(2).standard_normal((4, 64)).astype(np.float32)
    close(run_ort(model, {"x": x}), interpret(g, {"x": x})["y"], 1e-5)


@pytest.mark.parametrize("bits", [4, 8])
def test_export_int8_activations_use_accuracy_level_4(bits: int) -> None:
    g = qmatmul_graph(QuantType(bits, Scheme.SYM, 32, f16, Layout.PACKED), (2, 3, K), act="int8")
    model = export_quietly(g)
    attrs = {a.name: helper.get_attribute_value(a) for a in nbits_op(model).attribute}
    assert attrs["accuracy_level"] == 4
    x = rng(3).standard_normal((2, 3, K)).astype(np.float32)
    # onnxruntime rounds x to int8 per block of K, kiln per row: each off by ~1% of the output's range.
    close(run_ort(model, {"x": x}), interpret(g, {"x": x})["y"], 3e-2)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("scheme", [Scheme.SYM, Scheme.ASYM])
def test_export_binary_activations_binarize_x_then_use_accuracy_level_0(bits: int, scheme: Scheme) -> None:
    g = qmatmul_graph(QuantType(bits, scheme, 32, f16, Layout.PACKED), (2, 3, K), act="binary", seed=bits)
    model = export_quietly(g)
    attrs = {a.name: helper.get_attribute_value(a) for a in nbits_op(model).attribute}
    assert attrs["accuracy_level"] == 0
    assert {"ReduceMean", "GreaterOrEqual", "Where"} <= {n.op_type for n in model.graph.node}
    x = rng(7).standard_normal((2, 3, K)).astype(np.float32)
    # +0.0 and -0.0 binarize to +alpha: a sign of 0 or -1 there would move the row far past 1e-5
    x[1, 0, ::4], x[1, 0, 1::4] = 0.0, -0.0
    close(run_ort(model, {"x": x}), interpret(g, {"x": x})["y"], 1e-5)


@pytest.mark.parametrize(
    ("q", "act", "why"),
    [
        (QuantType(4, Scheme.SYM, 64, f16, Layout.BITSLICED), "f32", "bitsliced layout"),
        (QuantType(3, Scheme.BIPOLAR, 64, f16, Layout.BITSLICED), "int8", "bitsliced layout"),
        (QuantType(2, Scheme.BIPOLAR, 32, f16, Layout.PACKED), "f32", "bipolar"),
        (QuantType(3, Scheme.SYM, 32, f16, Layout.PACKED), "f32", "2, 4 and 8 bits only"),
        (QuantType(4, Scheme.ASYM, 8, f16, Layout.PACKED), "int8", "power of two >= 16"),
        (QuantType(1, Scheme.BIPOLAR, 32, f16, Layout.BITSLICED), "binary", "bitsliced layout"),
        (QuantType(3, Scheme.ASYM, 32, f16, Layout.PACKED), "binary", "2, 4 and 8 bits only"),
    ],
)
def test_fallback_export_is_exact(q: QuantType, act: str, why: str) -> None:
    g = qmatmul_graph(q, (2, 3, K), act=act)
    with pytest.warns(UserWarning, match=rf"'qmatmul'.*dequantized float weight.*{why}"):
        model = to_onnx(g)
    assert "MatMulNBits" not in {n.op_type for n in model.graph.node}
    assert [o.domain for o in model.opset_import] == [""]
    x = rng(4).standard_normal((2, 3, K)).astype(np.float32)
    close(run_ort(model, {"x": x}), interpret(g, {"x": x})["y"], 1e-5)


def test_qgather_exports_a_dequantized_table() -> None:
    qw = quant.quantize(rng(5).standard_normal((64, 10)).astype(np.float32), QuantType(4, Scheme.ASYM, 32))
    b = GraphBuilder("emb")
    idx = b.input("ids", TensorType(i64, (2, 3)))
    b.output("y", b.op("qgather", *b.quantized(qw, "table"), idx))
    g = b.build()
    with pytest.warns(UserWarning, match="'qgather'.*no quantized Gather"):
        model = to_onnx(g)
    ids = np.array([[0, 9, -1], [3, 3, -10]], np.int64)
    np.testing.assert_array_equal(run_ort(model, {"ids": ids}), interpret(g, {"ids": ids})["y"])


def test_export_refuses_computed_scales() -> None:
    qw = quant.quantize(rng(6).standard_normal((64, 8)).astype(np.float32), QuantType(4, group=32))
    b = GraphBuilder("dyn")
    x = b.input("x", TensorType(f32, (2, 64)))
    s = b.input("s", TensorType(f16, (8, 2)))
    w, _ = b.quantized(qw)
    b.output("y", b.op("qmatmul", x, w, s))
    with pytest.raises(OnnxExportError, match=r"'qmatmul'.*operand #2 must be a constant"):
        to_onnx(b.build())


# -- ONNX (as onnxruntime defines it) -> kiln -------------------------------------------------------
def pack_rows(u: np.ndarray, bits: int) -> np.ndarray:
    """Rows of unsigned integers as LSB-first bit streams, each row padded to whole bytes."""
    stream = (u[:, :, None] >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(stream.reshape(u.shape[0], -1), axis=1, bitorder="little")


def nbits_model(
    k: int,
    n: int,
    bits: int,
    block: int,
    *,
    zero_points: str = "none",
    bias: bool = False,
    a_shape: tuple[Any, ...] = ("batch", None),
    seed: int = 0,
) -> onnx.ModelProto:
    """One MatMulNBits with random B/scales/zero_points laid out as onnxruntime's spec defines them."""
    r = rng(seed)
    blocks = -(-k // block)
    codes = r.integers(0, 2**bits, (n, blocks * block), dtype=np.uint8)  # the last block's padding too
    inits = [
        numpy_helper.from_array(pack_rows(codes, bits).reshape(n, blocks, block * bits // 8), "B"),
        numpy_helper.from_array(r.uniform(0.01, 0.1, n * blocks).astype(np.float32), "scales"),
    ]
    inputs = ["A", "B", "scales"]
    zeros = r.integers(0, 2**bits, (n, blocks), dtype=np.uint8)
    if zero_points == "packed":
        inits.append(numpy_helper.from_array(pack_rows(zeros, bits).reshape(-1), "zp"))
    elif zero_points == "float":
        inits.append(numpy_helper.from_array(zeros.astype(np.float32), "zp"))
    inputs.append("zp" if zero_points != "none" else "")
    inputs.append("")  # g_idx
    if bias:
        inits.append(numpy_helper.from_array(r.standard_normal(n).astype(np.float32), "bias"))
        inputs.append("bias")
    while inputs[-1] == "":
        inputs.pop()
    attrs: dict[str, Any] = {"K": k, "N": n, "bits": bits, "block_size": block, "accuracy_level": 0}
    node = helper.make_node("MatMulNBits", inputs, ["Y"], name="qproj", domain="com.microsoft", **attrs)
    a_dims = [k if d is None else d for d in a_shape]
    y_dims = [n if d is None else d for d in a_shape]
    graph = helper.make_graph(
        [node],
        "nbits",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, a_dims)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, y_dims)],
        inits,
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("zero_points", ["none", "packed", "float"])
@pytest.mark.parametrize(("k", "block", "bias"), [(128, 32, True), (256, 16, False), (100, 32, True)])
def test_import_matches_onnxruntime(bits: int, zero_points: str, k: int, block: int, bias: bool) -> None:
    model = nbits_model(k, 20, bits, block, zero_points=zero_points, bias=bias, seed=bits * k)
    g = kiln.from_onnx(model)
    qtypes = [v.tensor_type.dtype for n in g.nodes for v in n.results if n.op == "constant"]
    want_scheme = Scheme.SYM if zero_points == "none" else Scheme.ASYM
    assert {q.scheme for q in qtypes if isinstance(q, QuantType)} == {want_scheme}
    assert [n.op for n in g.nodes].count("qmatmul") == (2 if k % block else 1)  # a partial last block
    x = rng(7).standard_normal((3, k)).astype(np.float32)
    if bits == 8 and zero_points == "float":  # onnxruntime's CPU kernel refuses this; same zeros, packed
        model = nbits_model(k, 20, bits, block, zero_points="packed", bias=bias, seed=bits * k)
    close(interpret(g, {"A": x})["Y"], run_ort(model, {"A": x}), 1e-5)


def test_import_rank3_keeps_symbolic_dims() -> None:
    model = nbits_model(64, 16, 4, 32, zero_points="packed", a_shape=("batch", "seq", None))
    g = kiln.from_onnx(model)
    for shape in ((2, 5, 64), (1, 1, 64)):
        x = rng(8).standard_normal(shape).astype(np.float32)
        close(interpret(g, {"A": x})["Y"], run_ort(model, {"A": x}), 1e-5)


@pytest.mark.parametrize(
    ("zero_points", "bias", "k"), [("none", True, 128), ("packed", False, 128), ("packed", True, 96)]
)
def test_round_trip_onnx_kiln_onnx(zero_points: str, bias: bool, k: int) -> None:
    model = nbits_model(k, 24, 4, 32, zero_points=zero_points, bias=bias, seed=k)
    again = export_quietly(kiln.from_onnx(model))
    old_b = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "B"))
    new_b = numpy_helper.to_array(
        next(t for t in again.graph.initializer if t.name == nbits_op(again).input[1])
    )
    np.testing.assert_array_equal(new_b, old_b)  # the codes travel byte for byte
    x = rng(9).standard_normal((4, k)).astype(np.float32)
    close(run_ort(again, {"A": x}), run_ort(model, {"A": x}), 1e-5)


def test_round_trip_partial_block() -> None:
    model = nbits_model(100, 12, 8, 32, zero_points="packed", bias=True)
    g = kiln.from_onnx(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the 4-weight tail (per channel, K=4) is below MatMulNBits' blocks
        again = to_onnx(g)
    x = rng(10).standard_normal((3, 100)).astype(np.float32)
    close(run_ort(again, {"A": x}), run_ort(model, {"A": x}), 1e-5)


# -- refusals -----------------------------------------------------------------------------------------
def with_b_as_input(model: onnx.ModelProto) -> onnx.ModelProto:
    b = next(t for t in model.graph.initializer if t.name == "B")
    model.graph.initializer.remove(b)
    model.graph.input.append(helper.make_tensor_value_info("B", TensorProto.UINT8, list(b.dims)))
    return model


def with_g_idx(model: onnx.ModelProto, g_idx: np.ndarray) -> onnx.ModelProto:
    node = model.graph.node[0]
    while len(node.input) < 4:
        node.input.append("")
    node.input.append("g_idx")
    model.graph.initializer.append(numpy_helper.from_array(g_idx.astype(np.int32), "g_idx"))
    return model


def test_trivial_g_idx_is_accepted() -> None:
    model = with_g_idx(nbits_model(64, 8, 4, 32), np.arange(64) // 32)
    x = rng(11).standard_normal((2, 64)).astype(np.float32)
    close(interpret(kiln.from_onnx(model), {"A": x})["Y"], run_ort(model, {"A": x}), 1e-5)


def with_attr(model: onnx.ModelProto, name: str, value: int) -> onnx.ModelProto:
    node = model.graph.node[0]
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute(name, value)])
    return model


def fractional_zero_points() -> onnx.ModelProto:
    model = nbits_model(64, 8, 4, 32, zero_points="float")
    zp = next(t for t in model.graph.initializer if t.name == "zp")
    zp.CopyFrom(numpy_helper.from_array(np.full((8, 2), 7.5, np.float32), "zp"))
    return model


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            with_b_as_input(nbits_model(64, 8, 4, 32)),
            r"node 'qproj' \(MatMulNBits\): B .* must be a constant",
        ),
        (
            with_g_idx(nbits_model(64, 8, 4, 32), np.arange(64) % 2),
            r"node 'qproj' \(MatMulNBits\): g_idx reorders the quantization groups",
        ),
        (
            with_attr(nbits_model(64, 8, 4, 32), "bits", 1),
            r"node 'qproj' \(MatMulNBits\): bits=1 is not supported",
        ),
        (
            with_attr(nbits_model(64, 8, 4, 32), "bits", 16),
            r"node 'qproj' \(MatMulNBits\): bits=16 is not supported",
        ),
        (with_attr(nbits_model(64, 8, 4, 32), "block_size", 24), r"block_size=24 must be a power of two"),
        (with_attr(nbits_model(64, 8, 4, 32), "weight_prepacked", 1), r"weight_prepacked=1 .* not supported"),
        (fractional_zero_points(), r"node 'qproj' \(MatMulNBits\): float zero_points that are not integers"),
        (nbits_model(70, 8, 2, 32), r"partial last block \(6 of 32 weights at 2 bits\)"),
    ],
    ids=["dynamic-B", "g_idx", "bits1", "bits16", "block24", "prepacked", "fractional-zp", "partial-bytes"],
)
def test_import_refusals(model: onnx.ModelProto, message: str) -> None:
    with pytest.raises(OnnxImportError, match=message):
        kiln.from_onnx(model)


def test_unknown_contrib_op_is_still_reported() -> None:
    model = nbits_model(64, 8, 4, 32)
    model.graph.node[0].op_type = "MatMulNBitsFancy"
    with pytest.raises(
        OnnxImportError, match=r"unsupported operators .*com\.microsoft\.MatMulNBitsFancy \(qproj\)"
    ):
        kiln.from_onnx(model)


def test_import_float16_model() -> None:
    model = nbits_model(128, 16, 4, 32, zero_points="packed", bias=True)
    for t in model.graph.initializer:
        if t.name in ("scales", "bias"):
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for vi in (model.graph.input[0], model.graph.output[0]):
        vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    g = kiln.from_onnx(model)
    assert any(isinstance(v.tensor_type.dtype, QuantType) and v.tensor_type.dtype.scale_dtype == f16
               for n in g.nodes for v in n.results)  # fmt: skip
    x = rng(12).standard_normal((3, 128)).astype(np.float16)
    got = interpret(g, {"A": x})["Y"]
    assert got.dtype == np.float16
    close(got.astype(np.float32), run_ort(model, {"A": x}).astype(np.float32), 2e-3)  # f16 rounding
