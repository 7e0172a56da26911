"""Compile options: one frozen, hashable object (never environment variables read deep inside)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class CompileOptions:
    """What ``kiln.compile`` and ``@kiln.jit`` are asked to do."""

    target: str = "reference"
    pipeline: str | None = None  # None: the default cleanup pipeline; "" runs no pass
    verify_each: bool = False

    def key(self) -> str:
        """A stable hash for caches."""
        return hashlib.sha256(repr(self).encode()).hexdigest()[:16]
