"""mlir-cuda: PTX generated without a GPU (everywhere), assembled by ptxas for sm_80 and sm_90
where a CUDA toolkit is installed, the launch plan read from the host code and run on a recording
fake device (everywhere), the refusal to run without a driver, and, on a machine with an NVIDIA
GPU, the kernels run against NumPy (the golden harness runs every model there too)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mlir.ir")

from scipy.special import erf

from kiln.backends.mlir.common import HandModule
from kiln.backends.mlir.cuda import (
    MlirCudaBackend,
    cuda_driver_available,
    find_libdevice,
    launch_plan,
    module_ptx,
    ptx_modules,
)
from kiln.backends.mlir.launch import Launch, PlanRunner, View
from kiln.ir.errors import BackendError

NO_GPU = "no CUDA driver or NVIDIA GPU on this machine (the plan and PTX tests above run without one)"
needs_gpu = pytest.mark.skipif(not cuda_driver_available(), reason=NO_GPU)

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


def mlp_numpy(a: np.ndarray, b: np.ndarray, bias: np.ndarray) -> np.ndarray:
    return erf((a.astype(np.float64) @ b + bias) * 0.7071067811865476).T.astype(np.float32)


def test_launch_plan_reads_the_host_code() -> None:
    plan = launch_plan(SPEC, "sm_90", tiles=None)  # one element per thread (test_matmul_is_register_tiled)
    kinds = [(b.kind, b.arg, b.nbytes) for b in plan.buffers]
    assert kinds[:4] == [
        ("arg", 0, M * K * 4),
        ("arg", 1, K * N * 4),
        ("arg", 2, N * 4),
        ("arg", 3, N * M * 4),
    ]
    assert [k for k, _, _ in kinds[4:]] == ["temp"]  # the matmul result, before bias + erf
    launches = plan.launches
    assert len(launches) == 4 and len(plan.ptx) == 4
    matmul = launches[1]
    views = [a for a in matmul.args if isinstance(a, View)]
    assert sorted((v.buffer, v.shape, v.strides) for v in views) == [
        (0, (M, K), (K, 1)),
        (1, (K, N), (N, 1)),
        (4, (M, N), (N, 1)),
    ]
    for launch in launches:  # the grid covers each kernel's 2-D iteration space (outer loop on x)
        rows, cols = (N, M) if launch is launches[-1] else (M, N)
        assert launch.grid[0] * launch.block[0] >= rows and launch.grid[1] * launch.block[1] >= cols
    assert "launch" in plan.describe()


class FakeDevice:
    """Records what the runner asks of a GPU; memory is host bytes keyed by fake addresses."""

    chip = "sm_90"

    def __init__(self) -> None:
        self.memory: dict[int, bytearray] = {}
        self.log: list[tuple[object, ...]] = []
        self.next = 1 << 20

    def make_current(self) -> None:
        pass

    def alloc(self, nbytes: int) -> int:
        ptr, self.next = self.next, self.next + ((nbytes + 255) // 256 + 1) * 256
        self.memory[ptr] = bytearray(nbytes)
        return ptr

    def free(self, ptr: int) -> None:
        del self.memory[ptr]

    def upload(self, ptr: int, data: np.ndarray) -> None:
        self.memory[ptr][: data.nbytes] = data.tobytes()
        self.log.append(("upload", ptr, data.nbytes))

    def download(self, ptr: int, out: np.ndarray) -> None:
        out.view(np.uint8).reshape(-1)[:] = np.frombuffer(bytes(self.memory[ptr][: out.nbytes]), np.uint8)
        self.log.append(("download", ptr, out.nbytes))

    def copy(self, dst: int, src: int, nbytes: int) -> None:
        self.log.append(("copy", dst, src, nbytes))

    def load_ptx(self, ptx: str, what: str) -> str:
        assert ".entry" in ptx
        return what

    def function(self, module: object, name: str) -> tuple[object, str]:
        return (module, name)

    def launch(self, fn: object, grid: tuple[int, int, int], block: tuple[int, int, int], smem: int, params: object, what: str) -> None:  # fmt: skip
        self.log.append(("launch", fn, grid, block, params))

    def synchronize(self, doing: str = "") -> None:
        self.log.append(("sync",))


def test_runner_marshals_descriptors_on_a_fake_device() -> None:
    import ctypes

    plan = launch_plan(SPEC, "sm_90")
    dev = FakeDevice()
    runner = PlanRunner(plan, dev)
    a = np.ones((M, K), np.float32)
    out = np.zeros((N, M), np.float32)
    runner.run([(0, a)], [(3, out)])
    kinds = [e[0] for e in dev.log]
    assert kinds == ["upload", "launch", "launch", "launch", "launch", "download", "sync"]
    assert dev.log[0][1] == runner.arg_address(0) and dev.log[-2][1] == runner.arg_address(3)
    for entry, launch in zip(dev.log[1:5], plan.launches, strict=True):
        assert isinstance(launch, Launch) and entry[2] == launch.grid and entry[3] == launch.block
        params = launch.params()
        argv = entry[4]
        got = []
        for k, (t, _) in enumerate(params):  # read each parameter cell back through its pointer
            cell = ctypes.cast(argv[k], ctypes.POINTER(ctypes.c_float if t == "f32" else ctypes.c_int64))
            got.append(cell.contents.value)
        want = [runner.addresses[int(v)] if t == "ptr" else v for t, v in params]
        assert got == pytest.approx(want)
    runner.close()
    assert not dev.memory  # every buffer freed


def test_host_code_without_a_gpu_mapping_is_refused() -> None:
    # a scalar read of an input on the host (tensor.extract) cannot run on the device
    text = """
