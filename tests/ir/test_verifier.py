"""The verifier catches every broken invariant, naming the node; save/load keeps weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kiln
from kiln.ir.core import Graph, Node, Value
from kiln.ir.dtypes import DType, f32, i64
from kiln.ir.errors import BackendError, KilnError, VerifyError
from kiln.ir.ops import ReduceAttrs
from kiln.ir.types import HostType, TensorType


def small_graph() -> Graph:
    b = kiln.GraphBuilder("g")
    x = b.input("x", TensorType(f32, (2, 3)))
    y = b.op("exp", x)
    z = b.op("add", y, x)
    b.output("z", z)
    return b.build()


def test_valid_graph_verifies() -> None:
    small_graph().verify()


def test_cycle_is_reported() -> None:
    g = small_graph()
    exp_node, add_node = g.nodes
    exp_node.operands = (add_node.results[0],)  # exp now consumes add's result, add consumes exp's
    with pytest.raises(VerifyError, match="defined later \\(a cycle, or nodes out of order\\)"):
        g.verify()


def test_undefined_operand() -> None:
    g = small_graph()
    g.nodes[0].operands = (Value(TensorType(f32, (2, 3)), "ghost"),)
    with pytest.raises(VerifyError, match="never defined"):
        g.verify()


def test_result_type_mismatch_names_the_node() -> None:
    g = small_graph()
    g.nodes[1].results[0].type = TensorType(f32, (3, 2))
    with pytest.raises(VerifyError) as e:
        g.verify()
    assert "'add'" in str(e.value) and "f32[3,2]" in str(e.value) and "f32[2,3]" in str(e.value)


def test_bad_attributes() -> None:
    g = small_graph()
    g.nodes.append(
        Node("reduce_sum", g.nodes[0].results, ReduceAttrs(axes=(1, 0)), [Value(TensorType(f32, ()))])
    )
    with pytest.raises(VerifyError, match="sorted"):
        g.verify()
    with pytest.raises(kiln.ir.errors.AttributeError_, match="bad attributes"):
        kiln.GraphBuilder().op("softmax", small_graph().inputs[0], axes=1)


def test_not_ssa_and_duplicate_names() -> None:
    g = small_graph()
    g.nodes.append(Node("exp", g.inputs, g.nodes[0].attrs, g.nodes[0].results))
    with pytest.raises(VerifyError, match="defined twice"):
        g.verify()
    g = small_graph()
    g.outputs.append(("z", g.outputs[0][1]))
    with pytest.raises(VerifyError, match="duplicate output name"):
        g.verify()


def test_bad_types() -> None:
    with pytest.raises(VerifyError, match="integer width"):
        DType("i", 65).verify()
    with pytest.raises(VerifyError, match="negative dim"):
        TensorType(f32, (-1,)).verify()
    with pytest.raises(VerifyError, match="unknown host type"):
        HostType("video").verify()  # type: ignore[arg-type]


def test_constant_data_must_match_type() -> None:
    b = kiln.GraphBuilder("g")
    c = b.constant(np.arange(4, dtype=np.int64))
    b.output("c", c)
    g = b.build()
    g.constants[g.nodes[0].attrs.ref] = np.zeros(3, np.int64)  # type: ignore[attr-defined]
    with pytest.raises(VerifyError, match="holds int64\\[3\\] but is typed i64\\[4\\]"):
        g.verify()
    assert c.type == TensorType(i64, (4,))


def test_host_values_pass_through_the_reference_backend() -> None:
    b = kiln.GraphBuilder("agent")
    q = b.input("query", HostType("str"))
    b.output("echo", q)
    assert kiln.compile(b.build())("hello") == "hello"


def test_save_load_round_trip_keeps_weights(tmp_path: Path) -> None:
    w = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)

    @kiln.jit
    def f(x):
        return x @ w

    x = np.ones((2, 16), np.float32)
    g = f.lower(x).graph
    kiln.save(g, tmp_path / "f.kir")
    assert (tmp_path / "f.npz").exists()
    again = kiln.load(tmp_path / "f.kir")
    assert again == g
    np.testing.assert_allclose(kiln.compile(again)(x), x @ w, rtol=1e-6)


def test_missing_weights_are_reported_when_run(tmp_path: Path) -> None:
    w = np.ones((16, 4), np.float32)

    @kiln.jit
    def f(x):
        return x @ w

    g = f.lower(np.ones((1, 16), np.float32)).graph
    text_only = kiln.parse(g.as_text())  # large constants are referenced, not inlined
    with pytest.raises(BackendError, match="constant @w has no data"):
        kiln.compile(text_only, pipeline="")(np.ones((1, 16), np.float32))
    (tmp_path / "f.kir").write_text(g.as_text())
    (tmp_path / "f.npz").write_bytes(b"garbage")
    with pytest.raises(KilnError, match="cannot read weights"):
        kiln.load(tmp_path / "f.kir")
    with pytest.raises(KilnError, match="does not exist"):
        kiln.load(tmp_path / "f.kir", weights=tmp_path / "nope.npz")
