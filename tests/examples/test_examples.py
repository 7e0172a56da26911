"""The examples run end to end and match their independent NumPy implementations."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from kiln_testing.examples import load_example

import kiln

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_gpt_block_matches_numpy() -> None:
    ex = load_example("gpt_block")
    p = ex.init_weights(64)
    block = ex.make_block(p, heads=4)
    x = np.random.default_rng(3).standard_normal((16, 64)).astype(np.float32)
    np.testing.assert_allclose(block(x), ex.numpy_block(x, p, 4), rtol=1e-4, atol=1e-5)
    graph = block.lower(x).graph
    assert {"layer_norm", "softmax", "gelu", "matmul", "where"} <= set(graph.op_counts())
    # The text form of the traced block round-trips.
    again = kiln.parse(graph.as_text(), weights=graph.constants)
    assert again == graph


def test_gpt_block_script_runs() -> None:
    import subprocess

    r = subprocess.run([sys.executable, str(EXAMPLES / "gpt_block.py"), "--d", "32", "--heads", "2",
                        "--seq", "8"], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "max |kiln - numpy|" in r.stdout


def test_mlp_ir_file_runs() -> None:
    g = kiln.load(EXAMPLES / "ir" / "mlp.kir")
    x = np.load(EXAMPLES / "ir" / "mlp_inputs.npz")["x"]
    w1, b1, w2 = (g.constants[k] for k in ("w1", "b1", "w2"))
    h = x @ w1 + b1
    import scipy.special

    h = 0.5 * h * (1 + scipy.special.erf(h / np.sqrt(2)))
    logits = h @ w2
    e = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(kiln.compile(g)(x), e / e.sum(-1, keepdims=True), rtol=1e-5)
