"""Helpers the commands share: threads, JSON output, tables, progress, error mapping."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ablate.cli.app import err, out_console
from ablate.errors import AblateInputError, SQLInputError


def check_threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise AblateInputError("--threads", f"must be >= 1, got {threads}")


class worker_threads:
    """Register this process as a local worker and take its share of the cores for the command."""

    def __init__(self, threads: int | None) -> None:
        from ablate.threads import LocalWorkers

        check_threads(threads)
        self.threads = threads
        self.workers = LocalWorkers()

    def __enter__(self) -> None:
        from ablate.allocator import keep_freed_memory
        from ablate.threads import apply_threads, choose_threads

        keep_freed_memory()
        self.workers.__enter__()
        apply_threads(choose_threads(self.threads, self.workers.live())[0])

    def __exit__(self, *exc: Any) -> None:
        self.workers.__exit__(*exc)


def check_trials_and_name(spec, trials: int | None, name: str | None) -> None:
    """``--trials`` and ``--name`` of a study command (study run, launch slurm/ray), checked against
    the spec before anything is written."""
    if trials is not None and trials < 1:
        raise AblateInputError("--trials", "must be >= 1")
    if trials is not None and spec.max_distinct_trials is not None and trials > spec.max_distinct_trials:
        raise AblateInputError("--trials", spec.distinct_limit_message(trials))
    if name is not None and not name.strip():
        raise AblateInputError("--name", "must not be empty")


def output_format(fmt: str | None, as_json: bool, choices: tuple[str, ...]) -> str:
    """The format asked for by ``--format`` or ``--json`` (default: the first choice). Both at once
    are refused: which one was meant cannot be told."""
    if fmt is not None and as_json:
        raise AblateInputError("--json", f"give --format {fmt} or --json, not both (--json is --format json)")
    if fmt is not None and fmt not in choices:
        raise AblateInputError("--format", f"must be {', '.join(choices[:-1])} or {choices[-1]}, got {fmt!r}")
    return "json" if as_json else fmt or choices[0]


def emit_json(doc: Any) -> None:
    from ablate.jsonout import json_value

    sys.stdout.write(json.dumps(json_value(doc), indent=2) + "\n")


def program() -> str:
    """How the user runs ``ablate``, for the commands we print for them to run next: ``ablate`` when
    their shell finds this program by that name, else the path they typed (``.venv/bin/ablate``)."""
    import shutil

    typed = sys.argv[0] if sys.argv else ""
    if os.path.basename(typed) != "ablate":  # python -m ablate, or called in-process
        return "ablate"
    found = shutil.which("ablate")
    if found and os.path.realpath(found) == os.path.realpath(typed):
        return "ablate"
    return typed


def storage_option(storage: str | None) -> str:
    """`` --storage URL`` (password masked) when the user named a database with ``--storage``, else ''
    ($ABLATE_STORAGE, if set, applies to the next command as it did to this one)."""
    from ablate.store.engine import DEFAULT_STORAGE, display_url

    return "" if not storage or storage == DEFAULT_STORAGE else f" --storage {display_url(storage)}"


def open_read(open_storage, url):
    try:
        return open_storage(url, create=False)
    except ValueError as exc:
        raise AblateInputError("--storage", str(exc)) from None


class lookup_errors:
    """A study that does not exist, or a bad --sql, is the user's input: exit 2."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is LookupError:
            raise AblateInputError("--study", str(exc).strip("'\"")) from None
        if exc_type is not None and issubclass(exc_type, SQLInputError):
            raise AblateInputError("--sql", str(exc)) from None
        if exc_type is ValueError and not isinstance(exc, AblateInputError):
            raise AblateInputError("query", str(exc)) from None
        return False


def print_view(engine, study: str | None, frame, title: str, wide: bool = False) -> None:
    from ablate import views
    from ablate.objectives import known_objectives
    from ablate.store import query as q

    if title in ("trials", "per fix") and not frame.empty:
        objectives = known_objectives(q.study_settings(engine, study)["objectives"])
        view = views.trials_view(frame, objectives) if title == "trials" else views.fixes_view(frame, objectives)
    elif title == "runs" and not frame.empty:
        view = views.runs_view(frame)
    elif title == "classes" and not frame.empty:
        view = views.classes_view(frame)
    else:
        view = views.frame_view(frame)
    print_table(title, view, wide)


def print_study_summary(url: str, name: str) -> None:
    """The study's per-fix table, ranked, with the recommendation under it: how ``study run`` and the
    launchers that wait for their workers end. The SQLite log is checkpointed first, so results.db
    alone then holds the study."""
    from ablate.store import query as q
    from ablate.store.engine import checkpoint_sqlite, open_storage

    checkpoint_sqlite(url)
    engine = open_storage(url, create=False)
    print_view(engine, name, q.group_by_fix(engine, name), "per fix")


def next_report_line(name: str, storage: str | None) -> str:
    """The command that writes the study up, as the user would type it next."""
    return (
        f"next, the study written up (Markdown, HTML) into reports/{name}: "
        f"{program()} report {name}{storage_option(storage)}"
    )


def print_table(title: str, view, wide: bool = False) -> None:
    """A view as a table that fits the console: ``tablefit`` drops low-ranked columns and says so."""
    from rich import box
    from rich.markup import escape

    from ablate import plaintable, tablefit

    console = out_console(wide)
    kept = tablefit.fit(view.columns, view.rows, None if wide else console.width)
    columns = [(view.columns[i].header, view.columns[i].justify) for i in kept]
    rows = [[row[i] for i in kept] for row in view.rows]
    caption = escape(view.caption(kept))
    text = plaintable.render(console, title, columns, rows)
    if text is not None:  # the same text, without rich's per-cell layout (0.3 ms a row)
        console.file.write(text)
    else:
        table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        for name, justify in columns:
            table.add_column(name, justify=justify)
        for row in rows:
            table.add_row(*row)
        console.print(table)
    # The notes under the table wrap at the console's width, not the (often narrower) table's.
    if caption:
        console.print(caption, style="table.caption", highlight=False)


def plain_line(quiet: bool, text: str) -> None:
    """Where stderr is no terminal (a log file, CI), a finished arm is one plain line instead of
    bar frames; a terminal has the bar."""
    if not quiet and not err.is_terminal:
        err.file.write(text + "\n")
        err.file.flush()


def progress_bar(disabled: bool) -> Progress:
    # bars on a terminal only: elsewhere rich would leave a stray frame or blank line in the log
    disabled = disabled or not err.is_terminal
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=disabled,
        transient=True,
    )


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def check_out_dir(path: str | None, option: str, what: str = "the plots") -> None:
    """Plots and reports go into a folder: refuse an existing file before any work is done."""
    if path is not None and os.path.exists(path) and not os.path.isdir(path):
        raise AblateInputError(option, f"{path} is a file; give a folder for {what}")


def print_probe_table(results: list, title: str, first: str) -> None:
    from ablate import views

    print_table(title, views.probe_view(results, first, list(results[0].groups)))
