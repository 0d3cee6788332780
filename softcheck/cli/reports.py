"""The report files of a run, which only softcheck's own process writes: marked as an
incomplete run before anything else happens, replaced by the verdict only when the run ends
(all of them together, each atomically), and marked interrupted on SIGTERM, SIGINT or SIGHUP.

"Before anything else" is before the command parses its options: :class:`ReportsFirst`
reads the report paths off the command line as soon as the command is known and replaces
every report file already there (an earlier run's), so a bad option, a TARGET with a syntax
error or a TARGET that calls ``sys.exit(0)`` as it is imported all leave a report that
fails, never the passing report of an earlier run.  A path with no file yet gets its marker
when the run starts (``output.execute``): a command line that cannot run writes nothing new.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import click

from ..spec import SoftcheckError
from .app import Group

#: the report options (their parameter names) and the format each writes
FORMATS = {"json_path": "json", "junit_path": "junit", "markdown_path": "markdown"}
#: the signals that end a run with an incomplete report (exit 128 + the signal's number)
SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, n))

#: report path -> format, of this process's run (mark), and the signal that interrupted it
_MARKED: dict[str, str] = {}
_SIGNALLED: list[int] = []


class Interrupted(KeyboardInterrupt):
    """A signal in :data:`SIGNALS` arrived: the run ends, its reports say incomplete."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def report_paths(cmd: click.Command, args: list[str], helps=("--help",)) -> dict[str, str]:
    """The report files a command line names (absolute path -> format), read before the
    command parses it; none when it asks for help (``helps``: nothing runs) nor for ``-``
    (stdout)."""
    names = {}
    for p in cmd.params:
        if isinstance(p, click.Option) and p.name in FORMATS:
            names.update((o, FORMATS[p.name]) for o in p.opts)
    found: dict[str, str] = {}
    args = list(args)
    for i, a in enumerate(args):
        if a == "--":
            break
        if a in helps:
            return {}
        opt, eq, value = a.partition("=")
        if opt in names and not eq and i + 1 < len(args):
            value, eq = args[i + 1], "="
        if opt in names and eq and value and not value.startswith("-"):    # -: stdout
            found[os.path.abspath(value)] = names[opt]
    return found


def files(json_path, junit_path, markdown_path) -> dict[str, str]:
    """A command's report files (path -> format), stdout left out."""
    given = zip((json_path, junit_path, markdown_path), FORMATS.values())
    return {p: fmt for p, fmt in given if p and p != "-"}


def mark(paths: dict[str, str], *, existing_only: bool = False) -> None:
    """Check every report path can be written (exit 2 if one cannot), then replace each with
    the marker of an incomplete run (``existing_only``: each that is a file already)."""
    from ..report import incomplete
    from ..report.files import writable, write_all

    for p in paths:
        why = writable(p)
        if why:
            raise SoftcheckError(f"cannot write {p}: {why}")
    if existing_only:
        paths = {p: fmt for p, fmt in paths.items() if os.path.lexists(p)}
    _MARKED.update(paths)
    try:
        write_all({p: incomplete(fmt) for p, fmt in paths.items()})
    except OSError as e:
        raise SoftcheckError(f"cannot write the reports: {e.strerror or e}") from e


def write_final(texts: dict[str, str]) -> None:
    """The verdict over the markers, every report at once; none if a signal came first (the
    markers stay: a run that was interrupted has no verdict)."""
    from ..report.files import write_all

    if _SIGNALLED:
        raise Interrupted(_SIGNALLED[0])
    try:
        write_all(texts)
    except OSError as e:
        raise SoftcheckError(f"cannot write the reports ({e.strerror or e}): each still "
                             "says the run is incomplete") from e


#: seconds the run may take to wind down after a signal before softcheck ends regardless
GRACE = 5.0
_SAID = threading.Lock()


#: the first signal's Interrupted was swallowed (raised inside a gc callback, a __del__):
#: the signal is sent again, and raises again where it can propagate
_AGAIN: list[int] = []


def _unraisable(unraisable) -> None:
    """sys.unraisablehook: an Interrupted raised where Python can only ignore exceptions
    (JAX's gc callback, while it imports) is raised again a moment later, not printed."""
    exc = unraisable.exc_value
    if isinstance(exc, Interrupted):
        _AGAIN.append(exc.signum)
        again = threading.Timer(0.01, os.kill, (os.getpid(), exc.signum))
        again.daemon = True
        again.start()
        return
    sys.__unraisablehook__(unraisable)


def _on_signal(signum, frame) -> None:
    """End the run: stop the pool's processes (their cases have no verdict to wait for),
    raise :class:`Interrupted` in the main thread, and end the process after :data:`GRACE`
    seconds if unwinding hangs (a pool or a thread waiting on a case)."""
    if _AGAIN:                          # the first one's Interrupted was swallowed
        raise Interrupted(_AGAIN.pop())
    if _SIGNALLED:                      # the second one: end now, the markers are in place
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _SIGNALLED.append(signum)
    import multiprocessing

    for child in multiprocessing.active_children():
        child.terminate()
    timer = threading.Timer(GRACE, lambda: os._exit(_interrupted(signum)))
    timer.daemon = True               # never cancelled: the exit itself may hang
    timer.start()
    raise Interrupted(signum)


def _interrupted(signum: int) -> int:
    """Mark the reports interrupted, say so on one line (once), and return the exit code."""
    from ..report import incomplete
    from ..report.files import write_all

    if not _SAID.acquire(blocking=False):
        return 128 + signum
    name = signal.Signals(signum).name
    reason = f"incomplete run: softcheck was interrupted by {name} before it finished"
    try:
        write_all({p: incomplete(fmt, reason) for p, fmt in _MARKED.items()})
    except OSError:
        pass                            # the first markers stay, and say incomplete
    said = "; the reports say incomplete" if _MARKED else ""
    click.echo(f"softcheck: error: interrupted by {name}{said}", err=True)
    return 128 + signum


class ReportsFirst(Group):
    """The command group: marks a command's report files incomplete before the command
    parses its options, imports what renders them before any candidate runs, and ends on
    SIGTERM/SIGINT/SIGHUP with exit 128 + the signal and the reports saying incomplete."""

    def resolve_command(self, ctx, args):
        name, cmd, rest = super().resolve_command(ctx, args)
        if (cmd is not None and not ctx.resilient_parsing
                and any(p.name in FORMATS for p in cmd.params)):
            helps = cmd.get_help_option_names(ctx)
            mark(report_paths(cmd, rest, helps), existing_only=True)
            if not set(rest) & set(helps):
                from ..report import preload

                preload()
        return name, cmd, rest

    def invoke(self, ctx):
        main = threading.current_thread() is threading.main_thread()
        before = {}
        for s in SIGNALS if main else ():
            if signal.getsignal(s) in (signal.SIG_DFL, signal.default_int_handler):
                before[s] = signal.signal(s, _on_signal)
        hook = sys.unraisablehook
        if before:
            sys.unraisablehook = _unraisable
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as e:
            return _interrupted(getattr(e, "signum", signal.SIGINT))
        finally:
            sys.unraisablehook = hook
            for s, h in before.items():
                signal.signal(s, h)
            _MARKED.clear()
            _SIGNALLED.clear()
            if _SAID.locked():
                _SAID.release()
