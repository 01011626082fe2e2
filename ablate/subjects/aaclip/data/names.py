"""The descriptive class names AA-CLIP's prompts use, per data set (class_names.toml beside this file)."""

from __future__ import annotations

import sys
from functools import cache
from importlib import resources

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@cache
def _table() -> dict[str, dict[str, str]]:
    text = resources.files(__package__).joinpath("class_names.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def datasets() -> tuple[str, ...]:
    """The data sets AA-CLIP names classes for (spec ``data.dataset`` values): mvtec, visa, mpdd, ..."""
    return tuple(_table())


def aaclip_names(dataset: str | None) -> dict[str, str]:
    """Folder class -> AA-CLIP's prompt name for one of :func:`datasets` (anything else: none)."""
    return dict(_table().get(dataset or "", {}))


def names_table(kind: str, dataset: str | None) -> str | None:
    """Which data set's names a source uses: its ``dataset``, else its layout's when the layout is one
    data set's own (``mvtec``: MVTec AD, ``visa``: VisA), else none (folder names)."""
    if dataset is not None:
        return dataset
    return kind if kind in ("mvtec", "visa") else None
