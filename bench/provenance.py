"""What every benchmark's JSON says about how it was made: the command, the date and the load.

The docs' performance page (docs/performance.md, written by tools/gen_docs.py) quotes these three
fields beside every figure, so a number is never separated from the run that produced it.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def provenance(script: str, argv: list[str] | None = None, env: str = "PYTHONPATH=.") -> dict[str, object]:
    """``command`` (how to run it again), ``date`` (UTC), ``load_avg_1m`` before the run, ``cpus``."""
    args = sys.argv[1:] if argv is None else argv
    return {
        "command": " ".join(part for part in (env, "python", f"bench/{script}", *args) if part),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }


def emit(doc: dict[str, Any], out: str | None) -> dict[str, Any]:
    """Print a benchmark's JSON, and write it to ``out`` too when given; returns ``doc``."""
    text = json.dumps(doc, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
    return doc
