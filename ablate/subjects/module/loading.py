"""Importing the user's ``"module:attr"`` references, with the spec's folder on ``sys.path``."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

from ablate.errors import AblateInputError, did_you_mean


def import_ref(ref: str, path: str, field: str) -> Callable[..., Any]:
    """The callable ``ref`` names (``"package.module:function"``); ``path`` is put first on
    ``sys.path``. Anything that goes wrong is the user's input: one line naming ``field``."""
    module_name, _, attr = ref.partition(":")
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        where = f" (looked in {path} and the installed packages)" if exc.name == module_name.split(".")[0] else ""
        missing = exc.name or module_name
        # the spec's own folder first: a typo there is likelier than one of an installed package
        hint = did_you_mean(missing, _modules_beside(missing, [path])) or did_you_mean(
            missing, _modules_beside(missing, sys.path)
        )
        raise AblateInputError(field, f"cannot import {module_name!r}: {exc}{where}{hint}") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
        raise AblateInputError(field, f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            hint = did_you_mean(part, [n for n in dir(target) if not n.startswith("__")])
            raise AblateInputError(field, f"{module_name!r} has no attribute {attr!r}{hint}")
        target = getattr(target, part)
    if not callable(target):
        raise AblateInputError(field, f"{ref} is not callable")
    return target


def _modules_beside(missing: str, folders: list[str]) -> list[str]:
    """The importable names a typo of ``missing`` may have meant: the modules in ``folders`` for a
    top-level name, a package's own modules for ``package.name``."""
    import pkgutil

    parent, _, _ = missing.rpartition(".")
    if not parent:
        return [m.name for m in pkgutil.iter_modules(folders)]
    try:
        package = importlib.import_module(parent)
    except Exception:  # noqa: BLE001 - only a hint: a parent that cannot be imported suggests nothing
        return []
    return [f"{parent}.{m.name}" for m in pkgutil.iter_modules(getattr(package, "__path__", []))]


def call_user(fn: Callable[..., Any], field: str, *args: Any, **kwargs: Any) -> Any:
    """Call the user's function; an exception in it is reported as the input it came from."""
    try:
        return fn(*args, **kwargs)
    except AblateInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code, not ours
        line = " ".join(str(exc).split()) or type(exc).__name__
        raise AblateInputError(field, f"{type(exc).__name__} in {getattr(fn, '__name__', fn)}: {line}") from None
