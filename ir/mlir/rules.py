"""The table of lowering rules, op name -> rule, assembled from the per-family modules."""

from __future__ import annotations

from .emit import Rule


def lowering_rules(lower_kiln: bool = True) -> dict[str, Rule]:
    """Every op's rule; ``lower_kiln=False`` maps kiln-only ops to ``kiln`` dialect ops."""
    from . import lower_elementwise, lower_reduce, lower_rows, lower_shape
    from . import lower_kiln as kiln_ops

    table: dict[str, Rule] = {}
    parts = (
        lower_elementwise.RULES,
        lower_reduce.RULES,
        lower_shape.RULES,
        lower_rows.RULES,
        kiln_ops.rules(lower_kiln),
    )
    for part in parts:
        overlap = table.keys() & part.keys()
        assert not overlap, f"ops lowered twice: {overlap}"
        table.update(part)
    return table
