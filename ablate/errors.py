"""Errors that mean "the user asked for something invalid" (the CLI maps them to exit code 2)."""


class AblateInputError(ValueError):
    """Bad input: a one-line message naming the field or argument at fault."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")
