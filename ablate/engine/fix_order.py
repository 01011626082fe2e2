"""The fix registry's names, in registry order, without importing torch.

The registry (``ablate/engine/fixes.py``) is the one place that knows fix names, but its classes are
torch modules, and read commands (``ablate plot``, ``ablate query``) must not import torch (about
2 s and 600 MB). Their display order and colours follow the registry, so this module reads the
names from the registry's source: each ``@register`` class's ``name``, a string or a module-level
string constant. ``tests/test_plot.py`` checks the result equals ``fixes.fix_names()``, so a fix
registered in some other way fails a test instead of silently dropping out of the plots.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

FIXES_SOURCE = Path(__file__).with_name("fixes.py")


def _string(node: ast.expr, constants: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    return None


@cache
def registry_names() -> tuple[tuple[str, ...], str]:
    """(the registered fix names in registry order, the name of the no-branch reference arm)."""
    tree = ast.parse(FIXES_SOURCE.read_text(encoding="utf-8"))
    constants: dict[str, str] = {}
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = _string(node.value, constants)
            if value is not None:
                constants[node.targets[0].id] = value
        elif isinstance(node, ast.ClassDef) and any(
            isinstance(d, ast.Name) and d.id == "register" for d in node.decorator_list
        ):
            for stmt in node.body:
                if (
                    isinstance(stmt, ast.Assign)
                    and len(stmt.targets) == 1
                    and isinstance(stmt.targets[0], ast.Name)
                    and stmt.targets[0].id == "name"
                ):
                    value = _string(stmt.value, constants)
                    if value is None:
                        raise RuntimeError(f"{FIXES_SOURCE}: fix class {node.name} has a name that is not a string")
                    names.append(value)
    if "NO_BRANCH" not in constants:
        raise RuntimeError(f"{FIXES_SOURCE}: no NO_BRANCH constant")
    return tuple(names), constants["NO_BRANCH"]
