"""ONNX import: real fixtures, shape folding, symbolic dims, and every kind of bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import kiln
from kiln.frontends.onnx import OnnxImportError, from_onnx

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "models"


def model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
          inits: list[onnx.TensorProto] = (), opset: int = 18) -> onnx.ModelProto:  # type: ignore[assignment]  # fmt: skip
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def vi(name: str, shape: list[int | str], dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_fixtures_match_onnxruntime(name: str) -> None:
    io = np.load(FIXTURES / f"{name}_io.npz")
    g = from_onnx(FIXTURES / f"{name}.onnx")
    out = kiln.compile(g)(io["input_ids"])
    np.testing.assert_allclose(out, io["out_logits"], rtol=1e-4, atol=1e-5)
    # Shape arithmetic was folded away: no shape-computing ops survive import.
    assert not {"iota"} & set(g.op_counts())
    assert all(n.op != "reshape" or n.results[0].tensor_type.is_static for n in g.nodes)


def test_shape_subgraph_folds_to_a_static_reshape() -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["d0"], axis=0),
        helper.make_node("Unsqueeze", ["d0", "zero_1d"], ["d0v"]),
        helper.make_node("Concat", ["d0v", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([0], np.int64), "zero_1d"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus1")]  # fmt: skip
    m = model(nodes, [vi("x", [2, 3, 4])], [vi("y", [2, 12])], inits)
    g = from_onnx(m)
    assert g.op_counts() == {"reshape": 1}
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(kiln.compile(g)(x), x.reshape(2, 12))


def test_symbolic_dims_stay_symbolic_or_bind() -> None:
    nodes = [helper.make_node("Softmax", ["x"], ["y"], axis=-1)]
    m = model(nodes, [vi("x", ["batch", 4])], [vi("y", ["batch", 4])])
    g = from_onnx(m)
    assert g.inputs[0].type == kiln.TensorType(kiln.f32, ("batch", 4))
    exe = kiln.compile(g)
    for n in (1, 3):
        x = np.random.default_rng(n).standard_normal((n, 4)).astype(np.float32)
        e = np.exp(x - x.max(-1, keepdims=True))
        np.testing.assert_allclose(exe(x), e / e.sum(-1, keepdims=True), rtol=1e-6)
    assert from_onnx(m, dims={"batch": 2}).inputs[0].type == kiln.TensorType(kiln.f32, (2, 4))


def test_dynamic_dims_without_binding_are_reported() -> None:
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["x", "s"], ["y"])]
    m = model(nodes, [vi("x", ["seq", 4])], [vi("y", ["seq", 4])])
    with pytest.raises(OnnxImportError) as e:
        from_onnx(m)
    msg = str(e.value)
    assert "(Shape)" in msg and "seq" in msg and "dims=" in msg
    g = from_onnx(m, dims={"seq": 3})
    x = np.ones((3, 4), np.float32)
    np.testing.assert_array_equal(kiln.compile(g)(x), x)


def test_constants_bind_shape_inputs() -> None:
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"])]
    m = model(nodes, [vi("x", [2, 3]), vi("shape", [2], TensorProto.INT64)], [vi("y", [3, 2])])
    with pytest.raises(OnnxImportError, match="must be a constant"):
        from_onnx(m)
    g = from_onnx(m, constants={"shape": np.array([3, 2])})
    assert g.input_names == ["x"]
    with pytest.raises(OnnxImportError, match="not graph inputs"):
        from_onnx(m, constants={"nope": np.array([3, 2])})


def test_unsupported_operators_are_listed_at_once() -> None:
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="conv1"),
             helper.make_node("Relu", ["a"], ["b"], name="relu1"),
             helper.make_node("Conv", ["b", "w"], ["c"], name="conv2"),
             helper.make_node("NonZero", ["c"], ["y"], name="nz")]  # fmt: skip
    m = model(nodes, [vi("x", [1, 1, 4, 4]), vi("w", [1, 1, 1, 1])], [vi("y", [4, "n"], TensorProto.INT64)])
    with pytest.raises(OnnxImportError) as e:
        from_onnx(m)
    msg = str(e.value)
    assert "Conv (conv1, conv2)" in msg and "NonZero (nz)" in msg and "opset 18" in msg
    assert "Relu" not in msg


def test_missing_initializer_and_dangling_output() -> None:
    nodes = [helper.make_node("Add", ["x", "bias"], ["y"], name="add0")]
    m = model(nodes, [vi("x", [2])], [vi("y", [2]), vi("z", [2])])
    with pytest.raises(OnnxImportError) as e:
        from_onnx(m)
    msg = str(e.value)
    assert "node 'add0' (Add) uses ['bias']" in msg and "graph output 'z'" in msg


def test_cycles_are_reported() -> None:
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="n1"),
             helper.make_node("Relu", ["a"], ["b"], name="n2")]  # fmt: skip
    m = model(nodes, [vi("x", [2])], [vi("b", [2])])
    with pytest.raises(OnnxImportError, match="cycle through node 'n1' \\(Add\\), node 'n2' \\(Relu\\)"):
        from_onnx(m)


def test_out_of_order_nodes_are_sorted() -> None:
    nodes = [helper.make_node("Relu", ["a"], ["y"]), helper.make_node("Neg", ["x"], ["a"])]
    g = from_onnx(model(nodes, [vi("x", [3])], [vi("y", [3])]))
    np.testing.assert_array_equal(kiln.compile(g)(np.array([1, -2, 3], np.float32)), [0, 2, 0])


def test_corrupt_and_truncated_files(tmp_path: Path) -> None:
    data = (FIXTURES / "llama.onnx").read_bytes()
    (tmp_path / "trunc.onnx").write_bytes(data[: len(data) // 3])
    (tmp_path / "junk.onnx").write_bytes(b"\x00\xff" * 100 + b"not an onnx model")
    (tmp_path / "empty.onnx").write_bytes(b"")
    for name in ("trunc", "junk", "empty"):
        with pytest.raises(OnnxImportError, match=f"{name}.onnx"):
            from_onnx(tmp_path / f"{name}.onnx")
    with pytest.raises(OnnxImportError, match="no such file"):
        from_onnx(tmp_path / "missing.onnx")


def test_external_data_loads_and_missing_data_is_reported(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "gpt2.onnx", tmp_path / "gpt2.onnx")
    with pytest.raises(OnnxImportError, match="external weight data"):
        from_onnx(tmp_path / "gpt2.onnx")
    shutil.copy(FIXTURES / "gpt2.onnx.data", tmp_path / "gpt2.onnx.data")
    g = from_onnx(tmp_path / "gpt2.onnx")
    assert sum(a.size for a in g.constants.values()) > 500_000


def test_opset_and_dtype_errors() -> None:
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2])], [vi("y", [2])], opset=99)
    with pytest.raises(OnnxImportError, match="opset 99"):
        from_onnx(m)
    m = model([helper.make_node("Identity", ["x"], ["y"])], [vi("x", [2], TensorProto.STRING)],
              [vi("y", [2], TensorProto.STRING)])  # fmt: skip
    with pytest.raises(OnnxImportError, match="STRING has no kiln dtype"):
        from_onnx(m)


def test_old_softmax_semantics_are_kept() -> None:
    m = model(
        [helper.make_node("Softmax", ["x"], ["y"])], [vi("x", [2, 3, 4])], [vi("y", [2, 3, 4])], opset=11
    )
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    flat = x.reshape(2, 12)
    e = np.exp(flat - flat.max(1, keepdims=True))
    np.testing.assert_allclose(
        kiln.compile(from_onnx(m))(x), (e / e.sum(1, keepdims=True)).reshape(x.shape), rtol=1e-6
    )


def test_cli_show_and_run_onnx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kiln.cli import main

    assert main(["show", str(FIXTURES / "llama.onnx")]) == 0
    out = capsys.readouterr().out
    assert "graph @" in out and "MFLOP" in out and "// matmul" in out and "parameters" in out
    io = np.load(FIXTURES / "llama_io.npz")
    np.savez(tmp_path / "in.npz", input_ids=io["input_ids"])
    assert main(["run", str(FIXTURES / "llama.onnx"), "--inputs", str(tmp_path / "in.npz"), "-o",
                 str(tmp_path / "o.npz")]) == 0  # fmt: skip
    np.testing.assert_allclose(np.load(tmp_path / "o.npz")["logits"], io["out_logits"], rtol=1e-4, atol=1e-5)
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    assert main(["show", str(tmp_path / "bad.onnx")]) == 1
    assert "not a readable ONNX model" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_round_trip_onnx_kiln_onnx_onnxruntime(name: str, tmp_path: Path) -> None:
    """ONNX -> kiln -> ONNX -> onnxruntime reproduces the fixture's onnxruntime outputs."""
    import onnxruntime as ort

    io = np.load(FIXTURES / f"{name}_io.npz")
    g = from_onnx(FIXTURES / f"{name}.onnx")
    kiln.to_onnx(g, tmp_path / f"{name}.onnx", external_data=True)
    sess = ort.InferenceSession(str(tmp_path / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = sess.run(["logits"], {"input_ids": io["input_ids"]})
    np.testing.assert_allclose(logits, io["out_logits"], rtol=1e-4, atol=1e-5)
    again = from_onnx(tmp_path / f"{name}.onnx")  # and back into kiln once more
    np.testing.assert_allclose(kiln.compile(again)(io["input_ids"]), io["out_logits"], rtol=1e-4, atol=1e-5)
