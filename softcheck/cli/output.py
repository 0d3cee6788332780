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
    from ..report.files import writable

    for p in paths:
        if p is None or p == "-":
            continue
        why = writable(p)
        if why:
            raise SoftcheckError(f"cannot write {p}: {why}")


def make_console(stderr: bool):
    from rich.console import Console

    force = None
    if os.environ.get("FORCE_COLOR"):
        force = True
    no_color = bool(os.environ.get("NO_COLOR")) and not force
    return Console(stderr=stderr, force_terminal=force, no_color=no_color, highlight=False,
                   soft_wrap=False)


def emit(report, json_path, junit_path, markdown_path, *, quiet: bool = False,
         verbose: bool = False, detail: str | None = None) -> int:
    """Write the reports (every one rendered first, then all together over the markers of
    the run), render the table, and return the exit code."""
    from ..report import FORMATS
    from ..report.console import render_table
    from ..report.text import passed
    from .reports import files, write_final

    write_final({path: FORMATS[fmt](report, detail) if fmt == "json" else FORMATS[fmt](report)
                 for path, fmt in files(json_path, junit_path, markdown_path).items()})
    to_stdout = json_path == "-"
    if not quiet:
        render_table(report, make_console(stderr=to_stdout), verbose=verbose)
    if to_stdout:
        click.echo(FORMATS["json"](report, detail))
    return EXIT_OK if passed(report) else EXIT_FAIL


#: a run predicted to take longer than this says so before it starts (seconds)
LONG_RUN = 120.0


def execute(compute, devices, json_path, junit_path, markdown_path, *, verbose: bool = False,
            detail: str | None = None, estimate=None) -> int:
    """Set the devices up, mark every report path as an incomplete run (those that held a
    report were marked before the command parsed its options: cli/reports.py), say how long a
    long run will take, compute the report (with a progress bar on a terminal, progress lines
    on stderr otherwise), write and render it, and return the exit code."""
    from ..reference.jaxsetup import configure
    from .reports import files, mark

    configure(devices)
    mark(files(json_path, junit_path, markdown_path))
    seconds = estimate() if estimate is not None else None
    with progress_bar(json_path, seconds) as bar:
        report = compute(bar)
    return emit(report, json_path, junit_path, markdown_path, verbose=verbose, detail=detail)


