"""The ``ablate`` entry point: exit codes, signals, one-line errors."""

from __future__ import annotations

import os
import sys

import typer

from ablate.cli.app import app
from ablate.cli.common import one_line
from ablate.errors import AblateInputError


def _fail(message: str, code: int) -> None:
    # Plain stderr, one line: rich would wrap long messages at the terminal width.
    sys.stderr.write(message + "\n")
    _exit(code)


def _exit(code: int) -> None:
    if _own_process:
        # Python's shutdown collects every object torch and open_clip created (over a second, for
        # nothing: the process ends); frozen, they are left to the exit. Exit handlers still run, and
        # the standard streams are still flushed.
        import gc

        gc.freeze()
    sys.exit(code)


def _input_error_line(exc: AblateInputError) -> str:
    # Top-level fields are CLI options here ("scale" -> "--scale"); dotted ones are spec fields.
    # Positional arguments (SPEC) stay upper case.
    from ablate.errors import SpecInputError

    keep = isinstance(exc, SpecInputError) or "." in exc.field or exc.field.startswith("-") or exc.field.isupper()
    field = exc.field if keep else "--" + exc.field.replace("_", "-")
    return f"error: {field}: {' '.join(exc.message.split())}"


def _usage_line(exc: Exception) -> str:
    """Click's parse error as one line; an unknown option is named first, with the option it was
    probably meant to be (``error: --stpes: no such option (did you mean --steps?)``)."""
    from ablate.errors import did_you_mean

    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoSuchOption" and ctx is not None:
        name = exc.option_name  # type: ignore[attr-defined]
        options = [o for p in ctx.command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")]
        return f"error: {name}: no such option{did_you_mean(name, options, quote=False)}"
    return "error: " + " ".join(exc.format_message().split())  # type: ignore[attr-defined]


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is (the running run is marked failed, Optuna's trial FAIL), exit 143."""

    signum = 15  # what a supervisor of local workers forwards to them (ablate/launch/local.py)


_terminated = False  # click turns any KeyboardInterrupt into Abort; this says which signal it was
_stopping = False


def _on_stop_signal(signum: int, _frame: object) -> None:
    """The first SIGINT or SIGTERM stops the work; later ones are ignored until the database is
    consistent. (A second Ctrl-C inside Optuna's own clean-up left a trial RUNNING and crashed it
    with UnboundLocalError; SIGKILL still stops at once, and the next worker repairs after it.)"""
    import signal

    global _terminated, _stopping
    if _stopping:
        return
    _stopping = True
    _terminated = signum == signal.SIGTERM
    raise Terminated() if _terminated else KeyboardInterrupt()


_own_process = False  # main() runs as the `ablate` process (not called in-process by tests)


def _fail_interrupted() -> None:
    code, word = (143, "terminated") if _terminated else (130, "interrupted")
    if _own_process:
        # The database is consistent now. Python's shutdown (torch's teardown takes seconds) restores
        # the default SIGINT handler, so a second Ctrl-C in that window killed the process with
        # signal 2 instead of exit 130; nothing is left to flush but the streams, so leave at once.
        sys.stderr.write(f"{word}; run the same command again to resume\n")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _fail(f"{word}; run the same command again to resume", code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input exits 2 with one line, a failed run exits 1, Ctrl-C exits 130, SIGTERM 143."""
    import signal

    from ablate.errors import NonFiniteLossError

    global _own_process
    _own_process = argv is None
    if _own_process:
        from ablate import timers

        timers.write_on_exit()  # only when $ABLATE_TIMINGS names a file

    signal.signal(signal.SIGTERM, _on_stop_signal)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when the shell ignores it
        signal.signal(signal.SIGINT, _on_stop_signal)
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=argv, prog_name="ablate", standalone_mode=False)
    except AblateInputError as exc:
        _fail(_input_error_line(exc), 2)
    except KeyboardInterrupt:
        _fail_interrupted()
    except NonFiniteLossError as exc:
        _fail(f"run failed: {exc}", 1)
    except Exception as exc:
        # Typer vendors click; its parse errors carry exit_code 2 and a formatted message.
        if getattr(exc, "exit_code", None) == 2 and hasattr(exc, "format_message"):
            ctx = getattr(exc, "ctx", None)
            if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
                sys.stdout.write(ctx.get_help() + "\n")
                sys.exit(0)
            _fail(_usage_line(exc), 2)
        if type(exc).__name__ == "Abort":
            _fail_interrupted()
        if os.environ.get("ABLATE_DEBUG"):
            raise
        _fail(f"run failed: {type(exc).__name__}: {one_line(exc)} (ABLATE_DEBUG=1 for a traceback)", 1)
    if rv == 130:  # Typer turns Ctrl-C inside a command into exit code 130
        _fail_interrupted()
    _exit(rv if isinstance(rv, int) else 0)
