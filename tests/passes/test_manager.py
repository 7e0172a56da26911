"""Pipeline parsing, the pass manager (timings, IR dumps, verification, copying) and
``infer-shapes{bind=...}``."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
import pytest

from kiln.ir.builder import GraphBuilder
from kiln.ir.core import Graph
from kiln.ir.dtypes import f32
from kiln.ir.errors import KilnError, PipelineError, SignatureError, VerifyError
from kiln.ir.interpret import interpret
from kiln.ir.parser import parse
from kiln.ir.registry import Context
from kiln.ir.types import TensorType
from kiln.passes.base import Pass
from kiln.passes.canonicalize import Canonicalize
from kiln.passes.infer_shapes import InferShapes, Verify
from kiln.passes.manager import DEFAULT_PIPELINE, PassManager, builtin_passes, parse_pipeline
from kiln.passes.simplify import CSE, DCE, ConstantFold

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Knobs(Pass):
    """A do-nothing pass with one option of each type the pipeline parser converts."""

    name = "knobs"

    flag: bool = False
    ratio: float = 1.0
    count: int = 0
    label: str = ""

    def run(self, graph: Graph, ctx: Context) -> Graph:
        return graph


@dataclass(frozen=True)
class BreakTypes(Pass):
    """Deliberately wrong: retypes the first computed result to a shape it cannot have."""

    name = "break-types"

    def run(self, graph: Graph, ctx: Context) -> Graph:
        node = next(n for n in graph.nodes if n.op != "constant")
        node.results[0].type = TensorType(f32, (99,))
        return graph


@dataclass(frozen=True)
class DropProducer(Pass):
    """Deliberately wrong: deletes the first computed node, leaving its users dangling."""

    name = "drop-producer"

    def run(self, graph: Graph, ctx: Context) -> Graph:
        first = next(i for i, n in enumerate(graph.nodes) if n.op != "constant")
        del graph.nodes[first]
        return graph


@dataclass(frozen=True)
class Fails(Pass):
    """Raises a KilnError from inside the pass."""

    name = "fails"

    def run(self, graph: Graph, ctx: Context) -> Graph:
        raise VerifyError("something the pass did not like")


def _sample_graph() -> Graph:
    """y = softmax((x + 0) * c), with a duplicate, a dead node and a foldable constant pair."""
    b = GraphBuilder("sample")
    x = b.input("x", TensorType(f32, (2, 3)))
    zero = b.constant(np.float32(0.0))
    c = b.op("add", b.constant(np.float32(1.0)), b.constant(np.float32(0.5)))  # folds to 1.5
    a = b.op("mul", b.op("add", x, zero), c)
    a2 = b.op("mul", b.op("add", x, zero), c)  # duplicate
    b.op("exp", a)  # dead
    b.output("y", b.op("softmax", b.op("add", a, a2), axis=1))
    return b.build()


def _sample_truth(x: np.ndarray) -> np.ndarray:
    z = 2 * (x * np.float32(1.5))
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


X = np.random.default_rng(7).uniform(-2, 2, size=(2, 3)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# parse_pipeline
# --------------------------------------------------------------------------------------------


def test_builtin_pass_names() -> None:
    assert {"verify", "infer-shapes", "canonicalize", "constant-fold", "cse", "dce", "unfuse"} <= set(
        builtin_passes()
    )


def test_parse_names_in_order() -> None:
    passes = parse_pipeline(DEFAULT_PIPELINE)
    assert [type(p) for p in passes] == [Canonicalize, ConstantFold, CSE, DCE]
    assert [p.name for p in passes] == ["canonicalize", "constant-fold", "cse", "dce"]
    assert passes == [Canonicalize(), ConstantFold(), CSE(), DCE()]


def test_parse_whitespace_repeats_and_empty() -> None:
    assert parse_pipeline("  cse ,dce,  cse ") == [CSE(), DCE(), CSE()]
    assert parse_pipeline("") == []
    assert parse_pipeline("verify") == [Verify()]


def test_parse_typed_option_values() -> None:
    (cf,) = parse_pipeline("constant-fold{max_elements=10}")
    assert cf == ConstantFold(max_elements=10)
    assert type(cf.max_elements) is int  # type: ignore[attr-defined]
    (cf,) = parse_pipeline("constant-fold{ max_elements = -3 }")
    assert cf.max_elements == -3  # type: ignore[attr-defined]
    (canon,) = parse_pipeline("canonicalize{max_iters=2}")
    assert canon == Canonicalize(max_iters=2)


def test_parse_quoted_string_options() -> None:
    (inf,) = parse_pipeline('infer-shapes{bind="seq=8 batch=2"}')
    assert inf == InferShapes(bind="seq=8 batch=2")
    inf, cse = parse_pipeline('infer-shapes{bind="seq=8,batch=2"},cse')  # a comma inside quotes
    assert cse == CSE()
    assert inf == InferShapes(bind="seq=8,batch=2")
    (inf,) = parse_pipeline("infer-shapes{bind=seq=8}")  # unquoted, no separators
    assert inf == InferShapes(bind="seq=8")


def test_parse_every_option_type_with_a_custom_registry() -> None:
    reg: dict[str, type[Pass]] = {"knobs": Knobs}
    (k,) = parse_pipeline('knobs{flag=true, ratio=0.25, count=-7, label="a, b{c}"}', passes=reg)
    assert k == Knobs(flag=True, ratio=0.25, count=-7, label="a, b{c}")
    assert (type(k.flag), type(k.ratio), type(k.count), type(k.label)) == (bool, float, int, str)  # type: ignore[attr-defined]
    assert parse_pipeline("knobs{flag=1}", passes=reg) == [Knobs(flag=True)]
    assert parse_pipeline("knobs{flag=false}", passes=reg) == [Knobs(flag=False)]
    assert parse_pipeline("knobs{flag=0,count=5}", passes=reg) == [Knobs(flag=False, count=5)]
    assert parse_pipeline("knobs", passes=reg) == [Knobs()]
    with pytest.raises(PipelineError, match="unknown pass 'cse'"):
        parse_pipeline("cse", passes=reg)


@pytest.mark.parametrize(
    "p",
    [
        ConstantFold(max_elements=10),
        Canonicalize(max_iters=3),
        InferShapes(bind="seq=8 batch=2"),
        InferShapes(bind="seq=8"),
        CSE(),
        Knobs(flag=True, ratio=0.5, count=2, label="x y"),
        Knobs(label="a{b}, c=d"),
    ],
)
def test_spec_round_trips(p: Pass) -> None:
    reg = {**builtin_passes(), "knobs": Knobs}
    assert parse_pipeline(p.spec(), passes=reg) == [p]


def test_unknown_pass_lists_the_known_ones() -> None:
    with pytest.raises(PipelineError) as e:
        parse_pipeline("canonicalize,frobnicate,dce")
    msg = str(e.value)
    assert "unknown pass 'frobnicate'" in msg
    for name in builtin_passes():
        assert name in msg


def test_unknown_option_lists_the_options() -> None:
    with pytest.raises(PipelineError) as e:
        parse_pipeline("constant-fold{max_element=10}")
    assert "no option 'max_element'" in str(e.value)
    assert "max_elements" in str(e.value)
    with pytest.raises(PipelineError, match=r"pass 'cse' has no option 'depth'; options: none"):
        parse_pipeline("cse{depth=2}")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("constant-fold{max_elements=ten}", "max_elements=ten"),
        ("constant-fold{max_elements=1.5}", "max_elements=1.5"),
        ("constant-fold{max_elements=}", "max_elements="),
        ("canonicalize{max_iters=2x}", "max_iters=2x"),
        ("knobs{flag=maybe}", "expected true or false"),
        ("knobs{ratio=fast}", "ratio=fast"),
    ],
)
def test_bad_option_values(text: str, fragment: str) -> None:
    with pytest.raises(PipelineError) as e:
        parse_pipeline(text, passes={**builtin_passes(), "knobs": Knobs})
    assert fragment in str(e.value)
    assert text.split("{")[0] in str(e.value)  # names the pass


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("cse,,dce", "character 5"),
        (",cse", "character 1"),
        ("cse dce", "character 1"),
        ("cse{", "character 1"),
        ("cse}", "character 1"),
        ("cse,dce{max=1", "character 5"),
        ("{max_elements=1}", "character 1"),
        ("constant-fold{max_elements}", "bad options for pass 'constant-fold'"),
        ("constant-fold{=3}", "bad options for pass 'constant-fold'"),
        ("cse;dce", "character 1"),
        ('infer-shapes{bind="seq=8}', "character 1"),
    ],
)
def test_malformed_pipelines(text: str, fragment: str) -> None:
    with pytest.raises(PipelineError) as e:
        parse_pipeline(text)
    assert fragment in str(e.value)


def test_pipeline_errors_are_kiln_errors() -> None:
    assert issubclass(PipelineError, KilnError)


# --------------------------------------------------------------------------------------------
# PassManager
# --------------------------------------------------------------------------------------------


def test_run_gives_the_reference_results() -> None:
    g = _sample_graph()
    out = PassManager.parse(DEFAULT_PIPELINE, verify_each=True).run(g)
    assert out.op_counts() == {"constant": 1, "mul": 1, "add": 1, "softmax": 1}, out.as_text()
    np.testing.assert_allclose(interpret(out, {"x": X})["y"], _sample_truth(X), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(interpret(g, {"x": X})["y"], _sample_truth(X), rtol=1e-5, atol=1e-7)


def test_timings_one_entry_per_pass() -> None:
    pm = PassManager.parse("canonicalize,constant-fold{max_elements=8},cse,dce,verify")
    pm.run(_sample_graph())
    names = [name for name, _ in pm.timings]
    assert names == ["canonicalize", "constant-fold{max_elements=8}", "cse", "dce", "verify"]
    assert all(isinstance(t, float) and t >= 0 for _, t in pm.timings)
    report = pm.timing_report()
    lines = report.splitlines()
    assert len(lines) == 1 + 5 + 1  # header, one line per pass, total
    for name, line in zip(names, lines[1:-1], strict=True):
        assert line.startswith(name)
    assert lines[-1].startswith("total")
    total_ms = float(lines[-1].split()[-1])
    assert total_ms == pytest.approx(sum(t for _, t in pm.timings) * 1e3, abs=2e-3)
    pm.run(_sample_graph())  # a second run starts afresh
    assert len(pm.timings) == 5


def test_print_after_one_pass() -> None:
    out = io.StringIO()
    pm = PassManager.parse(DEFAULT_PIPELINE, print_after=frozenset({"cse"}), out=out)
    result = pm.run(_sample_graph())
    text = out.getvalue()
    assert re.findall(r"// ----- IR after (\S+) -----", text) == ["cse"]
    # CSE ends with DCE, so the IR after cse is already the final IR
    assert text.split("-----\n", 1)[1] == result.as_text()
    assert "graph @sample" in text


def test_print_after_a_set_and_all() -> None:
    out = io.StringIO()
    PassManager.parse(DEFAULT_PIPELINE, print_after={"canonicalize", "dce"}, out=out).run(_sample_graph())  # type: ignore[arg-type]
    assert re.findall(r"IR after (\S+) -----", out.getvalue()) == ["canonicalize", "dce"]
    out = io.StringIO()
    PassManager.parse(DEFAULT_PIPELINE, print_after_all=True, out=out).run(_sample_graph())
    headers = re.findall(r"IR after (\S+) -----", out.getvalue())
    assert headers == ["canonicalize", "constant-fold", "cse", "dce"]
    dumps = [d.split("-----\n", 1)[1] for d in out.getvalue().split("// ----- ")[1:]]
    assert len(dumps) == 4
    # every dump is valid IR text that computes the same function
    for d in dumps:
        np.testing.assert_allclose(interpret(parse(d), {"x": X})["y"], _sample_truth(X), rtol=1e-5, atol=1e-7)
    # canonicalize dropped x + 0 but folds nothing; constant-fold then folded 1 + 0.5 to 1.5
    after_canon, after_fold = parse(dumps[0]), parse(dumps[1])
    assert after_canon.op_counts()["add"] == 2 and "1.5" not in dumps[0]
    assert after_fold.op_counts()["add"] == 1 and "dense<1.5>" in dumps[1]


def test_print_after_unknown_pass_is_an_error() -> None:
    out = io.StringIO()
    with pytest.raises(PipelineError) as e:
        PassManager.parse("canonicalize,dce", print_after=frozenset({"cse"}), out=out).run(_sample_graph())
    assert "cse" in str(e.value)
    assert out.getvalue() == ""
    with pytest.raises(PipelineError, match="frobnicate"):
        PassManager.parse("cse", print_after=frozenset({"frobnicate"})).run(_sample_graph())


def test_verify_each_catches_a_broken_pass() -> None:
    g = _sample_graph()
    with pytest.raises(PipelineError) as e:
        PassManager([BreakTypes()], verify_each=True).run(g)
    msg = str(e.value)
    assert "break-types" in msg and "invalid IR" in msg
    assert "f32[99]" in msg  # says what is wrong
    # without verification the broken graph goes through unnoticed
    broken = PassManager([BreakTypes()]).run(g)
    with pytest.raises(VerifyError):
        broken.verify()
    # and the input graph is untouched either way
    g.verify()
    np.testing.assert_allclose(interpret(g, {"x": X})["y"], _sample_truth(X), rtol=1e-5, atol=1e-7)


def test_verify_each_names_the_pass_that_broke_the_ir() -> None:
    pm = PassManager([Canonicalize(), DropProducer(), DCE()], verify_each=True)
    with pytest.raises(PipelineError) as e:
        pm.run(_sample_graph())
    assert "'drop-producer'" in str(e.value)
    assert "never defined" in str(e.value)
    assert [name for name, _ in pm.timings] == ["canonicalize", "drop-producer"]


def test_verify_pass_and_infer_shapes_repair() -> None:
    with pytest.raises(PipelineError, match="pass 'verify' failed"):
        PassManager([BreakTypes(), Verify()]).run(_sample_graph())
    # infer-shapes recomputes every result type from the operands, undoing the damage
    fixed = PassManager([BreakTypes(), InferShapes(), Verify()], verify_each=False).run(_sample_graph())
    fixed.verify()
    np.testing.assert_allclose(interpret(fixed, {"x": X})["y"], _sample_truth(X), rtol=1e-5, atol=1e-7)


def test_a_failing_pass_is_reported_by_name() -> None:
    with pytest.raises(PipelineError, match=r"pass 'fails' failed: something the pass did not like"):
        PassManager([CSE(), Fails()]).run(_sample_graph())


def test_run_does_not_mutate_its_input() -> None:
    g = _sample_graph()
    key, text = g.structural_key(), g.as_text()
    consts = {k: v.copy() for k, v in g.constants.items()}
    types = [(v, v.type) for n in g.nodes for v in n.results]
    out = PassManager.parse(DEFAULT_PIPELINE + ",infer-shapes", verify_each=True).run(g)
    assert out is not g
    assert g.structural_key() == key
    assert g.as_text() == text
    assert g.constants.keys() == consts.keys()
    for k, v in consts.items():
        np.testing.assert_array_equal(g.constants[k], v)
    assert all(v.type == t for v, t in types)
    assert not ({id(n) for n in out.nodes} & {id(n) for n in g.nodes})
    assert not ({id(v) for v in out.inputs} & {id(v) for v in g.inputs})
    np.testing.assert_allclose(interpret(g, {"x": X})["y"], _sample_truth(X), rtol=1e-5, atol=1e-7)


def test_an_empty_pipeline_returns_an_equal_copy() -> None:
    g = _sample_graph()
    out = PassManager.parse("").run(g)
    assert out is not g
    assert out == g


# --------------------------------------------------------------------------------------------
# infer-shapes with bind
# --------------------------------------------------------------------------------------------


def _symbolic_graph() -> Graph:
    b = GraphBuilder("sym")
    x = b.input("x", TensorType(f32, ("seq", 4)))
    w = b.constant(np.arange(4, dtype=np.float32) / 4, name="w")
    r = b.op("reshape", b.op("mul", x, w), shape=("seq", 2, 2))
    s = b.op("softmax", r, axis=2)
    t = b.op("transpose", s, perm=(1, 0, 2))
    b.output("y", b.op("reduce_sum", t, axes=(2,), keepdims=True))
    return b.build()


def _symbolic_truth(x: np.ndarray) -> np.ndarray:
    r = (x * (np.arange(4, dtype=np.float32) / 4)).reshape(-1, 2, 2)
    e = np.exp(r - r.max(axis=2, keepdims=True))
    s = e / e.sum(axis=2, keepdims=True)
    return s.transpose(1, 0, 2).sum(axis=2, keepdims=True)


def test_bind_makes_the_graph_static() -> None:
    g = _symbolic_graph()
    assert not g.inputs[0].tensor_type.is_static
    out = PassManager.parse('infer-shapes{bind="seq=8"}', verify_each=True).run(g)
    assert out.inputs[0].type == TensorType(f32, (8, 4))
    for n in out.nodes:
        for r in n.results:
            assert r.tensor_type.is_static, n.describe()
    reshape = next(n for n in out.nodes if n.op == "reshape")
    assert reshape.attrs.shape == (8, 2, 2)  # type: ignore[attr-defined]
    assert dict(out.outputs)["y"].type == TensorType(f32, (2, 8, 1))
    assert "seq" not in out.as_text()
    x = np.random.default_rng(1).uniform(-2, 2, size=(8, 4)).astype(np.float32)
    np.testing.assert_allclose(interpret(out, {"x": x})["y"], _symbolic_truth(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(SignatureError):  # the bound graph takes only seq = 8
        interpret(out, {"x": x[:5]})
    # the symbolic input graph is unchanged and still takes any seq
    assert g.inputs[0].type == TensorType(f32, ("seq", 4))
    np.testing.assert_allclose(interpret(g, {"x": x[:5]})["y"], _symbolic_truth(x[:5]), rtol=1e-5, atol=1e-6)


def test_bind_several_dims_then_optimise() -> None:
    b = GraphBuilder("sym2")
    x = b.input("x", TensorType(f32, ("batch", "seq", 4)))
    y = b.input("y", TensorType(f32, ("seq", 4)))
    s = b.op("add", x, b.op("neg", b.op("neg", y)))
    r = b.op("reshape", s, shape=("batch", "seq", 2, 2))
    b.output("z", b.op("reshape", r, shape=("batch", "seq", 4)))
    g = b.build()
    out = PassManager.parse('infer-shapes{bind="seq=3, batch=2"},' + DEFAULT_PIPELINE, verify_each=True).run(
        g
    )
    assert [v.type for v in out.inputs] == [TensorType(f32, (2, 3, 4)), TensorType(f32, (3, 4))]
    assert out.op_counts() == {"add": 1}, out.as_text()
    rng = np.random.default_rng(3)
    xv = rng.standard_normal((2, 3, 4)).astype(np.float32)
    yv = rng.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(interpret(out, {"x": xv, "y": yv})["z"], xv + yv)


def test_bind_of_an_unused_name_changes_nothing() -> None:
    g = _symbolic_graph()
    out = PassManager.parse('infer-shapes{bind="batch=2"}', verify_each=True).run(g)
    assert out == g


@pytest.mark.parametrize("bind", ["seq", "seq=", "=8", "seq=x", "seq=-1", "seq=8.5", "seq=²", "seq=٣"])
def test_bad_binding_text_is_a_pipeline_error(bind: str) -> None:
    pm = PassManager.parse(f'infer-shapes{{bind="{bind}"}}')
    with pytest.raises(PipelineError) as e:
        pm.run(_symbolic_graph())
    assert "bad binding" in str(e.value)
    assert "infer-shapes" in str(e.value)


def test_binding_that_contradicts_the_graph_is_a_pipeline_error() -> None:
    """topk's k <= dim can only be checked once the dim is bound."""
    b = GraphBuilder()
    x = b.input("x", TensorType(f32, ("seq",)))
    vals, _ = b.op_values("topk", x, k=5, axis=0)
    b.output("v", vals)
    g = b.build()
    ok = PassManager.parse('infer-shapes{bind="seq=8"}', verify_each=True).run(g)
    assert dict(ok.outputs)["v"].type == TensorType(f32, (5,))
    xv = np.random.default_rng(5).permutation(8).astype(np.float32)
    np.testing.assert_array_equal(interpret(ok, {"x": xv})["v"], np.sort(xv)[::-1][:5])
    with pytest.raises(PipelineError) as e:
        PassManager.parse('infer-shapes{bind="seq=3"}').run(g)
    assert "infer-shapes" in str(e.value) and "topk" in str(e.value)
