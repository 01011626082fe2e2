"""The ``ablate`` command: thin layer that parses, calls the library, prints (rich) or emits JSON.

One module per command (parse -> one library call -> print); ``app`` holds the shared options,
``common`` the shared output helpers, ``entry`` the exit codes and signals.
Exit codes: 0 success, 2 bad input (one line naming the argument), 1 a run that failed.
"""

from ablate.cli import (  # noqa: F401 - registers the commands
    compare,
    db,
    export,
    launch,
    plot,
    probe,
    query,
    report,
    study,
    subject,
    train,
)
from ablate.cli.app import app
from ablate.cli.entry import main

__all__ = ["app", "main"]
