"""The docs explain the repository from the repository: generated blocks match their sources, the site
builds strictly, comments cite only files that exist, and the README starts a newcomer."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools import gen_docs  # noqa: E402


@pytest.mark.parametrize("page", sorted(gen_docs.BLOCKS))
def test_generated_blocks_match_their_sources(page):
    """The spec-key table is the pydantic spec's; every performance figure is its JSON's."""
    text = (ROOT / page).read_text()
    assert gen_docs.render(page, text) == text, f"run: PYTHONPATH=. python tools/gen_docs.py ({page} is stale)"


def test_every_spec_key_is_in_the_table_with_its_default():
    from ablate.spec import StudySpec

    text = (ROOT / "docs" / "study-specs.md").read_text()
    rows = gen_docs.spec_keys()
    assert len(rows) == len(gen_docs.KEY_NOTES)
    for key, _kind, default, _allowed in rows:
        assert f"| `{key}` |" in text and f"`{default}`" in text
    assert StudySpec.model_fields["training"].default_factory().steps == 100
    assert "| `training.steps` | integer | `100` | >= 1, <= 1000000 |" in text


def test_a_performance_figure_is_the_json_number():
    """One figure per table traced by hand to its file, so the generator itself is checked too."""
    import json

    text = (ROOT / "docs" / "performance.md").read_text()
    packed = json.loads((ROOT / "bench" / "results" / "packed_cpu.json").read_text())
    assert f"{packed['speedup']:.2f}x" in text and packed["command"] in text and packed["date"] in text
    gpu = json.loads((ROOT / "bench" / "results" / "gpu_h200.json").read_text())
    assert f"| none | {gpu['fixes']['none']['unpacked']['step_ms']:.0f} |" in text
    reads = json.loads((ROOT / "bench" / "results" / "reads_sqlite.json").read_text())["sqlite"]
    growth = reads["growth_1000_to_10000"]["plot --kind eval"]
    assert "| `ablate plot --kind eval` |" in text and f"{growth:.2f}x" in text
    study = json.loads((ROOT / "bench" / "results" / "study_overhead_cpu.json").read_text())
    wall = next(line for line in text.splitlines() if line.startswith("| wall |"))
    assert wall.endswith(f" | {study['ratio']:.2f}x |") and study["command"] in text


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs not installed (the docs extra)")
def test_the_site_builds_strictly(tmp_path):
    """A broken link, a missing page or a page outside the nav fails the build (as in .ci/run)."""
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or "mkdocs"
    proc = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "site" / "study-specs" / "index.html").exists()


SOURCES = [p for d in ("ablate", "bench", "tools", "tests") for p in (ROOT / d).rglob("*.py")]


def test_comments_cite_only_files_in_the_repository():
    """No 'DESIGN.md §n': a cited docs page exists, and a cited section is a heading of that page."""
    for path in SOURCES:
        text = path.read_text()
        assert "DESIGN.md" not in text or path.name == "test_docs.py", path
        for page, section in re.findall(r"(docs/[a-z-]+\.md)(?:, \"([^\"]+)\")?", text):
            target = ROOT / page
            assert target.exists(), f"{path.relative_to(ROOT)} cites {page}"
            if section:
                headings = re.findall(r"^#+ (.+)$", target.read_text(), re.M)
                assert section in headings, f'{path.relative_to(ROOT)} cites {page}, "{section}"'


def test_readme_starts_a_newcomer():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 160
    for command in (
        "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/ablate study run studies/quick.toml",
        "python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' && .venv/bin/python -m pytest -q",
    ):
        assert command in readme
    # every ablate command after the set-up runs from the environment the set-up made
    shown = re.findall(r"^(?:\$ )?(\S*ablate) ", readme, re.M)
    assert shown and set(shown) == {".venv/bin/ablate"}, set(shown)
    for page in re.findall(r"\((docs/[a-z-]+\.md)(?:#[a-z0-9-]+)?\)", readme):
        assert (ROOT / page).exists(), page
    assert not re.search(r"load (average )?\d|before the change|previous release", readme)


def test_parity_lists_every_class_name():
    """docs/parity.md's class-name table is every name of ablate/subjects/aaclip/data/class_names.toml."""
    from ablate.subjects.aaclip.data.names import aaclip_names, datasets

    text = (ROOT / "docs" / "parity.md").read_text()
    listed = set(re.findall(r"^\| `([a-z_0-9]+)` \| `([^`]+)` \| (.+?) \|$", text, flags=re.M))
    every = {(d, cls, name) for d in datasets() for cls, name in aaclip_names(d).items()}
    assert len(every) == 43 and listed == every
