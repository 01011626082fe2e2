"""The report's blocks as Markdown (GitHub flavour), figures referenced beside the file."""

from __future__ import annotations

from pathlib import Path

from ablate.report.document import Bullets, Code, Document, Figure, Heading, Para, Table


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(doc: Document, folder: Path) -> str:
    """Markdown text; figure paths are written relative to ``folder`` (where the .md file goes)."""
    out = [f"# {doc.title}", ""]
    for b in doc.blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            out += [b.text, ""]
        elif isinstance(b, Bullets):
            out += [f"- {item}" for item in b.items] + [""]
        elif isinstance(b, Table):
            out.append("| " + " | ".join(_cell(h) for h in b.header) + " |")
            out.append("| " + " | ".join("---" for _ in b.header) + " |")
            out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in b.rows]
            out += ["", f"_{b.note}_", ""] if b.note else [""]
        elif isinstance(b, Figure):
            rel = Path(b.path).resolve().relative_to(folder.resolve()).as_posix()
            out += [f"![{b.caption}]({rel})", "", f"_{b.caption}_", ""]
        elif isinstance(b, Code):
            out += [f"```{b.language}", b.text, "```", ""]
    return "\n".join(out).rstrip() + "\n"
