"""The descriptive class names AA-CLIP's prompts use (class_names.toml beside this file)."""

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


def aaclip_names(kind: str) -> dict[str, str]:
    """Folder class -> AA-CLIP's prompt name for a data set layout (``mvtec``, ``visa``; others: none)."""
    return dict(_table().get(kind, {}))
