"""The text rich prints for ablate's tables, built directly when the output has no colour.

Why: rich lays out every cell through its full wrapping machinery, about 0.3 ms per row, so a
10,000-trial ``ablate query`` spent 4 s drawing a table whose layout is trivial: every cell fits,
columns are as wide as their widest cell. For that case (the SIMPLE_HEAD box, no edge padding,
collapsed padding, one-line plain cells, a table that fits the console, no colour) this module
builds the same lines itself, and still lets rich render the title, the caption and the box
characters. Anything else returns None and the caller uses rich. ``tests/test_plaintable.py``
checks the two agree, byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rich import box
from rich.cells import cell_len
from rich.console import Console

# A rich markup tag ("[bold]", "[/]", "[#fff]") or an emoji code (":smile:") would be rendered, not
# printed: such cells go to rich.
_MARKUP = re.compile(r"\[[a-zA-Z#/@]|:[^\s:]+:")


def _plain(cell: str) -> bool:
    """Printed as it is by rich: one printable line, no edge whitespace (rich strips it), no markup."""
    return cell == cell.strip() and cell.isprintable() and not _MARKUP.search(cell)


def render(
    console: Console,
    title: str | None,
    columns: Sequence[tuple[str, str]],
    rows: Sequence[Sequence[str]],
    caption: str | None = None,
) -> str | None:
    """The text ``console.print(Table(title, box=SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
    caption_justify="left", caption=caption))`` prints for these (header, justify) columns and rows,
    or None when only rich can lay it out. ``caption`` is markup (escaped by the caller), as in rich."""
    if console.color_system is not None or not columns:
        return None
    headers = [h for h, _ in columns]
    n = len(columns)
    if not all(_plain(h) for h in headers):
        return None
    content = [cell_len(h) for h in headers]
    for row in rows:
        if len(row) != n:
            return None
        for i, cell in enumerate(row):
            if not _plain(cell):
                return None
            w = cell_len(cell)
            if w > content[i]:
                content[i] = w
    if min(content) < 1:
        return None
    pads = [1] * (n - 1) + [0]  # collapsed padding: one space right of every column but the last
    widths = [c + p for c, p in zip(content, pads, strict=True)]
    extra = 2 + n - 1  # the box's two edges and the dividers between columns
    if sum(widths) > console.options.max_width - extra:
        return None  # rich would shrink and wrap columns
    table_width = sum(widths) + extra
    options = console.options.update(width=table_width, highlight=False, height=None)
    the_box = box.SIMPLE_HEAD.substitute(options, safe=console.safe_box)

    def annotation(text: str, style: str, justify: str) -> str:
        rendered = console.render_str(text, style=style, highlight=False)
        return "".join(seg.text for seg in console.render(rendered, options.update(justify=justify)))

    def line(cells: Sequence[str], left: str, divider: str, right: str) -> str:
        parts = []
        for i, cell in enumerate(cells):
            space = " " * (content[i] - cell_len(cell))
            body = space + cell if columns[i][1] == "right" else cell + space
            parts.append(body + " " * pads[i])
        return left + divider.join(parts) + right + "\n"

    out = []
    if title:
        out.append(annotation(title, "table.title", "center"))
    out.append(the_box.get_top(widths) + "\n")
    out.append(line(headers, the_box.head_left, the_box.head_vertical, the_box.head_right))
    out.append(the_box.get_row(widths, "head", edge=True) + "\n")
    last = len(rows) - 1
    for i, row in enumerate(rows):
        if i == last:
            out.append(line(row, the_box.foot_left, the_box.foot_vertical, the_box.foot_right))
        else:
            out.append(line(row, the_box.mid_left, the_box.mid_vertical, the_box.mid_right))
    out.append(the_box.get_bottom(widths) + "\n")
    if caption:
        out.append(annotation(caption, "table.caption", "left"))
    return "".join(out)
