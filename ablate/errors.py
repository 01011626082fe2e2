"""Errors that mean "the user asked for something invalid" (the CLI maps them to exit code 2)."""

from __future__ import annotations

from collections.abc import Iterable


def close_match(word: str, choices: Iterable[str]) -> str | None:
    """The one of ``choices`` close enough to ``word`` to be what a typo meant, else None."""
    import difflib

    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.75)
    return found[0] if found else None


def did_you_mean(word: str, choices: Iterable[str], quote: bool = True) -> str:
    """' (did you mean 'X'?)' when :func:`close_match` finds one, else ''."""
    found = close_match(word, choices)
    if found is None:
        return ""
    return f" (did you mean {found!r}?)" if quote else f" (did you mean {found}?)"


class AblateInputError(ValueError):
    """Bad input: a one-line message naming the field or argument at fault."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class SpecInputError(AblateInputError):
    """Bad input inside a spec file: ``field`` is the spec's own key path (``search.scale``, ``foo``)."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; raised at the flush that saw it (its rows are flushed).

    Lives here, not in the training loop, so the CLI can catch it without importing torch.
    """

    def __init__(self, step: int) -> None:
        super().__init__(f"non-finite loss at step {step}")
        self.step = step


class SQLInputError(ValueError):
    """``query --sql`` refused a statement, or the database stopped it (error, timeout): the CLI prints
    ``error: --sql: <message>`` and exits 2."""