def duration(seconds: float) -> str:
    """1:05:03, 5:31 or 12 s."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    h, rest = divmod(s, 3600)
    return (f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}")


class _Quiet:
    """Progress that says nothing but the estimate of a long run, once the run starts (after
    the checks that may refuse it)."""

    def __init__(self, estimate: float | None = None):
        self.estimate = estimate

    def start(self, total: int) -> None:
        if self.estimate is not None and self.estimate > LONG_RUN:
            click.echo(f"softcheck: {total} cases, estimated to take about "
                       f"{duration(self.estimate)} (a rough model of the work; progress "
                       "follows)", err=True)

    def __call__(self, result) -> None:
        pass


class _LazyBar(_Quiet):
    """A rich progress bar (cases done, the case in progress, rate, ETA) that appears only once
    the work has taken over a second (a timer: also during one long case), on a terminal."""

    DELAY = 1.0
    #: the columns before the case's: bar, done/total, rate, elapsed, ETA (a 999/999 run)
    FIXED = 12 + 8 + 16 + 8 + 4 + 8 + 2

    def __init__(self, console, estimate: float | None = None):
        import threading
        import time

        super().__init__(estimate)
        self.console, self.t0 = console, time.perf_counter()
        self.done, self.total, self.current = 0, None, ""
        self.blocks, self.detail = None, ""
        self.bar = self.task = None
        self.lock = threading.Lock()
        self.timer = threading.Timer(self.DELAY, self._show)
        self.timer.daemon = True

    def start(self, total: int) -> None:
        super().start(total)
        self.total = total
        self.timer.start()

    def case_started(self, name: str) -> None:
        self.current, self.blocks, self.detail = name, None, ""
        self._update()

    def block(self, done: int, total: int) -> None:
        """One long case's progress: blocks of rows judged, their rate and the case's ETA."""
        import time

        now = time.perf_counter()
        if self.blocks is None or done <= 1:
            self.blocks = (now, done)
        t_start, d0 = self.blocks
        rate = (done - d0) / max(now - t_start, 1e-9)
        eta = f", ETA {duration((total - done) / rate)}" if rate > 0 and done > d0 else ""
        self.detail = f"block {done}/{total} ({rate:.1f}/s{eta})"
        self._update()

    def __call__(self, result) -> None:
        self.done += 1
        self.detail = ""
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
            room = max(12, self.console.width - self.FIXED)      # one line, never wrapped
            case = (self.current[:24] + " " + self.detail).rstrip()
            self.bar.update(self.task, completed=self.done, total=self.total,
                            rate=f"{rate:.1f} cases/s",
                            case=case if len(case) <= room else case[:room - 1] + "…")

    def close(self) -> None:
        self.timer.cancel()
        with self.lock:
            if self.bar is not None:
                self.bar.stop()
            self.bar = False        # never again, even if the timer fires late


class _Lines(_Quiet):
    """Without a terminal (a CI log): one line on stderr every ``interval`` seconds — cases
    done, elapsed, an estimate of the time left (from the pace so far, else the model)."""

    def __init__(self, interval: float, estimate: float | None):
        import threading
        import time

        super().__init__(estimate)
        self.t0, self.interval = time.perf_counter(), interval
        self.done, self.total = 0, None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def start(self, total: int) -> None:
        super().start(total)
        self.total = total
        self.thread.start()

    def __call__(self, result) -> None:
        self.done += 1

    def _loop(self) -> None:
        while not self.stop.wait(self.interval):
            click.echo(self.line(), err=True)

    def line(self) -> str:
        import time

        elapsed = time.perf_counter() - self.t0
        left = None
        if self.done and self.total:
            left = elapsed / self.done * (self.total - self.done)
        elif self.estimate is not None:
            left = max(self.estimate - elapsed, 0.0)
        tail = f", ~{duration(left)} left" if left is not None else ""
        return (f"softcheck: {self.done}/{self.total if self.total is not None else '?'} cases "
                f"done, {duration(elapsed)} elapsed{tail}")

    def close(self) -> None:
        self.stop.set()


#: seconds between progress lines without a terminal (SOFTCHECK_PROGRESS_INTERVAL overrides)
LINE_INTERVAL = 30.0


@contextlib.contextmanager
def progress_bar(json_path, estimate: float | None = None):
    """The progress callback for a run: a lazy bar on a terminal, progress lines on stderr
    otherwise; none with SOFTCHECK_NO_PROGRESS (and no bar with ``--json -``: the bar would
    share the terminal with the JSON)."""
    if os.environ.get("SOFTCHECK_NO_PROGRESS"):
        yield _Quiet(estimate)
        return
    console = make_console(stderr=json_path == "-")
    if json_path == "-" or not console.is_terminal:
        try:
            interval = float(os.environ.get("SOFTCHECK_PROGRESS_INTERVAL", LINE_INTERVAL))
        except ValueError:
            raise SoftcheckError("SOFTCHECK_PROGRESS_INTERVAL must be a number of seconds")
        lines = _Lines(max(interval, 0.05), estimate)
        try:
            yield lines
        finally:
            lines.close()
        return
    bar = _LazyBar(console, estimate)
    try:
        yield bar
    finally:
        bar.close()


def with_outputs(fn):
    """Report paths made absolute before any work (a later chdir, by softcheck or an
    in-process candidate, cannot redirect them); cli/reports.py checked and marked them."""
    @functools.wraps(fn)
    def wrapper(**kw):
        for k in ("json_path", "junit_path", "markdown_path"):
            if kw.get(k) and kw[k] != "-":
                kw[k] = os.path.abspath(kw[k])
        return fn(**kw)

    return wrapper
