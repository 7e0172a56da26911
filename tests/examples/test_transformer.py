"""examples/transformer.py: kiln, NumPy, JAX and ONNX forms agree; the CPU benchmark runs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import kiln

ROOT = Path(__file__).resolve().parents[2]
SEQ, PAST = 8, 5


def _load() -> ModuleType:
    name = "example_transformer"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / "transformer.py")
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


tr = _load()
CFG = tr.Config(d_model=64, n_heads=4, d_ff=128, n_layers=2)


def _inputs(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    kv = (CFG.n_heads, PAST, CFG.head_dim)
    return {
        "x": rng.standard_normal((SEQ, CFG.d_model), dtype=np.float32),
        "x1": rng.standard_normal((1, CFG.d_model), dtype=np.float32),
        "past_k": rng.standard_normal(kv, dtype=np.float32),
        "past_v": rng.standard_normal(kv, dtype=np.float32),
    }


def _cases() -> dict[str, tuple[Callable[[], Any], Callable[[], Any], Callable[[], Any], list[str]]]:
    """name -> (kiln jitted, numpy fn, jax fn, input names)."""
    w, layers = tr.init_layer(CFG, 0), tr.init_layers(CFG, 10)
    return {
        "prefill": (
            lambda: tr.make_prefill_block(CFG, w),
            lambda: lambda x: tr.numpy_prefill_block(CFG, w, x),
            lambda: tr.jax_prefill_block(CFG, w),
            ["x"],
        ),
        "decode": (
            lambda: tr.make_decode_step(CFG, w),
            lambda: lambda x, k, v: tr.numpy_decode_step(CFG, w, x, k, v),
            lambda: tr.jax_decode_step(CFG, w),
            ["x1", "past_k", "past_v"],
        ),
        "body": (
            lambda: tr.make_body(CFG, layers),
            lambda: lambda x: tr.numpy_body(CFG, layers, x),
            lambda: tr.jax_body(CFG, layers),
            ["x"],
        ),
    }


CASES = _cases()


def _tuple(out: Any) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(o) for o in out) if isinstance(out, tuple | list) else (np.asarray(out),)


def _assert_all_close(got: Any, want: Any, rtol: float, atol: float) -> None:
    got, want = _tuple(got), _tuple(want)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == np.float32, (g.shape, g.dtype, w.shape)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


def test_config_and_weights() -> None:
    assert (tr.Config().d_model, tr.Config().n_heads, tr.Config().d_ff, tr.Config().n_layers) == (
        768,
        12,
        3072,
        12,
    )
    assert tr.Config().eps == 1e-5 and tr.Config().head_dim == 64
    w = tr.init_layer(CFG, 3)
    assert w["w_qkv"].shape == (64, 192) and w["b_qkv"].shape == (192,)
    assert w["w_fc"].shape == (64, 128) and w["w_proj"].shape == (128, 64)
    assert all(a.dtype == np.float32 for a in w.values())
    again = tr.init_layer(CFG, 3)
    assert all(np.array_equal(w[k], again[k]) for k in w)  # deterministic
    assert not np.array_equal(w["w_qkv"], tr.init_layer(CFG, 4)["w_qkv"])
    with pytest.raises(ValueError):
        tr.Config(d_model=10, n_heads=4)


@pytest.mark.parametrize("name", list(CASES))
def test_kiln_reference_matches_numpy(name: str) -> None:
    make_kiln, make_np, _, names = CASES[name]
    args = [_inputs()[n] for n in names]
    want = make_np()(*args)
    _assert_all_close(want, want, 0, 0)  # NumPy stays in float32
    jitted = make_kiln()
    _assert_all_close(jitted(*args), want, rtol=1e-4, atol=1e-5)
    ops = set(jitted.lower(*args).graph.op_counts())
    assert {"layer_norm", "softmax", "gelu", "matmul"} <= ops
    assert ("concat" in ops) == (name == "decode") and ("where" in ops) == (name != "decode")


@pytest.mark.parametrize("name", list(CASES))
def test_jax_matches_numpy(name: str) -> None:
    _, make_np, make_jax, names = CASES[name]
    args = [_inputs(1)[n] for n in names]
    _assert_all_close(make_jax()(*args), make_np()(*args), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_onnx_export_runs_in_onnxruntime(name: str, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    make_kiln, make_np, _, names = CASES[name]
    args = [_inputs(2)[n] for n in names]
    graph = make_kiln().lower(*args).graph
    kiln.to_onnx(graph, tmp_path / f"{name}.onnx")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(tmp_path / f"{name}.onnx"), so, providers=["CPUExecutionProvider"])
    got = sess.run(graph.output_names, dict(zip(graph.input_names, args, strict=True)))
    _assert_all_close(tuple(got), make_np()(*args), rtol=1e-4, atol=1e-5)


def test_decode_step_continues_prefill() -> None:
    """Decoding token S against the K/V of tokens 0..S-1 gives row S of prefill over S+1 tokens."""
    w = tr.init_layer(CFG, 0)
    x = np.random.default_rng(5).standard_normal((SEQ + 1, CFG.d_model), dtype=np.float32)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    qkv = ((x - mu) / np.sqrt(var + CFG.eps) * w["ln1_w"] + w["ln1_b"]) @ w["w_qkv"] + w["b_qkv"]
    _, k, v = (t.reshape(SEQ + 1, CFG.n_heads, CFG.head_dim).transpose(1, 0, 2) for t in np.split(qkv, 3, -1))
    full = tr.numpy_prefill_block(CFG, w, x)
    y, new_k, new_v = tr.make_decode_step(CFG, w)(x[SEQ:], k[:, :SEQ].copy(), v[:, :SEQ].copy())
    np.testing.assert_allclose(y, full[SEQ:], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new_k, k, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new_v, v, rtol=1e-4, atol=1e-5)


def test_import_has_no_heavy_side_effects() -> None:
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('t', {str(ROOT / 'examples' / 'transformer.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['t'] = m; spec.loader.exec_module(m)\n"
        "assert 'jax' not in sys.modules and 'onnxruntime' not in sys.modules\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


BENCH = ROOT / "benchmarks" / "transformer_cpu.py"


def test_benchmark_quick_runs() -> None:
    r = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for title in ("block prefill", "decode step", "body prefill"):
        assert title in r.stdout
    for system in ("numpy", "kiln reference", "jax", "onnxruntime"):
        assert system in r.stdout
    if "numba-cpu" not in [t.name for t in kiln.targets()]:
        assert "kiln numba-cpu   not available" in r.stdout
    assert "FAILED" not in r.stdout and "wrong result" not in r.stdout


def test_benchmark_compile_only_child(tmp_path: Path) -> None:
    """The fresh-process compile measurement (used for numba-cpu), exercised on the reference target."""
    cmd = [sys.executable, str(BENCH), "--compile-only", "decode", "--quick", "--target", "reference"]
    r = subprocess.run([*cmd, "--cache-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("KILN_COMPILE_RESULT "))
    report = json.loads(line.split(" ", 1)[1])
    assert report["total_s"] >= report["compile_s"] >= 0
    assert set(report) >= {"lower_s", "compile_s", "first_call_s", "total_s", "stats", "note"}
