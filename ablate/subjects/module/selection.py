"""Which parameters a spec's ``[subject.groups]`` name, by PEFT's rule for ``target_modules``.

A bare pattern matches a module or a parameter whose name is the pattern or ends with ``"." +
pattern`` (a module brings all its parameters); ``"re:PATTERN"`` is ``re.fullmatch`` on parameter
names. Groups must be disjoint, name only parameters that train, and never split a tied parameter.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from ablate.errors import AblateInputError

# Wrappers that prefix every name: a pattern written for the bare model then matches nothing.
WRAPPER_PREFIXES = {
    "_orig_mod.": "a torch.compile'd model",
    "module.": "a DistributedDataParallel / DataParallel model",
}


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.endswith("." + pattern)


def _wrapper_hint(names: Sequence[str]) -> str:
    for prefix, what in WRAPPER_PREFIXES.items():
        if names and all(n.startswith(prefix) for n in names):
            return (
                f" (every parameter name starts with {prefix!r}: the factory returned {what}; return the plain module)"
            )
    return ""


def match_names(model: nn.Module, patterns: Sequence[str]) -> set[str]:
    """Every parameter name (tied parameters have several) the patterns select."""
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    chosen: set[str] = set()
    for pattern in patterns:
        if pattern.startswith("re:"):
            rx = re.compile(pattern[3:])
            chosen.update(n for n in names if rx.fullmatch(n))
            continue
        chosen.update(n for n in names if _matches(n, pattern))
        for mod_name, module in model.named_modules(remove_duplicate=False):
            if mod_name and _matches(mod_name, pattern):
                chosen.update(f"{mod_name}.{n}" for n, _ in module.named_parameters(remove_duplicate=False))
    return chosen


def resolve_groups(
    model: nn.Module, groups: Sequence[tuple[str, Sequence[str]]], field: str = "subject.groups"
) -> dict[str, list[str]]:
    """Group name -> its parameters' (first) names in model order, checked: each group matches
    something, groups are disjoint, every matched parameter trains, and a tied parameter (one tensor
    under several names) is selected under all its names by one group or not at all. Errors name
    ``field.GROUP``."""
    named = list(model.named_parameters(remove_duplicate=False))
    names_of: dict[int, list[str]] = {}
    param_of: dict[str, nn.Parameter] = {}
    for n, p in named:
        names_of.setdefault(id(p), []).append(n)
        param_of[n] = p
    order = {id(p): i for i, (_, p) in enumerate(model.named_parameters())}
    owner: dict[int, str] = {}  # id(parameter) -> group
    matched_by: dict[str, set[str]] = {}
    out: dict[str, list[str]] = {}
    for group, patterns in groups:
        where = f"{field}.{group}"
        names = match_names(model, patterns)
        if not names:
            hint = _wrapper_hint([n for n, _ in named])
            raise AblateInputError(where, f"{', '.join(map(repr, patterns))} matches no parameter of the model{hint}")
        for other, seen in matched_by.items():
            both = sorted(names & seen)
            if both:
                raise AblateInputError(where, f"overlaps group {other!r}: both select {both[0]!r}")
        ids = {id(param_of[n]) for n in names}
        for pid in ids:
            if pid in owner:
                tied = " = ".join(names_of[pid])
                raise AblateInputError(
                    where, f"the tied parameter {tied} is split between {owner[pid]!r} and {group!r}"
                )
            first = names_of[pid][0]
            if not param_of[first].requires_grad:
                raise AblateInputError(where, f"selects {first!r}, which the model has frozen (requires_grad=False)")
            missing = [n for n in names_of[pid] if n not in names]
            if missing:
                tied, as_ = " = ".join(names_of[pid]), sorted(set(names_of[pid]) & names)[0]
                raise AblateInputError(
                    where, f"selects the tied parameter {tied} as {as_!r} but not as {missing[0]!r}: select all or none"
                )
            owner[pid] = group
        matched_by[group] = names
        out[group] = [names_of[pid][0] for pid in sorted(ids, key=order.__getitem__)]
    return out


def find_module(model: nn.Module, path: str, field: str) -> nn.Module:
    """The submodule at ``path`` (``""`` is the model itself); errors name ``field``."""
    if not path:
        return model
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        close = [n for n in names if n.endswith("." + path) or path.endswith("." + n)][:3]
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else _wrapper_hint(names)
        raise AblateInputError(field, f"the model has no module {path!r}{hint}") from None
