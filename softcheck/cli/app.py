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


#: ``--help``'s sections, in order: an option's section by its name (the rest: "Options")
HELP_SECTIONS: dict[str, tuple[str, ...]] = {
    "What to check (axes take one value or a comma list)": (
        "classes", "batch", "dtype", "targets", "reduction", "regime", "suite", "layout",
        "ignored_fraction", "huge", "seed", "inputs", "list_only"),
    "The loss's options": (
        "weight", "ignore_index", "label_smoothing", "smoothing_convention", "temperature",
        "softcap", "z_loss", "mean_over", "logit_scale", "weight_dtype", "all_ignored"),
    "How TARGET is called": (
        "convention", "framework", "args", "rename", "returns", "backward", "hvp_target",
        "device", "timeout", "repeat", "nondet_tol", "in_process", "memory_limit", "kwarg",
        "off_value", "upstream_check"),
    "Ranks and fused linear cross-entropy": (
        "tensor_parallel", "backend", "split", "rank_setup", "hidden", "bias", "shape",
        "shift"),
    "References and tolerances": (
        "fd", "order", "probes", "fd_budget", "tolerance", "atol", "rtol"),
    "Output": (
        "json_path", "junit_path", "markdown_path", "json_detail", "verbose", "fail_fast",
        "jobs", "devices", "plot_path", "debug", "help", "_click_default_help", "version"),
}


class Command(click.Command):
    """``--help`` with defaults shown, a long list of options in :data:`HELP_SECTIONS`."""

    def __init__(self, *args, **kw):
        kw.setdefault("context_settings", {}).setdefault("show_default", True)
        super().__init__(*args, **kw)

    def format_options(self, ctx, formatter):
        if len(self.params) < 20:                      # explain, steps, ...: one list
            return super().format_options(ctx, formatter)
        rows: dict[str, list] = {}
        for param in self.get_params(ctx):
            if isinstance(param, click.Argument):      # in the usage line, not a section
                continue
            row = param.get_help_record(ctx)
            if row is not None:
                title = next((t for t, names in HELP_SECTIONS.items() if param.name in names),
                             "Options")
                rows.setdefault(title, []).append(row)
        for title in [*HELP_SECTIONS, "Options"]:
            if title in rows:
                with formatter.section(title):
                    formatter.write_dl(rows[title])


class Group(click.Group):
    """Turns every invocation error into one line on stderr and exit code 2."""

    command_class = Command

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
