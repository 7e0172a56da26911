"""The `kiln` command line: show, opt, run, passes, ops; one-line errors and exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kiln.cli import main

GRAPH = """\
graph @g(%x: f32[2,3]) -> (out: f32[2,3]) {
  %c = constant {ref="c"} dense<0.0> : f32[]
  %0 = add(%x, %c) : f32[2,3]
  %1 = neg(%0) : f32[2,3]
  %2 = neg(%1) : f32[2,3]
  %3 = softmax(%2) {axis=1} : f32[2,3]
  return out=%3
}
"""


@pytest.fixture
def kir(tmp_path: Path) -> Path:
    p = tmp_path / "g.kir"
    p.write_text(GRAPH)
    return p


def test_show_prints_and_verifies(kir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", str(kir), "--summary"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(GRAPH)
    assert "// neg" in out and "MFLOP" in out


def test_opt_runs_pipeline_with_dumps_and_timing(kir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["opt", str(kir), "-p", "canonicalize,dce", "--verify-each", "--timing",
                 "--print-ir-after", "canonicalize"]) == 0  # fmt: skip
    cap = capsys.readouterr()
    assert "neg" not in cap.out and "add" not in cap.out and "softmax(%x)" in cap.out
    assert "IR after canonicalize" in cap.err and "total" in cap.err


def test_opt_writes_output_that_parses(kir: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.kir"
    assert main(["opt", str(kir), "-p", "canonicalize", "-o", str(out)]) == 0
    assert main(["show", str(out)]) == 0


def test_run_matches_numpy(kir: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    assert main(["run", str(kir), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "out.npz")]) == 0
    got = np.load(tmp_path / "out.npz")["out"]
    e = np.exp(x - x.max(1, keepdims=True))
    np.testing.assert_allclose(got, e / e.sum(1, keepdims=True), rtol=1e-6)


def test_passes_and_ops_lists(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    for name in ("canonicalize", "constant-fold", "cse", "dce", "infer-shapes", "verify"):
        assert name in out
    assert "max_elements: int" in out
    assert "scheme: sym | asym | bipolar = sym" in out and "act: f32 | int8 | binary = f32" in out
    assert main(["ops"]) == 0
    out = capsys.readouterr().out
    assert "softmax" in out and "composite" in out and "primitive" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["show", "missing.kir"], "no such file"),
        (["opt", "{kir}", "-p", "canonicalise"], "unknown pass 'canonicalise'"),
        (["opt", "{kir}", "-p", "cse", "--print-ir-after", "dce"], "not in the pipeline"),
        (["run", "{kir}", "--inputs", "{bad_npz}"], "expected f32[2,3], got f32[3,3]"),
        (["run", "{kir}", "--inputs", "{not_npz}"], "cannot read inputs"),
        (["run", "{kir}", "--target", "tpu"], "unknown target 'tpu'"),
        (["show", "{typo}"], "typo.kir:3:8: unknown op 'ad'; did you mean 'add'?"),
    ],
)
def test_errors_are_one_line(
    argv: list[str], message: str, kir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.savez(tmp_path / "bad.npz", x=np.zeros((3, 3), np.float32))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    (tmp_path / "typo.kir").write_text(GRAPH.replace("add(", "ad("))
    paths = {"kir": kir, "bad_npz": tmp_path / "bad.npz", "not_npz": tmp_path / "junk.npz",
             "typo": tmp_path / "typo.kir"}  # fmt: skip
    assert main([a.format(**paths) for a in argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("kiln: error: ") and message in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_console_script_help_and_debug(kir: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "kiln.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "show" in r.stdout and "opt" in r.stdout
    r = subprocess.run([sys.executable, "-m", "kiln.cli", "--debug", "show", "nope.kir"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode != 0 and "Traceback" in r.stderr


SYMBOLIC = GRAPH.replace("f32[2,3]", "f32[n,3]")


def test_show_mlir_prints_a_module_that_parses(kir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kiln.ir.mlir import new_context, parse_module

    assert main(["show", str(kir), "--mlir"]) == 0
    out = capsys.readouterr().out
    assert "func.func @g(%arg0: tensor<2x3xf32>) -> tensor<2x3xf32>" in out and "linalg.generic" in out
    with new_context() as ctx:
        assert str(parse_module(out, ctx)) == out
    assert main(["show", str(kir), "--mlir", "--locs"]) == 0
    assert 'loc("softmax %3")' in capsys.readouterr().out


def test_show_mlir_binds_dims_and_keeps_the_kiln_dialect(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "s.kir"
    p.write_text(SYMBOLIC)
    assert main(["show", str(p), "--mlir", "--dim", "n=5"]) == 0
    assert "tensor<5x3xf32>" in capsys.readouterr().out
    assert main(["show", str(p), "--mlir"]) == 1
    assert "symbolic dim 'n' is not bound" in capsys.readouterr().err
    q = tmp_path / "q.kir"
    mlp = Path(__file__).parents[1] / "examples" / "ir" / "mlp.kir"
    assert main(["opt", str(mlp), "-p", "quantize{bits=4,group=8,min_size=0}", "-o", str(q)]) == 0
    capsys.readouterr()
    assert main(["show", str(q), "--mlir", "--kiln-dialect"]) == 0
    assert "kiln.qmatmul" in capsys.readouterr().out
    assert main(["show", str(q), "--mlir"]) == 0
    out = capsys.readouterr().out
    assert "kiln." not in out and "linalg.matmul" in out


def test_show_target_jax_prints_python_and_stablehlo(kir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", str(kir), "--target", "jax"]) == 0
    out = capsys.readouterr().out
    assert "def kernel(x" in out and "lib.softmax(" in out
    assert "StableHLO" in out and "stablehlo.exponential" in out


def test_show_ptx_without_a_gpu(kir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", str(kir), "--ptx", "--chip", "sm_80"]) == 0
    out = capsys.readouterr().out
    assert ".target sm_80" in out and ".entry" in out
    assert main(["show", str(kir), "--ptx", "--target", "jax"]) == 1
    assert "--ptx needs --target mlir-cuda" in capsys.readouterr().err


def test_show_target_mlir_cuda_prints_the_launch_plan(kir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", str(kir), "--target", "mlir-cuda"]) == 0  # no GPU needed
    out = capsys.readouterr().out
    assert "device buffers" in out and "//   launch " in out and ".entry" in out
