"""Liveness-based buffer planning shared by the backends that preallocate.

Values are planned in execution order: a value's buffer is taken (best fit) from the blocks freed
by values whose last use has passed, or a new block is allocated. Views (reshapes, transposes,
slices) share their source's block, so the source lives as long as its last view is used.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass
class MemoryPlan(Generic[K]):
    """``block_of[v]`` is the index of the block holding value ``v``; ``sizes[b]`` its bytes."""

    block_of: dict[K, int] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)

    @property
    def peak_bytes(self) -> int:
        return sum(self.sizes)


def plan_buffers(
    steps: Sequence[tuple[Sequence[K], Sequence[K]]],
    nbytes: dict[K, int],
    alias: dict[K, K],
    pinned: set[K],
) -> MemoryPlan[K]:
    """``steps``: (values defined, values used) per step in order. ``alias`` maps a view to the
    value it views; ``pinned`` values never give their block back (graph outputs)."""

    def root(v: K) -> K:
        while v in alias:
            v = alias[v]
        return v

    last: dict[K, int] = {}
    for i, (defs, uses) in enumerate(steps):
        for v in [*defs, *uses]:
            last[root(v)] = i
    plan: MemoryPlan[K] = MemoryPlan()
    kept = {root(v) for v in pinned}  # an output that is a view keeps the block it views
    free: list[int] = []
    for i, (defs, _uses) in enumerate(steps):
        for v in defs:
            if v in alias or v not in nbytes:
                continue
            need = nbytes[v]
            fits = [b for b in free if plan.sizes[b] >= need]
            if fits:
                b = min(fits, key=lambda k: plan.sizes[k])
                free.remove(b)
            else:
                b = len(plan.sizes)
                plan.sizes.append(need)
            plan.block_of[v] = b
        for v, end in list(last.items()):
            if end == i and v in plan.block_of and v not in kept:
                free.append(plan.block_of[v])
                del last[v]
    return plan
