"""Liveness-based buffer planning shared by the backends that preallocate.

Values are planned in execution order: a value's buffer is taken (best fit) from the blocks freed
by values whose last use has passed, or a new block is allocated. Views (reshapes, transposes,
slices) share their source's block, so the source lives as long as its last view is used; a value
written straight into a slice of a later value (a concat's operand) is an alias of that value too,
and the block is taken when the first of them is defined.
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
    # a block is taken when the first value that lives in it is defined: usually its root, but a
    # value planned into a slice of a later result (a concat's operand) comes first
    first: dict[K, int] = {}
    for i, (defs, _uses) in enumerate(steps):
        for v in defs:
            first.setdefault(root(v), i)
    by_step: dict[int, list[K]] = {}
    for r, i in first.items():
        by_step.setdefault(i, []).append(r)
    plan: MemoryPlan[K] = MemoryPlan()
    kept = {root(v) for v in pinned}  # an output that is a view keeps the block it views
    free: list[int] = []
    for i, (_defs, _uses) in enumerate(steps):
        for v in by_step.get(i, []):
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