func.func public @pick(%a: tensor<8xf32>, %b: tensor<8xf32>) -> tensor<8xf32> attributes {llvm.emit_c_interface} {
  %c3 = arith.constant 3 : index
  %s = tensor.extract %a[%c3] : tensor<8xf32>
  %e = tensor.empty() : tensor<8xf32>
  %r = linalg.generic {indexing_maps = [affine_map<(d0) -> (d0)>, affine_map<(d0) -> (d0)>],
      iterator_types = ["parallel"]} ins(%b : tensor<8xf32>) outs(%e : tensor<8xf32>) {
  ^bb0(%x: f32, %o: f32):
    %y = arith.addf %x, %s : f32
    linalg.yield %y : f32
  } -> tensor<8xf32>
  return %r : tensor<8xf32>
}
"""
    spec = HandModule(text, "pick", [((8,), F32), ((8,), F32)], [((8,), F32)])
    with pytest.raises(BackendError, match=r"host op memref.load in @pick .*no GPU mapping"):
        launch_plan(spec, "sm_90")


@needs_gpu
def test_mlp_runs_on_the_gpu() -> None:
    from kiln.backends.mlir.cudadrv import CudaDriver

    driver = CudaDriver.get()
    plan = launch_plan(SPEC, driver.chip)
    runner = PlanRunner(plan, driver)
    rng = np.random.default_rng(0)
    a, b, bias = (rng.standard_normal(s).astype(np.float32) for s in ((M, K), (K, N), (N,)))
    out = np.full((N, M), np.nan, np.float32)
    runner.run([(0, a), (1, b), (2, bias)], [(3, out)])
    np.testing.assert_allclose(out, mlp_numpy(a, b, bias), rtol=1e-4, atol=1e-5)
    a2 = rng.standard_normal((M, K)).astype(np.float32)  # a second call with new data
    runner.run([(0, a2), (1, b), (2, bias)], [(3, out)])
    np.testing.assert_allclose(out, mlp_numpy(a2, b, bias), rtol=1e-4, atol=1e-5)
    runner.close()


@needs_gpu
def test_bad_ptx_is_reported_with_the_driver_log() -> None:
    from kiln.backends.mlir.cudadrv import CudaDriver, CudaError

    with pytest.raises(CudaError, match="could not load the PTX of broken"):
        CudaDriver.get().load_ptx(".version 7.8\n.target sm_90\n.address_size 64\nnot ptx at all", "broken")


@needs_gpu
def test_compiled_graph_checks_its_inputs() -> None:
    import kiln

    ex = pytest.importorskip("kiln_testing.examples").load_example("gpt_block")
    p = ex.init_weights(64)
    x = np.random.default_rng(7).standard_normal((16, 64)).astype(np.float32)
    graph = ex.make_block(p, 4).lower(x).graph
    fn = kiln.compile(graph, "mlir-cuda")
    got = fn.run({"x": x})["out"]
    np.testing.assert_allclose(got, ex.numpy_block(x, p, 4), rtol=1e-3, atol=1e-4)
    with pytest.raises(BackendError, match="missing inputs"):
        fn.run({})


@pytest.mark.parametrize("block", [(0, 4), (64, 64), (8,)])
def test_bad_block_is_refused(block: tuple[int, ...]) -> None:
    with pytest.raises(BackendError, match="block must be two positive tile sizes"):
        MlirCudaBackend(block=block)  # type: ignore[arg-type]


def test_matmul_is_register_tiled() -> None:
    # each thread keeps a 4x4 tile of C in registers: 16 FMAs per k step, C stored once at the end
    tiled = launch_plan(SPEC, "sm_90", (2, 128))
    plain = launch_plan(SPEC, "sm_90", (2, 128), tiles=None)
    mm_tiled, mm_plain = dict(tiled.ptx)["mlp_kernel_0"], dict(plain.ptx)["mlp_kernel_0"]
    assert mm_tiled.count("fma.rn.f32") == 16 and mm_tiled.count("st.global") == 16
    assert mm_plain.count("fma.rn.f32") + mm_plain.count("mul.rn.f32") == 1  # one product per k
    launch = tiled.launches[1]
    assert launch.block[0] * launch.block[1] == (32 // 4) * (32 // 4)  # a 32x32 block tile of 4x4 threads


def test_profile_times_every_step_on_a_fake_device() -> None:
    from kiln.backends.mlir.cuda import profile

    class TimedFake(FakeDevice):
        def event(self) -> list[float]:
            return [0.0]

        def record(self, ev: list[float]) -> None:
            ev[0] = float(len(self.log))  # the "time" is how many calls were made so far

        def elapsed_ms(self, start: list[float], end: list[float]) -> float:
            return end[0] - start[0]

    plan = launch_plan(SPEC, "sm_90", tiles=None)
    dev = TimedFake()
    rows = profile(PlanRunner(plan, dev), dev, calls=3)  # type: ignore[arg-type]
    assert len(rows) == len(plan.steps) and all(ms == 1.0 for ms, _ in rows)  # one launch inside each pair
    assert all("mlp_kernel grid" in what for _, what in rows)
