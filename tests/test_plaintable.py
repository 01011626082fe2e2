"""The plain table text is byte for byte what rich prints, and rich still draws what it alone can."""

from __future__ import annotations

import io
import random
import string

import pytest
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ablate import plaintable


def _rich(console: Console, title, columns, rows, caption) -> str:
    table = Table(
        title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, caption_justify="left", caption=caption
    )
    for header, justify in columns:
        table.add_column(header, justify=justify)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    return console.file.getvalue()


def _console(width: int) -> Console:
    return Console(file=io.StringIO(), width=width)


HEADER_CHARS = string.ascii_lowercase + " #."
CELL_CHARS = string.ascii_letters + string.digits + " .-,()/+%"


def test_random_tables_match_rich() -> None:
    rng = random.Random(0)
    fast = 0
    for _ in range(400):
        n = rng.randint(1, 7)
        headers = ["".join(rng.choice(HEADER_CHARS) for _ in range(rng.randint(1, 8))).strip() or "c" for _ in range(n)]
        columns = [(h, rng.choice(["left", "right"])) for h in headers]
        rows = [
            [("".join(rng.choice(CELL_CHARS) for _ in range(rng.randint(1, 16)))).strip() or "-" for _ in range(n)]
            for _ in range(rng.randint(0, 8))
        ]
        title = rng.choice([None, "trials", "per fix", "a title longer than the table " * rng.randint(1, 4)])
        caption = rng.choice([None, "short", escape("[lo, hi]: 95% interval WITHIN ONE SEED only (batch noise)")])
        width = rng.choice([30, 80, 200])
        got = plaintable.render(_console(width), title, columns, rows, caption)
        if got is not None:
            fast += 1
            assert got == _rich(_console(width), title, columns, rows, caption), (width, title, columns, rows)
    assert fast > 250  # most random tables take the plain path


@pytest.mark.parametrize(
    "cell",
    ["[bold]x[/bold]", "a :smile: b", " padded", "two\nlines", "tab\there", "x" * 300],
)
def test_what_only_rich_can_draw_goes_to_rich(cell: str) -> None:
    assert plaintable.render(_console(200), "t", [("a", "left")], [[cell]]) is None


def test_colour_goes_to_rich() -> None:
    console = Console(file=io.StringIO(), width=80, force_terminal=True, color_system="standard")
    assert plaintable.render(console, "t", [("a", "left")], [["1"]]) is None


def test_query_views_match_rich(mini_study_db) -> None:
    from ablate import views
    from ablate.store import open_storage, query

    engine = open_storage(f"sqlite:///{mini_study_db}", create=False)
    objectives = query.study_settings(engine)["objectives"]
    for view, note in (
        (views.trials_view(query.trials_frame(engine), objectives), "over seeds"),
        (views.fixes_view(query.group_by_fix(engine), objectives), escape("[lo, hi]: 95% interval over seeds")),
        (views.runs_view(query.runs_frame(engine)), None),
    ):
        columns = [(c.header, c.justify) for c in view.columns]
        rows = view.rows
        wide = plaintable.render(_console(200), "view", columns, rows, note)
        assert wide is not None and wide == _rich(_console(200), "view", columns, rows, note)
        narrow = plaintable.render(_console(80), "view", columns, rows, note)  # None: rich wraps a column
        assert narrow is None or narrow == _rich(_console(80), "view", columns, rows, note)
