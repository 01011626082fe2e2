"""The exploration notebook runs top to bottom against a small database the tests create."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from ablate.store import find_storage
from tests.study_helpers import copy_db

ROOT = Path(__file__).resolve().parents[1]


def test_notebook_executes_from_notebooks_folder(mini_study_db, tmp_path, monkeypatch):
    # Jupyter starts a notebook in its own folder: results.db sits one folder up, in the repository root
    copy_db(mini_study_db, tmp_path / "results.db")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.delenv("ABLATE_STORAGE", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(ROOT / "notebooks" / "explore_results.ipynb", as_version=4)
    path = str(tmp_path / "notebooks")
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": path}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "mini" in text and "no-branch" in text and "Pareto front" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)


def test_find_storage_from_the_root_from_notebooks_and_from_elsewhere(tmp_path, monkeypatch):
    monkeypatch.delenv("ABLATE_STORAGE", raising=False)
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "results.db").write_bytes(b"")
    want = f"sqlite:///{(tmp_path / 'results.db').resolve()}"
    assert find_storage(tmp_path) == want and find_storage(tmp_path / "notebooks") == want
    (tmp_path / "elsewhere" / "deeper").mkdir(parents=True)
    with pytest.raises(ValueError, match="no results.db in .*elsewhere.*ABLATE_STORAGE"):
        find_storage(tmp_path / "elsewhere" / "deeper")
    monkeypatch.setenv("ABLATE_STORAGE", "postgresql://db/x")
    assert find_storage(tmp_path / "elsewhere") == "postgresql://db/x"
