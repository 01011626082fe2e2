"""Errors that mean "the user asked for something invalid" (the CLI maps them to exit code 2)."""


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
