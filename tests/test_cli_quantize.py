"""`kiln quantize`: the report on the GPT-2 fixture, writing .kir and .onnx, and one-line errors.

Truths: the float model run by the reference interpreter, NumPy on the same outputs, and
onnxruntime on the exported model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kiln.cli import main
from kiln.frontends.onnx import from_onnx
from kiln.ir.interpret import interpret
from kiln.ir.io import load
from kiln.ir.quant import snr_db

FIXTURES = Path(__file__).parent / "fixtures" / "models"
GPT2 = str(FIXTURES / "gpt2.onnx")
DIMS = ["--dim", "batch=1", "--dim", "seq=8"]


def test_report_lists_every_layer_and_the_model_agreement(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quantize", GPT2, "--bits", "4", "--group", "32", "--report", *DIMS]) == 0
    out = capsys.readouterr().out
    layers = [ln for ln in out.splitlines() if "│ matmul" in ln]
    assert len(layers) == 9  # 4 per block x 2 blocks + the tied lm_head
    assert any("lm_head_weight_transpose" in ln for ln in layers)
    snrs = [float(ln.split("│")[-2]) for ln in layers]
    assert all(s > 18 for s in snrs), snrs  # 4-bit group 32 on Gaussian-like weights
    assert "whole model" in out and "top-1 agreement" in out
    (logits,) = [ln for ln in out.splitlines() if ln.startswith("│ logits")]
    cells = [c.strip() for c in logits.split("│")[1:-1]]
    assert float(cells[2]) > 10 and 0.0 <= float(cells[3]) <= 1.0


def test_quantized_kir_runs_and_stays_close(tmp_path: Path) -> None:
    out = tmp_path / "q.kir"
    assert main(["quantize", GPT2, "--bits", "8", "-o", str(out), *DIMS]) == 0
    q = load(out)
    assert q.op_counts().get("qmatmul") == 9 and q.op_counts().get("matmul") == 4  # QK^T, PV stay float
    ids = np.array([[1, 5, 9, 200, 3, 3, 0, 999]], np.int64)
    ref = interpret(from_onnx(GPT2, dims={"batch": 1, "seq": 8}), {"input_ids": ids})["logits"]
    got = interpret(q, {"input_ids": ids})["logits"]
    assert snr_db(ref, got) > 30


def test_quantized_onnx_runs_in_onnxruntime(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is a test dependency")
    out = tmp_path / "q.onnx"
    kir = tmp_path / "q.kir"
    assert main(["quantize", GPT2, "--bits", "4", "--group", "32", "-o", str(out), *DIMS]) == 0
    assert main(["quantize", GPT2, "--bits", "4", "--group", "32", "-o", str(kir), *DIMS]) == 0
    import onnx

    model = onnx.load(str(out))
    assert sum(n.op_type == "MatMulNBits" for n in model.graph.node) == 9
    ids = np.array([[7, 8, 9, 10, 11, 12, 13, 14]], np.int64)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = sess.run(["logits"], {"input_ids": ids})
    want = interpret(load(kir), {"input_ids": ids})["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bits", "9"], "1..8 bits"),
        (["--bits", "auto{size=3}"], "unknown auto option"),
        (["--scheme", "nf4"], "'nf4' is not a valid Scheme"),
        (["--group", "48"], "group 48 does not divide K=128"),
        (["--calibration", "/nonexistent.npz"], "cannot read it"),
    ],
)
def test_bad_options_are_one_line_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["quantize", GPT2, *args, *DIMS]) == 1
    err = capsys.readouterr().err
    assert err.startswith("kiln: error:") and message in err and err.count("\n") == 1


def test_symbolic_dims_must_be_bound_for_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kiln.ir.builder import GraphBuilder
    from kiln.ir.dtypes import f32
    from kiln.ir.io import save
    from kiln.ir.types import TensorType

    b = GraphBuilder("sym")
    x = b.input("x", TensorType(f32, ("n", 128)))
    b.output("y", b.op("matmul", x, b.constant(np.ones((128, 64), np.float32), "w")))
    save(b.build(), tmp_path / "sym.kir")
    assert main(["quantize", str(tmp_path / "sym.kir"), "--report"]) == 1
    assert "input 'x' has symbolic dims f32[n,128]: bind them with --dim" in capsys.readouterr().err
    assert main(["quantize", str(tmp_path / "sym.kir"), "--report", "--dim", "n=3"]) == 0
    assert "│ w " in capsys.readouterr().out
