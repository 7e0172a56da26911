"""Saving and loading graphs: the text in ``NAME.kir``, the constants in ``NAME.npz`` beside it."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from .core import Graph
from .errors import KilnError
from .parser import parse
from .printer import is_inlined
from .registry import Context


def weights_path(path: str | os.PathLike[str]) -> Path:
    return Path(path).with_suffix(".npz")


def save(graph: Graph, path: str | os.PathLike[str], *, inline_limit: int = 8) -> None:
    """Write ``graph`` as text to ``path`` and its large constants to ``path`` with ``.npz``."""
    p = Path(path)
    p.write_text(graph.as_text(inline_limit=inline_limit))
    inlined = {
        n.attrs.ref  # type: ignore[attr-defined]
        for n in graph.nodes
        if n.op == "constant" and is_inlined(n, graph.constants.get(n.attrs.ref, np.zeros(0)), inline_limit)  # type: ignore[attr-defined]
    }
    big = {k: v for k, v in graph.constants.items() if k not in inlined}
    wp = weights_path(p)
    if big:
        np.savez(wp, **big)  # type: ignore[arg-type]
    elif wp.exists():
        wp.unlink()


def load(
    path: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    ctx: Context | None = None,
) -> Graph:
    """Read a ``.kir`` file (and its ``.npz`` weights, when present)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise KilnError(f"cannot read {p}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise KilnError(f"{p} is not a text IR file (.kir)") from None
    wp = Path(weights) if weights else weights_path(p)
    data: dict[str, np.ndarray] = {}
    if wp.exists():
        try:
            with np.load(wp, allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise KilnError(f"cannot read weights {wp}: {e}") from None
    elif weights:
        raise KilnError(f"weights file {wp} does not exist")
    return parse(text, weights=data, ctx=ctx, source=str(p))
