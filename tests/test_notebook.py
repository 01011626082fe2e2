"""The exploration notebook runs top to bottom against a small database the tests create."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def test_notebook_executes(mini_study_db, tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATE_STORAGE", f"sqlite:///{mini_study_db}")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(ROOT / "notebooks" / "explore_results.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "mini" in text and "no-branch" in text and "Pareto front" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)
