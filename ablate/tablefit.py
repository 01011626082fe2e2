"""Fit a table to the terminal: drop the least important columns until the rest fit, and say which.

Why drop instead of shrink: rich fits an over-wide table by cutting every cell ('-4…', '0.…'),
which leaves nothing readable; a reader would rather see five whole columns and a line naming the
ones left out (``--wide`` shows them all). Cells are never cut here: a table whose essential
columns alone are too wide is left to rich's wrapping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.cells import cell_len

# The SIMPLE_HEAD box without edge padding: one space at each edge, and between two columns one
# space of padding and one divider (see ``plaintable``).
EDGE = 2
GAP = 2
NAMED = 8  # columns named in the note; a wide --sql result says how many more


@dataclass(frozen=True)
class Col:
    """A table column: header, 'left' or 'right', and its rank (0: always shown; higher drops first)."""

    header: str
    justify: str = "left"
    rank: int = 0


def table_width(widths: Sequence[int]) -> int:
    """Printed width of a table whose columns' widest cells are ``widths``."""
    return sum(widths) + EDGE + GAP * (len(widths) - 1) if widths else 0


def fit(columns: Sequence[Col], rows: Sequence[Sequence[str]], width: int | None) -> list[int]:
    """Indices of the columns to show within ``width`` (None: all), in their order.

    Drops the highest rank first, the rightmost of equal rank first, never a rank-0 column.
    """
    keep = list(range(len(columns)))
    if width is None:
        return keep
    widest = [max([cell_len(columns[i].header)] + [cell_len(r[i]) for r in rows]) for i in range(len(columns))]
    droppable = sorted((i for i in keep if columns[i].rank > 0), key=lambda i: (columns[i].rank, i))
    while table_width([widest[i] for i in keep]) > width and droppable:
        keep.remove(droppable.pop())
    return keep


def hidden_note(columns: Sequence[Col], kept: Sequence[int]) -> str:
    """One line naming the columns ``fit`` left out ('' when none)."""
    gone = [c.header for i, c in enumerate(columns) if i not in set(kept)]
    if not gone:
        return ""
    names = ", ".join(gone[:NAMED]) + (f" and {len(gone) - NAMED} more" if len(gone) > NAMED else "")
    return f"not shown: {names} (--wide: every column)"
