"""The command group: every invocation error one line on stderr; the exit codes, defined once.

Exit codes: 0 every case agrees, 1 something is wrong (a case failed), 2 the check could not
run (bad option, bad TARGET, unwritable output, ...), 3 an internal error (a softcheck bug).
"""

from __future__ import annotations

import os
import sys

import click

from ..spec import SoftcheckError

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


class Group(click.Group):
    """Turns every invocation error into one line on stderr and exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in argv or os.environ.get("SOFTCHECK_DEBUG") == "1"
        try:
            rv = super().main(argv, prog_name or "softcheck", complete_var,
                              standalone_mode=False, **extra)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            _error("aborted")
            sys.exit(130)
        except click.ClickException as e:
            if debug:
                raise
            hint = ""
            ctx = getattr(e, "ctx", None)
            if ctx is not None:
                hint = f" (see '{ctx.command_path} --help')"
            _error(f"{e.format_message()}{hint}")
            sys.exit(EXIT_USAGE)
        except SoftcheckError as e:
            if debug:
                raise
            _error(str(e))
            sys.exit(EXIT_USAGE)
        except Exception as e:  # noqa: BLE001 - never a traceback without --debug
            if debug:
                raise
            _error(f"internal error: {type(e).__name__}: {e}: this is a softcheck bug, please "
                   "report it (rerun with --debug for the traceback)")
            sys.exit(EXIT_INTERNAL)
        sys.exit(rv if isinstance(rv, int) else EXIT_OK)


def _error(msg: str) -> None:
    """One line on stderr; a candidate's words in it (a TARGET that failed to import) are
    shown, never obeyed by the terminal (report/escape.py)."""
    from ..report.escape import plain

    msg = " ".join(plain(msg).split())
    click.echo(f"softcheck: error: {msg}", err=True)
