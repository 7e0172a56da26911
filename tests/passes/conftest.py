"""Fixtures shared by the fusion tests: the traced GPT block, before and after fusion."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest
from kiln_testing.examples import load_example
from kiln_testing.fusion_graphs import NUMBA_PIPELINE, run_pipeline

from kiln.ir.core import Graph


@pytest.fixture(scope="module")
def gpt() -> tuple[Graph, dict[str, np.ndarray], ModuleType]:
    ex = load_example("gpt_block")
    p = ex.init_weights(64)
    x = np.random.default_rng(7).standard_normal((16, 64)).astype(np.float32)
    return ex.make_block(p, 4).lower(x).graph, {"x": x}, ex


@pytest.fixture(scope="module")
def gpt_fused(gpt: tuple[Graph, dict[str, np.ndarray], ModuleType]) -> Graph:
    return run_pipeline(gpt[0], NUMBA_PIPELINE)
