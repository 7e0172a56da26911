"""Targets as plain data: what a backend compiles for and the device it runs on.

Passes, backends and the runtime all read these descriptions; none of them imports another to
learn about hardware.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """A compilation target: its name, the device kind and a one-line description."""

    name: str
    device: str  # "cpu" or "gpu"
    description: str


TARGETS: tuple[Target, ...] = (
    Target("reference", "cpu", "NumPy interpreter: the golden semantics (unfused, unoptimised)"),
)


def get_target(name: str) -> Target:
    from .errors import KilnError

    for t in TARGETS:
        if t.name == name:
            return t
    known = ", ".join(t.name for t in TARGETS)
    raise KilnError(f"unknown target '{name}'; available targets: {known}")
