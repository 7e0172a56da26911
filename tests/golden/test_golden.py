"""Golden outputs: every fixture model and example on every registered backend.

Each case is checked twice: the reference backend against an independent truth (onnxruntime's
outputs saved with the ONNX fixtures, or a hand-written NumPy model), and every CPU target in
``kiln.targets()`` against the reference backend. A new backend joins by registering its target
GPU targets run the same cases where a GPU and its driver are present; without one (the CI
machines) their launch plans and PTX are still built for every case, which checks all of the
lowering except the GPU's arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kiln_testing.examples import load_example as _example_module

import kiln
from kiln.frontends.onnx import from_onnx

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "models"

#: (rtol, atol) per output dtype: the one place golden tolerances are stated.
TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-9, 1e-12),
    "float32": (1e-4, 1e-5),
    "float16": (1e-2, 1e-3),
    "bfloat16": (3e-2, 1e-2),
}


def assert_close(got: Any, want: Any, what: str) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    if want.dtype.kind in "biu":
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    rtol, atol = TOLERANCES[str(want.dtype)]
    np.testing.assert_allclose(
        got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol, err_msg=what
    )


@dataclass(frozen=True)
class Golden:
    """A graph, its inputs, and the independent truth for its outputs (None: reference only)."""

    name: str
    load: Callable[[], tuple[kiln.Graph, dict[str, np.ndarray], dict[str, np.ndarray] | None]]


def _onnx_fixture(name: str) -> Golden:
    def load() -> tuple[kiln.Graph, dict[str, np.ndarray], dict[str, np.ndarray] | None]:
        io = np.load(FIXTURES / f"{name}_io.npz")
        inputs = {k: io[k] for k in io.files if not k.startswith("out_")}
        truth = {k[4:]: io[k] for k in io.files if k.startswith("out_")}
        return from_onnx(FIXTURES / f"{name}.onnx"), inputs, truth

    return Golden(f"onnx-{name}", load)


def _gpt_block() -> tuple[kiln.Graph, dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    ex = _example_module("gpt_block")
    p = ex.init_weights(64)
    x = np.random.default_rng(7).standard_normal((16, 64)).astype(np.float32)
    graph = ex.make_block(p, 4).lower(x).graph
    return graph, {"x": x}, {"out": ex.numpy_block(x, p, 4)}


def _mlp_kir() -> tuple[kiln.Graph, dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    io = np.load(ROOT / "examples" / "ir" / "mlp_inputs.npz")
    return kiln.load(ROOT / "examples" / "ir" / "mlp.kir"), {"x": io["x"]}, None


def _quantized(base: Golden, pipeline: str) -> Golden:
    """``base`` with quantized weights: every target runs the same quantized graph, held to the
    reference semantics of the formats (which tests/ir/test_quant.py checks by hand)."""

    def load() -> tuple[kiln.Graph, dict[str, np.ndarray], dict[str, np.ndarray] | None]:
        graph, inputs, _ = base.load()
        return kiln.PassManager.parse(pipeline).run(graph), inputs, None

    return Golden(f"{base.name}-{pipeline}", load)


GPT2 = _onnx_fixture("gpt2")
GOLDEN = [GPT2, _onnx_fixture("llama"), Golden("example-gpt-block", _gpt_block), Golden("example-mlp-kir", _mlp_kir),
          _quantized(GPT2, "quantize{bits=4,group=32,act=int8}"),
          _quantized(GPT2, "quantize{bits=3,group=64,scheme=asym,act=int8,embeddings=true}"),
          _quantized(GPT2, "quantize{bits=2,group=32,scheme=bipolar,act=int8},bitslice{layout=bitsliced}"),
          _quantized(GPT2, "quantize{bits=1,group=64,scheme=bipolar,act=binary},bitslice{layout=bitsliced}"),
          _quantized(GPT2, "quantize{bits=4,group=64,scheme=asym,act=binary}"),
          _quantized(Golden("example-gpt-block", _gpt_block), "quantize{bits=4,group=32}"),
          _quantized(_onnx_fixture("llama"), "quantize{bits=8,group=0,act=int8}")]  # fmt: skip
TARGETS = [t.name for t in kiln.targets() if t.device == "cpu"]
GPU_TARGETS = [t.name for t in kiln.targets() if t.device == "gpu"]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", GOLDEN, ids=lambda g: g.name)
def test_golden(case: Golden, target: str) -> None:
    graph, inputs, truth = case.load()
    reference = kiln.compile(graph, "reference", pipeline="").run(inputs)
    if truth is not None:
        for name, want in truth.items():
            assert_close(reference[name], want, f"{case.name}: reference vs independent truth, output {name}")
    got = kiln.compile(graph, target).run(inputs)  # the target's default pipeline
    assert set(got) == set(reference)
    for name, want in reference.items():
        assert_close(got[name], want, f"{case.name}: {target} vs reference, output {name}")


def _gpu_present(target: str) -> bool:
    from kiln.backends.mlir.cuda import cuda_driver_available

    return target == "mlir-cuda" and cuda_driver_available()


@pytest.mark.parametrize("target", GPU_TARGETS)
@pytest.mark.parametrize("case", GOLDEN, ids=lambda g: g.name)
def test_golden_gpu(case: Golden, target: str) -> None:
    if not _gpu_present(target):
        pytest.skip(f"{target}: no NVIDIA GPU or CUDA driver on this machine (test_gpu_plan builds its code)")
    graph, inputs, _ = case.load()
    reference = kiln.compile(graph, "reference", pipeline="").run(inputs)
    got = kiln.compile(graph, target).run(inputs)
    assert set(got) == set(reference)
    for name, want in reference.items():
        assert_close(got[name], want, f"{case.name}: {target} vs reference, output {name}")


@pytest.mark.parametrize("case", GOLDEN, ids=lambda g: g.name)
def test_golden_gpu_loop_tiling(case: Golden) -> None:
    """mlir-cuda with the ops other than matmuls left to upstream's parallel-loop tiling (the
    default schedules them: one element per thread along the innermost parallel dim): the same
    outputs."""
    if not _gpu_present("mlir-cuda"):
        pytest.skip("mlir-cuda: no NVIDIA GPU or CUDA driver on this machine (test_gpu_plan builds its code)")
    from kiln.backends.mlir.cuda import MlirCudaBackend
    from kiln.backends.mlir.pipeline import GpuTiles
    from kiln.ir.targets import get_target

    graph, inputs, _ = case.load()
    reference = kiln.compile(graph, "reference", pipeline="").run(inputs)
    lowered = kiln.PassManager.parse(get_target("mlir-cuda").pipeline).run(graph)
    got = MlirCudaBackend(tiles=GpuTiles(threads=0)).compile(lowered)(inputs)
    for name, want in reference.items():
        assert_close(got[name], want, f"{case.name}: mlir-cuda (threads=0) vs reference, output {name}")


@pytest.mark.parametrize("case", GOLDEN, ids=lambda g: g.name)
def test_gpu_plan(case: Golden) -> None:
    """Without a GPU: every case lowers to PTX for sm_90 and its host code to a launch plan whose
    kernel parameters match the kernels' signatures (``launch_plan`` checks them)."""
    from kiln.backends.mlir.common import bind_dims, export_graph
    from kiln.backends.mlir.cuda import launch_plan
    from kiln.backends.mlir.pipeline import GpuTiles
    from kiln.ir.targets import get_target

    graph, inputs, _ = case.load()
    target = get_target("mlir-cuda")
    graph = kiln.PassManager.parse(target.pipeline).run(graph)
    exp = export_graph(graph, bind_dims(graph, inputs, target.name), target.name)
    plan = launch_plan(exp, "sm_90", target.gpu_block)
    assert plan.launches and all(".entry" in text for _, text in plan.ptx)
    args = {b.arg for b in plan.buffers if b.kind == "arg"}
    assert args == set(range(len(args)))  # every argument has its buffer
    loops = launch_plan(exp, "sm_90", target.gpu_block, GpuTiles(threads=0))  # upstream's loop tiling
    assert loops.launches and len(loops.buffers) == len(plan.buffers)
