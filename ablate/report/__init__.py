"""``ablate report``: a study written up from the database alone, as the original report was written.

:func:`write_report` gathers the numbers (:mod:`ablate.report.model`), draws the figures with
``ablate plot``'s renderers (:mod:`ablate.report.figures`), composes the text
(:mod:`ablate.report.document`) and writes ``report.md`` with the PNGs beside it, ``report.html``
(one self-contained file) and ``report.json`` (the gathered numbers). Torch-free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import Engine

from ablate.jsonout import json_value
from ablate.report.model import Report, gather

__all__ = ["Report", "ReportFiles", "gather", "write_report"]


@dataclass(frozen=True)
class ReportFiles:
    study: str
    markdown: Path
    html: Path
    json: Path
    figures: tuple[Path, ...]


def write_report(
    engine: Engine, study: str | None, out_dir: str | Path, source: str, program: str = "ablate"
) -> ReportFiles:
    """Write the study's report into ``out_dir`` (created if missing); ``source`` is the database URL
    the report names (passwords masked by the caller), ``program`` how its reader runs ablate (its
    "reproduce" commands start with it). LookupError for an unknown study."""
    from ablate.report.document import compose
    from ablate.report.figures import render_figures
    from ablate.report.html import render_html
    from ablate.report.markdown import render_markdown

    report = gather(engine, study)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = render_figures(engine, report.setting.study, out)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc = compose(report, figures, source, generated, program)
    md, page, js = out / "report.md", out / "report.html", out / "report.json"
    md.write_text(render_markdown(doc, out), encoding="utf-8")
    page.write_text(render_html(doc), encoding="utf-8")
    js.write_text(json.dumps(json_value(report), indent=2) + "\n", encoding="utf-8")
    return ReportFiles(report.setting.study, md, page, js, tuple(figures.values()))
