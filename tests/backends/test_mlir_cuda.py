"""mlir-cuda: PTX generated without a GPU (everywhere), assembled by ptxas for sm_80 and sm_90
where a CUDA toolkit is installed, and the refusal to run without a driver."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mlir.ir")

from kiln.backends.mlir.common import HandModule
from kiln.backends.mlir.cuda import (
    MlirCudaBackend,
    cuda_driver_available,
    find_libdevice,
    module_ptx,
    ptx_modules,
)
from kiln.ir.errors import BackendError

F32 = np.dtype(np.float32)
M, K, N = 32, 64, 128
MLP = """
#map = affine_map<(d0, d1) -> (d0, d1)>
#row = affine_map<(d0, d1) -> (d1)>
func.func public @mlp(%a: tensor<32x64xf32>, %b: tensor<64x128xf32>, %bias: tensor<128xf32>) -> tensor<128x32xf32>
    attributes {llvm.emit_c_interface} {
  %z = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<32x128xf32>
  %f = linalg.fill ins(%z : f32) outs(%e : tensor<32x128xf32>) -> tensor<32x128xf32>
  %h = linalg.matmul ins(%a, %b : tensor<32x64xf32>, tensor<64x128xf32>) outs(%f : tensor<32x128xf32>) -> tensor<32x128xf32>
  %g = linalg.generic {indexing_maps = [#map, #row, #map], iterator_types = ["parallel", "parallel"]}
      ins(%h, %bias : tensor<32x128xf32>, tensor<128xf32>) outs(%e : tensor<32x128xf32>) {
  ^bb0(%x: f32, %y: f32, %o: f32):
    %s = arith.addf %x, %y : f32
    %c = arith.constant 0.7071067811865476 : f32
    %xs = arith.mulf %s, %c : f32
    %er = math.erf %xs : f32
    linalg.yield %er : f32
  } -> tensor<32x128xf32>
  %t0 = tensor.empty() : tensor<128x32xf32>
  %t = linalg.transpose ins(%g : tensor<32x128xf32>) outs(%t0 : tensor<128x32xf32>) permutation = [1, 0]
  return %t : tensor<128x32xf32>
}
"""
SPEC = HandModule(MLP, "mlp", [((M, K), F32), ((K, N), F32), ((N,), F32)], [((N, M), F32)])


@pytest.fixture(scope="module")
def ptx90() -> str:
    return module_ptx(SPEC, "sm_90")


def test_ptx_text_without_a_gpu(ptx90: str) -> None:
    assert ".target sm_90" in ptx90
    assert ptx90.count(".entry") >= 3  # fill, matmul, bias + erf (fused), transpose
    if find_libdevice():
        assert "__nv_erff" not in ptx90 or ".extern" not in ptx90  # libdevice linked in


@pytest.mark.parametrize("chip", ["sm_80", "sm_90"])
def test_ptxas_assembles(chip: str, tmp_path: Path) -> None:
    ptxas = shutil.which("ptxas")
    if ptxas is None:
        pytest.skip("ptxas not on PATH (no CUDA toolkit): the PTX text test above still runs")
    for i, text in enumerate(ptx_modules(SPEC, chip)):
        src = tmp_path / f"mlp_{chip}_{i}.ptx"
        src.write_text(text)
        subprocess.run([ptxas, f"-arch={chip}", str(src), "-o", str(tmp_path / f"{i}.cubin")], check=True)


def test_compile_without_a_driver_says_how_to_get_ptx() -> None:
    if cuda_driver_available():
        pytest.skip("a CUDA driver is present")
    from kiln.ir.core import Graph  # any graph will do: compile refuses before looking at it

    with pytest.raises(BackendError, match="--ptx"):
        MlirCudaBackend().compile(Graph("g", [], [], []))


def test_bad_chip_is_refused() -> None:
    with pytest.raises(BackendError, match="unknown chip"):
        module_ptx(SPEC, "gfx90a")
