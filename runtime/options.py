"""Compile options: one frozen, hashable object (never environment variables read deep inside)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def default_cache_dir() -> Path:
    """``$KILN_CACHE_DIR``, else ``~/.cache/kiln``: read once, here, by the API layer."""
    env = os.environ.get("KILN_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "kiln"


@dataclass(frozen=True)
class CompileOptions:
    """What ``kiln.compile`` and ``@kiln.jit`` are asked to do."""

    target: str = "reference"
    pipeline: str | None = None  # None: the target's default pipeline; "" runs no pass
    verify_each: bool = False
    cache_dir: str | None = None  # kernel cache (None: default_cache_dir())
    fallback: bool = False  # run ops a target cannot lower with the reference semantics
