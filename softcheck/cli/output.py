"""Output of a run: the console, report files, the progress bar, the exit code."""

from __future__ import annotations

import contextlib
import functools
import os

import click

from ..spec import SoftcheckError
from .app import EXIT_FAIL, EXIT_OK


def check_outputs(*paths) -> None:
    """Fail before any work if an output cannot be written (exit 2, nothing written)."""
    for p in paths:
        if p is None or p == "-":
            continue
        d = os.path.dirname(os.path.abspath(p)) or "."
        if not os.path.isdir(d):
            raise SoftcheckError(f"cannot write {p}: folder {d} does not exist")
        if not os.access(d, os.W_OK) or (os.path.exists(p) and not os.access(p, os.W_OK)):
            raise SoftcheckError(f"cannot write {p}: permission denied")
        if os.path.isdir(p):
            raise SoftcheckError(f"cannot write {p}: it is a folder")


def make_console(stderr: bool):
    from rich.console import Console

    force = None
    if os.environ.get("FORCE_COLOR"):
        force = True
    no_color = bool(os.environ.get("NO_COLOR")) and not force
    return Console(stderr=stderr, force_terminal=force, no_color=no_color, highlight=False,
                   soft_wrap=False)


def emit(report, json_path, junit_path, markdown_path, *, quiet: bool = False) -> int:
    """Write the reports, render the table, and return the exit code."""
    from ..report import FORMATS
    from ..report.console import render_table
    from ..report.files import write_atomic

    to_stdout = json_path == "-"
    console = make_console(stderr=to_stdout)
    if not quiet:
        render_table(report, console)
    for fmt, path in (("json", json_path), ("junit", junit_path), ("markdown", markdown_path)):
        if path and path != "-":
            write_atomic(path, FORMATS[fmt](report))
    if to_stdout:
        click.echo(report.to_json())
    return EXIT_OK if report.passed else EXIT_FAIL


def execute(compute, devices, json_path, junit_path, markdown_path) -> int:
    """Set the devices up, mark every report path as an incomplete run, compute the report
    (with a progress bar where one belongs), write and render it, and return the exit code."""
    from ..reference.jaxsetup import configure
    from ..report import incomplete
    from ..report.files import write_atomic

    configure(devices)
    for fmt, path in (("json", json_path), ("junit", junit_path), ("markdown", markdown_path)):
        if path and path != "-":
            write_atomic(path, incomplete(fmt))
    with progress_bar(json_path) as bar:
        report = compute(bar)
    return emit(report, json_path, junit_path, markdown_path)


class _LazyBar:
    """A rich progress bar (cases done, the case in progress, rate, ETA) that appears only once
    the work has taken over a second (a timer: also during one long case), on a terminal."""

    DELAY = 1.0

    def __init__(self, console):
        import threading
        import time

        self.console, self.t0 = console, time.perf_counter()
        self.done, self.total, self.current = 0, None, ""
        self.bar = self.task = None
        self.lock = threading.Lock()
        self.timer = threading.Timer(self.DELAY, self._show)
        self.timer.daemon = True

    def start(self, total: int) -> None:
        self.total = total
        self.timer.start()

    def case_started(self, name: str) -> None:
        self.current = name
        self._update()

    def __call__(self, result) -> None:
        self.done += 1
        self._update()

    def _show(self) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        with self.lock:
            if self.bar is not None:      # shown already, or closed
                return
            self.bar = Progress(BarColumn(bar_width=12),
                                MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                TextColumn("{task.fields[case]}", style="dim"),
                                console=self.console, transient=True)
            self.task = self.bar.add_task("cases", total=self.total, rate="", case="")
            self.bar.start()
        self._update()

    def _update(self) -> None:
        import time

        with self.lock:
            if not self.bar:
                return
            rate = self.done / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.update(self.task, completed=self.done, total=self.total,
                            rate=f"{rate:.1f} cases/s", case=self.current[:24])

    def close(self) -> None:
        self.timer.cancel()
        with self.lock:
            if self.bar is not None:
                self.bar.stop()
            self.bar = False        # never again, even if the timer fires late


@contextlib.contextmanager
def progress_bar(json_path):
    """The progress callback for a run: a lazy bar on a terminal, nothing otherwise (never
    with ``--json -``: stdout is for the JSON, and a pipe is not a terminal)."""
    console = make_console(stderr=json_path == "-")
    if json_path == "-" or not console.is_terminal or os.environ.get("SOFTCHECK_NO_PROGRESS"):
        yield None
        return
    bar = _LazyBar(console)
    try:
        yield bar
    finally:
        bar.close()


def with_outputs(fn):
    """Report paths checked and made absolute before any work (a later chdir, by softcheck
    or an in-process candidate, cannot redirect them)."""
    @functools.wraps(fn)
    def wrapper(**kw):
        for k in ("json_path", "junit_path", "markdown_path"):
            if kw.get(k) and kw[k] != "-":
                kw[k] = os.path.abspath(kw[k])
        check_outputs(kw.get("json_path"), kw.get("junit_path"), kw.get("markdown_path"))
        return fn(**kw)

    return wrapper
