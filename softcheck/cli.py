"""The command line: parse, call the library, render, pick the exit code. Nothing else.

Exit codes: 0 every case agrees, 1 something is wrong (a case failed), 2 the check could not
run (bad option, bad TARGET, unwritable output, ...): one line on stderr, no traceback unless
``--debug``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys

import click
import numpy as np

from .spec import SoftcheckError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


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
            _error(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)")
            sys.exit(EXIT_USAGE)
        sys.exit(rv if isinstance(rv, int) else EXIT_OK)


def _error(msg: str) -> None:
    msg = " ".join(str(msg).split())
    click.echo(f"softcheck: error: {msg}", err=True)


class CommaList(click.ParamType):
    """One value or a comma-separated list (an axis of the suite)."""

    def __init__(self, kind=str):
        self.kind = kind
        self.name = f"{kind.__name__}[,{kind.__name__}...]"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        out = []
        for part in str(value).split(","):
            part = part.strip()
            try:
                out.append(self.kind(part))
            except ValueError:
                self.fail(f"{part!r} is not a valid {self.kind.__name__}", param, ctx)
        return tuple(out)


class WeightType(click.ParamType):
    name = "random|w1,w2,..."

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, tuple) or value == "random":
            return value
        try:
            return tuple(float(x) for x in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is neither 'random' nor a comma list of numbers", param, ctx)


REPORT_OPTIONS = [
    click.option("--json", "json_path", type=str, default=None,
                 help="Write the JSON report to PATH ('-': stdout, nothing else there)."),
    click.option("--junit", "junit_path", type=str, default=None, help="Write JUnit XML to PATH."),
    click.option("--markdown", "markdown_path", type=str, default=None,
                 help="Write a Markdown summary to PATH."),
    click.option("--fail-fast", is_flag=True, help="Stop at the first failing case."),
    click.option("--jobs", type=click.IntRange(1), default=1, show_default=True,
                 help="Worker processes for independent cases (used when the work repays "
                      "their start-up, ~1.5 s each)."),
    click.option("--devices", type=click.IntRange(1), default=None,
                 help="Shard finite differences over N XLA host devices (CPU; a GPU backend "
                      "uses its own devices).  [default: JAX's]"),
    click.option("--debug", is_flag=True, help="Show tracebacks."),
]


def report_options(fn):
    for o in reversed(REPORT_OPTIONS):
        fn = o(fn)
    return fn


def suite_options(fn):
    """The options of ``run``, ``check`` (and the keys of batch files)."""
    opts = [
        click.option("--classes", type=CommaList(int), default="10", show_default=True,
                     help="Number of classes C (comma list: one value per case)."),
        click.option("--batch", type=CommaList(int), help="Batch sizes N [default: 1,6]."),
        click.option("--dtype", type=CommaList(str),
                     help="float64, float32, bfloat16, float16 [run default: all; check: float64,float32]."),
        click.option("--targets", type=CommaList(str),
                     help="index, onehot, probs [run default: all; check: index]."),
        click.option("--reduction", type=CommaList(str),
                     help="mean, sum, none [run default: all; check: mean]."),
        click.option("--regime", type=CommaList(str),
                     help="normal, large, tied, confident, wrong, masked, all-ignored [default: all]."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of every input."),
        click.option("--weight", type=WeightType(), default=None,
                     help="Class weights: 'random' or C comma-separated values."),
        click.option("--ignore-index", type=int, default=None,
                     help="Targets equal to it contribute nothing (PyTorch ignore_index)."),
        click.option("--label-smoothing", type=float, default=0.0, show_default=True,
                     help="EPS in [0, 1]."),
        click.option("--smoothing-convention", type=click.Choice(["uniform", "others"]),
                     default="uniform", show_default=True,
                     help="uniform: EPS/C on every class (PyTorch); others: EPS/(C-1) off-target."),
        click.option("--temperature", type=float, default=1.0, show_default=True,
                     help="Logits divided by T (> 0)."),
        click.option("--softcap", type=float, default=None, help="Logits -> S*tanh(z/S) (> 0)."),
        click.option("--z-loss", type=float, default=0.0, show_default=True,
                     help="Adds COEF*lse^2 per non-ignored row (>= 0)."),
        click.option("--fd", type=click.Choice(["central", "richardson", "complex"]), default=None,
                     help="Finite-difference method [default: most accurate affordable]."),
        click.option("--order", type=click.IntRange(1, 2), default=1, show_default=True,
                     help="2: check Hessian-vector products."),
        click.option("--probes", type=click.IntRange(0), default=8, show_default=True,
                     help="Directional probes when FD covers a subset of columns."),
        click.option("--tolerance", type=click.Choice(["strict", "native"]), default="strict",
                     show_default=True,
                     help="bfloat16/float16 candidates: strict = float32 arithmetic and one "
                          "final rounding (fused kernels); native = also 4x the error of the "
                          "closed form computed in the dtype itself (plain framework ops)."),
        click.option("--fd-budget", type=float, default=2e9, show_default=True,
                     help="Element evaluations FD may spend per case before sampling columns."),
    ] + REPORT_OPTIONS
    for o in reversed(opts):
        fn = o(fn)
    return fn


CONFIG_KEYS = ("classes", "batch", "dtype", "targets", "reduction", "regime", "seed", "weight",
               "ignore_index", "label_smoothing", "smoothing_convention", "temperature", "softcap",
               "z_loss", "fd", "order", "probes", "fd_budget", "tolerance")


def _config(kw):
    from .api import config

    return config(**{k: kw[k] for k in CONFIG_KEYS})


def _check_outputs(*paths) -> None:
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


def _console(stderr: bool):
    from rich.console import Console

    force = None
    if os.environ.get("FORCE_COLOR"):
        force = True
    no_color = bool(os.environ.get("NO_COLOR")) and not force
    return Console(stderr=stderr, force_terminal=force, no_color=no_color, highlight=False,
                   soft_wrap=False)


def emit(report, json_path, junit_path, markdown_path, *, quiet: bool = False) -> int:
    """Write the reports, render the table, and return the exit code."""
    from . import formats

    to_stdout = json_path == "-"
    console = _console(stderr=to_stdout)
    if not quiet:
        formats.render_table(report, console)
    if json_path and json_path != "-":
        formats.write_atomic(json_path, report.to_json())
    if junit_path:
        formats.write_atomic(junit_path, formats.to_junit(report))
    if markdown_path:
        formats.write_atomic(markdown_path, formats.to_markdown(report))
    if to_stdout:
        click.echo(report.to_json())
    return EXIT_OK if report.passed else EXIT_FAIL


def _execute(compute, devices, json_path, junit_path, markdown_path) -> int:
    """Set the devices up, compute the report (with a progress bar where one belongs), write
    and render it, and return the exit code."""
    from ._jax import configure

    configure(devices)
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
    console = _console(stderr=json_path == "-")
    if json_path == "-" or not console.is_terminal or os.environ.get("SOFTCHECK_NO_PROGRESS"):
        yield None
        return
    bar = _LazyBar(console)
    try:
        yield bar
    finally:
        bar.close()


def with_outputs(fn):
    @functools.wraps(fn)
    def wrapper(**kw):
        _check_outputs(kw.get("json_path"), kw.get("junit_path"), kw.get("markdown_path"))
        return fn(**kw)

    return wrapper


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="softcheck", prog_name="softcheck")
def cli():
    """Verify softmax cross-entropy gradients three independent ways: the closed form
    (analytic), JAX autodiff, and float64 finite differences.

    Exit codes: 0 all agree, 1 something is wrong, 2 the check could not run.
    """


@cli.command()
@suite_options
@with_outputs
def run(json_path, junit_path, markdown_path, fail_fast, jobs, devices, debug, **kw):
    """Check analytic vs autodiff vs finite differences over a suite of cases.

    Every axis option (--classes, --batch, --dtype, --targets, --reduction, --regime) takes one
    value or a comma list; a given axis is pinned, the others run their default values.
    """
    from .runner import run as run_suite

    cfg = _config(kw)
    return _execute(lambda bar: run_suite(cfg, fail_fast=fail_fast, jobs=jobs, progress=bar),
                    devices, json_path, junit_path, markdown_path)


def timeout_option(help: str):
    return click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
                        help=help)


@cli.command()
@click.argument("target")
@suite_options
@timeout_option("Seconds a single call of TARGET may take before its case fails.")
@click.option("--hvp", "hvp_target", default=None,
              help="FILE.py:fn computing hvp(logits, target, v, **kw) (with --order 2).")
@with_outputs
def check(target, json_path, junit_path, markdown_path, fail_fast, jobs, devices, debug, timeout,
          hvp_target, **kw):
    """Check YOUR gradient: TARGET is path/to/file.py:function or package.module:function.

    Called as fn(logits, target, **kw) with the options it declares (weight, ignore_index,
    reduction, label_smoothing, smoothing_convention, temperature, softcap, z_loss,
    grad_output); it returns d(loss)/d(logits).  Compared with the closed form, autodiff and
    finite differences; a failing case says where and how it is wrong.
    """
    from . import candidate as cmod

    cfg = _config(kw)
    cand = cmod.load(target, hvp=hvp_target)
    return _execute(lambda bar: cmod.check_candidate(cand, cfg, timeout=timeout,
                                                     fail_fast=fail_fast, jobs=jobs, progress=bar),
                    devices, json_path, junit_path, markdown_path)


@cli.command()
@click.argument("file")
@report_options
@timeout_option("Seconds a candidate call may take (a group's 'timeout' overrides it).")
@click.option("--list", "list_only", is_flag=True,
              help="Check the file and list its groups and cases; run nothing.")
@with_outputs
def batch(file, json_path, junit_path, markdown_path, fail_fast, jobs, devices, debug, timeout,
          list_only):
    """Run the groups of a batch FILE (TOML, or JSON with the same structure).

    Each [[case]] group takes the options of run/check with underscores (classes,
    label_smoothing, ...); a list value runs every combination; 'target' (relative to FILE)
    checks a candidate, 'name' names the group.  Every case in the reports records its group.
    """
    from . import batch as bmod

    p = bmod.plan(file)
    if list_only:
        click.echo("\n".join(bmod.listing(p)))
        return EXIT_OK
    return _execute(lambda bar: bmod.run(p, fail_fast=fail_fast, jobs=jobs, timeout=timeout,
                                         progress=bar),
                    devices, json_path, junit_path, markdown_path)


@cli.command()
@click.option("--classes", type=click.IntRange(2, 64), default=4, show_default=True,
              help="Classes of the example (2 to 64).")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--targets", type=click.Choice(["index", "probs"]), default="index",
              show_default=True, help="A class index (one-hot y) or a probability vector.")
@click.option("--label-smoothing", type=float, default=0.0, help="Also explain EPS in [0, 1].")
@click.option("--temperature", type=float, default=1.0, help="Also explain T > 0.")
@click.option("--softcap", type=float, default=None, help="Also explain S > 0.")
@click.option("--z-loss", type=float, default=0.0, help="Also explain COEF >= 0.")
@click.option("--weight", type=WeightType(), default=None,
              help="Also explain class weights: 'random' or C comma-separated values.")
@click.option("--json", "json_path", type=str, default=None,
              help="Write {steps: [{title, formula, max_abs_error, holds}, ...]} to PATH ('-': stdout).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def explain(classes, seed, targets, label_smoothing, temperature, softcap, z_loss, weight,
            json_path, debug):
    """Walk the derivation of the gradient (softmax, loss, Jacobian, chain rule, p − y) on one
    example, each step verified against JAX; then the classic slips, shown not to hold."""
    from . import formats
    from .explain import explain as run_explain

    _check_outputs(json_path)
    ex = run_explain(classes, seed, targets, label_smoothing=label_smoothing,
                     temperature=temperature, softcap=softcap, z_loss=z_loss, weight=weight)
    console = _console(stderr=json_path == "-")
    formats.render_explanation(ex, console)
    text = ex.to_json()
    if json_path == "-":
        click.echo(text)
    elif json_path:
        formats.write_atomic(json_path, text)
    return EXIT_OK if ex.passed else EXIT_FAIL


@cli.command()
def schema():
    """Print the JSON Schema (draft 2020-12) of the JSON report."""
    from .schema import schema_json

    click.echo(schema_json())


@cli.command()
@click.option("--classes", type=CommaList(int), default="10", show_default=True)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def mutants(classes, seed, debug):
    """Prove the checker's power: every built-in wrong gradient must be caught, and the
    correct one must pass under the same options.  Exit 0 only then."""
    from rich.table import Table

    from .mutants import run_mutants

    results = run_mutants(classes=classes, seed=seed)
    console = _console(stderr=False)
    table = Table(header_style="bold", pad_edge=False)
    for col in ("mutant", "options", "caught", "verdict"):
        table.add_column(col)
    for r in results:
        opts = ", ".join(f"{k}={v}" for k, v in r.mutant.options.items()) or "-"
        regimes = sorted({n.rsplit("-", 1)[-1] for n in r.caught})
        caught = f"{len(r.caught)}/{r.total} cases" + (f" ({', '.join(regimes)})" if regimes else "")
        verdict = ("CAUGHT" if r.ok else ("MISSED" if not r.caught else "CORRECT ONE FAILS"))
        table.add_row(r.mutant.name, opts, caught, verdict,
                      style="green" if r.ok else "bold red")
    console.print(table)
    bad = [r for r in results if not r.ok]
    console.print(f"{len(results) - len(bad)}/{len(results)} mutants caught, correct reference "
                  f"{'passes' if all(r.correct_passed for r in results) else 'FAILS'}",
                  style="bold green" if not bad else "bold red", markup=False)
    return EXIT_OK if not bad else EXIT_FAIL


@cli.command()
@click.option("--classes", type=int, default=10, show_default=True)
@click.option("--batch", type=int, default=6, show_default=True)
@click.option("--targets", type=click.Choice(["index", "onehot", "probs"]), default="index")
@click.option("--reduction", type=click.Choice(["mean", "sum", "none"]), default="mean")
@click.option("--regime", type=click.Choice(["normal", "large", "tied", "confident", "wrong",
                                             "masked"]), default="normal")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--plot", "plot_path", default=None, help="Draw the curves to PATH.png (needs softcheck[plot]).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def steps(classes, batch, targets, reduction, regime, seed, plot_path, debug):
    """Sweep the finite-difference step h over decades and print each method's error against
    the closed form: the V of truncation vs rounding, with the derived h marked (*)."""
    from rich.table import Table

    from .api import config
    from .cases import suite
    from .steps import plot, sweep

    _check_outputs(plot_path)
    cfg = config(classes=classes, batch=batch, dtype="float64", targets=targets,
                 reduction=reduction, regime=regime, seed=seed)
    case = suite(cfg)[0][0]
    sweeps = sweep(case)
    console = _console(stderr=False)
    for s in sweeps:
        table = Table(title=f"{s.method} (derived h = {s.derived:.2g})", header_style="bold",
                      pad_edge=False)
        table.add_column("h", justify="right")
        table.add_column("max error / scale", justify="right")
        best = int(np.argmin(s.errors))
        near = int(np.argmin([abs(np.log10(h / s.derived)) for h in s.steps]))
        for i, (h, e) in enumerate(zip(s.steps, s.errors)):
            mark = (" *" if i == near else "") + (" (min)" if i == best else "")
            table.add_row(f"{h:.0e}{mark}", f"{e:.1e}", style="green" if i == best else None)
        console.print(table)
    if plot_path:
        plot(sweeps, plot_path, case.name)
        console.print(f"wrote {plot_path}", markup=False)
    return EXIT_OK


def main() -> None:
    cli.main()


if __name__ == "__main__":
    main()
