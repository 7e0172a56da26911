"""The reference backend's interpretation overhead: kiln reference vs the same block in NumPy.

Run: ``python benchmarks/reference_overhead.py``. One run, side by side, medians after warm-up,
ratios (kiln / NumPy): the reference backend executes one NumPy call per IR node, so the ratio
shows what the interpreter itself costs. This is not kiln's fast path (that is numba-cpu, issue 4).
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def load_example() -> Any:
    path = Path(__file__).resolve().parents[1] / "examples" / "gpt_block.py"
    spec = importlib.util.spec_from_file_location("gpt_block_example", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def median_ms(fn: Callable[[], Any], repeat: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main() -> None:
    ex = load_example()
    print(f"{'config':<28} {'numpy ms':>9} {'kiln ref ms':>12} {'ratio':>7} {'nodes':>6}")
    for d, heads, seq, repeat in ((64, 4, 16, 200), (256, 4, 64, 50), (768, 12, 128, 10)):
        p = ex.init_weights(d)
        block = ex.make_block(p, heads)
        x = np.random.default_rng(0).standard_normal((seq, d)).astype(np.float32)
        compiled = block.lower(x).compile()
        np.testing.assert_allclose(compiled(x), ex.numpy_block(x, p, heads), rtol=1e-4, atol=1e-4)
        t_np = median_ms(lambda: ex.numpy_block(x, p, heads), repeat)  # noqa: B023
        time.sleep(0.2)  # let idle BLAS threads stop spinning before the next system runs
        t_k = median_ms(lambda: compiled(x), repeat)  # noqa: B023
        name = f"GPT block d={d} h={heads} s={seq}"
        print(f"{name:<28} {t_np:9.3f} {t_k:12.3f} {t_k / t_np:7.2f} {len(compiled.graph.nodes):6d}")


if __name__ == "__main__":
    main()
