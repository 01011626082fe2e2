"""The report's blocks as one self-contained HTML file: inline CSS, figures embedded as base64 PNG
``data:`` URIs, no script and no link to any other file or host."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from ablate.report.document import Bullets, Code, Document, Figure, Heading, Para, Table

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 72rem; margin: 2rem auto;
       padding: 0 1rem; line-height: 1.45; color: #1b1b1b; }
h1 { font-size: 1.7rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; } h3 { margin-top: 1.6rem; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 0.88rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
code { background: #f2f2f2; padding: 0 0.2rem; border-radius: 3px; font-size: 0.9em; }
pre { background: #f6f6f6; padding: 0.8rem; overflow-x: auto; border-radius: 4px; }
pre code { background: none; padding: 0; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption, p.note { font-size: 0.85rem; color: #555; font-style: italic; }
"""

_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")


def inline(text: str) -> str:
    """Escape ``text`` and turn its `code` and **bold** (which may hold code) into HTML."""
    spans: list[str] = []

    def hold(m: re.Match[str]) -> str:
        spans.append(f"<code>{html.escape(m.group(1))}</code>")
        return f"\x00{len(spans) - 1}\x00"

    out = _BOLD.sub(r"<strong>\1</strong>", html.escape(_CODE.sub(hold, text)))
    return re.sub("\x00(\\d+)\x00", lambda m: spans[int(m.group(1))], out)


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def render_html(doc: Document) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        f"<title>{html.escape(doc.title)}</title>",
        f"<style>{STYLE}</style></head>",
        "<body>",
        f"<h1>{inline(doc.title)}</h1>",
    ]
    for b in doc.blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{inline(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f"<p>{inline(b.text)}</p>")
        elif isinstance(b, Bullets):
            out.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{inline(h)}</th>" for h in b.header)
            body = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in b.rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            if b.note:
                out.append(f'<p class="note">{inline(b.note)}</p>')
        elif isinstance(b, Figure):
            out.append(
                f'<figure><img alt="{html.escape(b.caption)}" src="{data_uri(b.path)}">'
                f"<figcaption>{inline(b.caption)}</figcaption></figure>"
            )
        elif isinstance(b, Code):
            out.append(f"<pre><code>{html.escape(b.text)}</code></pre>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"
