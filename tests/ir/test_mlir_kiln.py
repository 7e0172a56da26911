"""MLIR export of the row ops, fused groups, attention and the quantized ops (ir/mlir/lower_rows.py,
ir/mlir/lower_kiln.py), and the ``kiln`` dialect.

Every graph's module verifies; where the mlir-cpu target is built, it runs to the reference
backend's outputs (integers exact, floats within tests/golden TOLERANCES). The ``kiln`` dialect form
(``lower_kiln=False``) verifies with the dialect loaded from IRDL and round-trips through text.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kiln_testing.examples import load_example
from kiln_testing.mlir import matches_reference, mlir_cpu_backend, one_op, roundtrip
from kiln_testing.op_cases_structural import structural_cases

import kiln
from kiln.ir import dtypes as kd
from kiln.ir.builder import GraphBuilder
from kiln.ir.core import Graph
from kiln.ir.dtypes import Layout, QuantType, Scheme
from kiln.ir.mlir import MlirError, export, new_context, parse_module
from kiln.ir.mlir.lower_kiln import kiln_dialect_text
from kiln.ir.ops.quant import Act
from kiln.ir.quant import quantize
from kiln.ir.types import TensorType

ROOT = Path(__file__).resolve().parents[2]
OPS = {"argmax", "argmin", "cumsum", "softmax", "log_softmax", "layer_norm", "rms_norm", "fused", "attention"}
CASES = [c for c in structural_cases() if c.op in OPS]
RNG = np.random.default_rng(3)


@pytest.fixture(scope="module")
def mlir_cpu() -> Any:
    return mlir_cpu_backend()


# -- one-op graphs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_row_ops_export_and_verify(case: Any) -> None:
    g, _ = one_op(case.op, *case.args, **case.attrs)
    roundtrip(export(g).as_text())


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_row_ops_match_reference_on_mlir_cpu(mlir_cpu: Any, case: Any) -> None:
    g, feeds = one_op(case.op, *case.args, **case.attrs)
    matches_reference(mlir_cpu, g, feeds, case.id)


def test_argmax_nan_and_ties_follow_numpy(mlir_cpu: Any) -> None:
    x = np.array([[1, np.nan, 3, np.nan], [-np.inf] * 4, [np.inf, 2, np.inf, 0], [5, 5, -1, -1]], np.float32)
    for op, last, axis in itertools.product(("argmax", "argmin"), (False, True), (0, 1)):
        g, feeds = one_op(op, x, axis=axis, select_last=last)
        matches_reference(mlir_cpu, g, feeds, f"{op} last={last} axis={axis}")


def test_long_cumsum_is_a_loop_over_the_axis() -> None:
    """Axes beyond TRIANGLE_MAX are an scf.for (linear), short ones one triangular generic."""
    long_, _ = one_op("cumsum", RNG.standard_normal((3, 100)).astype(np.float32), axis=1, exclusive=True)
    short, _ = one_op("cumsum", RNG.standard_normal((3, 10)).astype(np.float32), axis=1, reverse=True)
    assert "scf.for" in roundtrip(export(long_).as_text())
    assert "scf.for" not in roundtrip(export(short).as_text())


# -- quantized ops ---------------------------------------------------------------------------------
def qformats() -> list[tuple[int, Scheme, Layout, str]]:
    return [
        (bits, scheme, layout, act)
        for bits, scheme, layout, act in itertools.product(
            range(1, 9), Scheme, Layout, [a.value for a in Act]
        )
        if not (bits == 1 and scheme == Scheme.SYM)
    ]


def qgraph(bits: int, scheme: Scheme, layout: Layout, act: str) -> tuple[Graph, dict[str, np.ndarray]]:
    """qmatmul on f32[2,3,64] and qgather of 5 rows, one quantized [64, 6] weight."""
    group = 32 if bits % 2 else 0  # per-group and per-channel scales
    q = QuantType(bits, scheme, group, kd.f16 if bits != 5 else kd.f32, layout)
    qw = quantize(RNG.standard_normal((64, 6)).astype(np.float32), q, clip_search=2)
    b = GraphBuilder("q")
    x = b.input("x", TensorType(kd.f32, (2, 3, 64)))
    idx = b.input("i", TensorType(kd.i32, (5,)))
    b.output("y", b.op("qmatmul", x, *b.quantized(qw, "w"), act=act))
    b.output("rows", b.op("qgather", *b.quantized(qw, "emb"), idx))
    feeds = {
        "x": RNG.standard_normal((2, 3, 64)).astype(np.float32),
        "i": np.array([0, 5, -1, 3, -6], np.int32),
    }
    return b.build(), feeds


QFORMATS = qformats()
QIDS = [f"{b}bit-{s}-{lay}-{a}" for b, s, lay, a in QFORMATS]


@pytest.mark.parametrize(("bits", "scheme", "layout", "act"), QFORMATS, ids=QIDS)
def test_quantized_ops_export_in_linalg_and_in_the_kiln_dialect(
    bits: int, scheme: Scheme, layout: Layout, act: str
) -> None:
    g, _ = qgraph(bits, scheme, layout, act)
    text = export(g).as_text()
    assert "kiln." not in text and "tensor.extract" in text  # codes unpacked inside linalg
    dialect = roundtrip(g.to_mlir(lower_kiln=False).as_text())
    assert '"kiln.qmatmul"' in dialect and f"bits = {bits} : i64" in dialect
    assert (
        f'act = "{act}"' in dialect
        and f'layout = "{layout}"' in dialect
        and f'scheme = "{scheme}"' in dialect
    )


# every width, each scheme, layout and activation kind at least twice (a compile is ~0.3 s)
QRUNS = [f for i, f in enumerate(QFORMATS) if i % 5 == 0]


@pytest.mark.parametrize(
    ("bits", "scheme", "layout", "act"), QRUNS, ids=[f"{b}-{s}-{la}-{a}" for b, s, la, a in QRUNS]
)
def test_quantized_ops_match_reference_on_mlir_cpu(
    mlir_cpu: Any, bits: int, scheme: Scheme, layout: Layout, act: str
) -> None:
    g, feeds = qgraph(bits, scheme, layout, act)
    matches_reference(mlir_cpu, g, feeds, f"{bits}-bit {scheme} {layout} act={act}")


def test_qruns_cover_every_width_scheme_layout_and_act() -> None:
    assert {f[0] for f in QRUNS} == set(range(1, 9))
    assert all(
        len({f[i] for f in QRUNS}) == n for i, n in ((1, len(Scheme)), (2, len(Layout)), (3, len(Act)))
    )


def test_binary_activations_of_zero_and_nan_match_reference_on_mlir_cpu(mlir_cpu: Any) -> None:
    """act=binary: +0.0 and -0.0 binarize to +alpha (a sign of 0 or -1 would move y far past the
    tolerance), and a NaN makes its whole row NaN, as binarize_rows says."""
    g, feeds = qgraph(4, Scheme.SYM, Layout.PACKED, "binary")
    x = feeds["x"].copy()
    x[0, 0, ::4], x[0, 0, 1::4] = 0.0, -0.0
    x[1, 2, 7] = np.nan
    matches_reference(mlir_cpu, g, {**feeds, "x": x}, "act=binary zeros and NaN")


# -- fused groups and attention --------------------------------------------------------------------
def fused_graph() -> Graph:
    b = GraphBuilder("f")
    x = b.input("x", TensorType(kd.f32, (4, 16)))
    y = b.input("y", TensorType(kd.f32, (16,)))
    s = b.input("s", TensorType(kd.f32, (4, 1)))
    two = b.constant(np.array(2.0, np.float32), "two")
    h = b.op("mul", b.op("gelu", b.op("add", x, y)), two)
    m = b.op(
        "relu",
        b.op(
            "add",
            b.op(
                "matmul", b.op("sub", h, s), b.constant(RNG.standard_normal((16, 16)).astype(np.float32), "w")
            ),
            y,
        ),
    )
    ln = b.op(
        "layer_norm",
        m,
        b.constant(np.ones(16, np.float32), "lw"),
        b.constant(np.zeros(16, np.float32), "lb"),
        axis=1,
    )
    b.output("out", b.op("softmax", b.op("mul", ln, two), axis=1))
    b.output("h", h)
    return kiln.PassManager.parse("fuse").run(b.build())


def test_fused_groups_export_one_generic_per_elementwise_group(mlir_cpu: Any) -> None:
    g = fused_graph()
    kinds = sorted(n.attrs.kind for n in g.nodes if n.op == "fused")  # type: ignore[attr-defined]
    assert kinds == ["elementwise", "matmul"]
    e = export(g)
    roundtrip(e.as_text())
    ends = [ln for ln in e.text.splitlines() if ln.strip().startswith("} ->") and 'loc("fused' in ln]
    assert len(ends) == 1, "the elementwise group is one generic"
    text = e.text
    assert "linalg.matmul" in text and 'loc("layer_norm' in text  # the matmul group inline, op by op
    feeds = {
        "x": RNG.standard_normal((4, 16)).astype(np.float32),
        "y": RNG.standard_normal(16).astype(np.float32),
        "s": RNG.standard_normal((4, 1)).astype(np.float32),
    }
    matches_reference(mlir_cpu, g, feeds, "fused")


def gpt_block(pipeline: str) -> tuple[Graph, dict[str, np.ndarray]]:
    ex = load_example("gpt_block")
    x = np.random.default_rng(7).standard_normal((8, 32)).astype(np.float32)
    g = ex.make_block(ex.init_weights(32), 2).lower(x).graph
    return kiln.PassManager.parse(pipeline).run(g), {"x": x}


def test_gpt_block_attention_exports_and_matches_reference(mlir_cpu: Any) -> None:
    g, feeds = gpt_block("canonicalize,constant-fold,cse,fuse-attention,canonicalize,cse,dce")
    (att,) = [n for n in g.nodes if n.op == "attention"]
    assert att.attrs.causal  # type: ignore[attr-defined]
    text = roundtrip(export(g).as_text())
    assert "linalg.batch_matmul" in text and "linalg.transpose" in text and "linalg.index" in text
    matches_reference(mlir_cpu, g, feeds, "gpt block")


def test_gpt_block_fused_and_f16_attention_match_reference(mlir_cpu: Any) -> None:
    g, feeds = gpt_block("canonicalize,constant-fold,cse,fuse-attention,canonicalize,cse,dce,fuse")
    assert g.op_counts().get("fused", 0) >= 3
    matches_reference(mlir_cpu, g, feeds, "fused gpt block")
    q, k, v = (RNG.standard_normal((2, 3, n, 8)).astype(np.float16) for n in (4, 6, 6))
    bias = RNG.standard_normal((1, 3, 1, 6)).astype(np.float16)
    g, feeds = one_op("attention", q, k, v, bias, scale=0.3, causal=True)  # Sq < Sk: end-aligned
    matches_reference(mlir_cpu, g, feeds, "f16 attention")


def test_gpt2_onnx_exports_and_verifies() -> None:
    from kiln.frontends.onnx import from_onnx
    from kiln.ir.signature import bind_inputs

    fixtures = ROOT / "tests" / "fixtures" / "models"
    g = from_onnx(fixtures / "gpt2.onnx")
    io = np.load(fixtures / "gpt2_io.npz")
    inputs = {k: io[k] for k in io.files if not k.startswith("out_")}
    g = kiln.PassManager.parse("canonicalize,constant-fold,cse,fuse-attention,canonicalize,cse,dce").run(g)
    assert g.op_counts().get("attention") == 2
    _, dims = bind_inputs(g, inputs)
    e = g.to_mlir(dims=dims)  # verified by export
    assert e.output_names == [n for n, _ in g.outputs] and "linalg.batch_matmul" in e.text


# -- the kiln dialect and bad input ----------------------------------------------------------------
def test_kiln_dialect_is_irdl_and_registers_its_ops_and_host_types() -> None:
    text = kiln_dialect_text()
    assert "irdl.dialect @kiln" in text and "irdl.operation @qmatmul" in text and "irdl.type @str" in text
    with new_context() as ctx:
        assert ctx.is_registered_operation("kiln.qmatmul") and ctx.is_registered_operation("kiln.qgather")
        parse_module(text, ctx)  # the IRDL module itself verifies
    b = GraphBuilder("h")
    b.input("prompt", kiln.ir.types.HostType("str"))
    x = b.input("x", TensorType(kd.f32, (2, 2)))
    b.output("y", b.op("softmax", x, axis=1))
    assert "!kiln.str" in roundtrip(export(b.build()).as_text())


def kiln_text() -> str:
    g, _ = qgraph(3, Scheme.ASYM, Layout.PACKED, "int8")
    return g.to_mlir(lower_kiln=False).text


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ('scheme = "asym"', 'scheme = "zigzag"', r"does not satisfy the constraint \(from kiln op qmatmul %"),
        (
            "bits = 3 : i64",
            'bits = "three"',
            r"expected base attribute 'builtin.integer'.*\(from kiln op qmatmul %",
        ),
        ('act = "int8", ', "", r"attribute \"act\" is expected but not provided \(from kiln op qmatmul %"),
    ],
)
def test_verifier_diagnostics_name_the_kiln_op(old: str, new: str, match: str) -> None:
    text = kiln_text()
    assert old in text
    with new_context() as ctx, pytest.raises(MlirError, match=match):
        parse_module(text.replace(old, new, 1), ctx)
