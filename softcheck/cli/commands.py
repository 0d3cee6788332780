"""The commands: parse, call the library, render, pick the exit code. Nothing else."""

from __future__ import annotations

import click

from ..suite.config import REGIMES
from ..spec import REDUCTIONS, TARGET_KINDS
from .app import EXIT_FAIL, EXIT_OK
from .options import (DEBUG, CommaList, WeightType, call_options, candidate_options,
                      report_options, suite_options, to_config, to_policy, to_settings)
from .output import check_outputs, execute, make_console, with_outputs
from .reports import ReportsFirst


@click.group(cls=ReportsFirst, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="softcheck", prog_name="softcheck")
def cli():
    """Verify softmax cross-entropy gradients three independent ways: the closed form
    (analytic), JAX autodiff, and float64 finite differences.

    Exit codes: 0 all agree, 1 something is wrong, 2 the check could not run, 3 a softcheck
    bug.
    """


@cli.command()
@suite_options
@with_outputs
def run(json_path, junit_path, markdown_path, json_detail, verbose, fail_fast, jobs, devices,
        **kw):
    """Check analytic vs autodiff vs finite differences over a suite of cases.

    Every axis option (--classes, --batch, --dtype, --targets, --reduction, --regime) takes one
    value or a comma list; a given axis is pinned, the others run their default values.
    """
    from ..engine.suites import estimate_run, run as run_suite

    cfg = to_config(kw)
    return execute(lambda bar: run_suite(cfg, fail_fast=fail_fast, jobs=jobs, progress=bar),
                   devices, json_path, junit_path, markdown_path, verbose=verbose,
                   detail=json_detail, estimate=lambda: estimate_run(cfg))


@cli.command()
@click.argument("target")
@suite_options
@candidate_options
@click.option("--hvp", "hvp_target", default=None,
              help="FILE.py:fn computing hvp(logits, target, v, **kw) (with --order 2).")
@call_options
@with_outputs
def check(target, json_path, junit_path, markdown_path, json_detail, verbose, fail_fast, jobs,
          devices, hvp_target, **kw):
    """Check YOUR gradient: TARGET is path/to/file.py:function or package.module:function.

    Called as fn(logits, target, **kw) with the options it declares (weight, ignore_index,
    reduction, label_smoothing, smoothing_convention, temperature, softcap, z_loss,
    grad_output); it returns d(loss)/d(logits).  Compared with the closed form, autodiff and
    finite differences; a failing case says where and how it is wrong.  --convention
    loss/inplace/split check a kernel as written, its loss value too.
    """
    from ..candidate import load
    from ..engine.suites import check_candidate, estimate_run
    from ..reference.jaxsetup import warm

    policy = to_policy(kw)
    st = to_settings(kw)
    cfg = to_config(kw)
    cand = load(target, hvp=hvp_target, settings=st, in_process=not policy.isolate,
                meanwhile=lambda: warm(devices))      # JAX imports while the worker starts
    try:
        return execute(lambda bar: check_candidate(cand, cfg, policy=policy,
                                                   fail_fast=fail_fast, jobs=jobs,
                                                   progress=bar),
                       devices, json_path, junit_path, markdown_path, verbose=verbose,
                       detail=json_detail, estimate=lambda: estimate_run(
                           cfg, check=True, candidate=cand, isolate=policy.isolate))
    finally:                    # bad --inputs, a refused estimate: its describing worker ends
        cand.close()


@cli.command()
@click.argument("file")
@report_options
@candidate_options
@click.option("--list", "list_only", is_flag=True,
              help="Check the file and list its groups and cases; run nothing.")
@with_outputs
def batch(file, json_path, junit_path, markdown_path, json_detail, verbose, fail_fast, jobs,
          devices, list_only, **kw):
    """Run the groups of a batch FILE (TOML, or JSON with the same structure).

    Each [[case]] group takes the options of run/check with underscores (classes,
    label_smoothing, ...); a list value runs every combination; 'target' (relative to FILE)
    checks a candidate, 'name' names the group.  Every case in the reports records its group.
    """
    from ..engine.suites import batch_listing, close_plan, estimate_batch, load_plan, run_batch

    from ..reference.jaxsetup import warm

    policy = to_policy(kw)
    plan = load_plan(file, in_process=not policy.isolate,   # JAX imports while workers start
                     meanwhile=None if list_only else (lambda: warm(devices)))
    try:
        if list_only:
            click.echo("\n".join(batch_listing(plan)))
            return EXIT_OK
        return execute(lambda bar: run_batch(plan, policy=policy, fail_fast=fail_fast,
                                             jobs=jobs, progress=bar),
                       devices, json_path, junit_path, markdown_path, verbose=verbose,
                       detail=json_detail, estimate=lambda: estimate_batch(plan))
    finally:
        close_plan(plan)


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
@click.option("--ignore-index", type=int, default=None,
              help="Also explain ignored rows (on a batch of 4 rows, row 1 ignored).")
@click.option("--reduction", type=click.Choice(REDUCTIONS), default=None,
              help="Also explain the reduction: the mean's denominator (non-ignored count or "
                   "weight sum).")
@click.option("--json", "json_path", type=str, default=None,
              help="Write {steps: [{title, formula, max_abs_error, holds}, ...]} to PATH ('-': stdout).")
@DEBUG
def explain(classes, seed, targets, label_smoothing, temperature, softcap, z_loss, weight,
            ignore_index, reduction, json_path):
    """Walk the derivation of the gradient (softmax, loss, Jacobian, chain rule, p − y) on one
    example, each step verified against JAX; then the classic slips, shown not to hold."""
    from ..report.console import render_explanation
    from ..report.files import write_atomic
    from ..tools.explain import explain as run_explain

    check_outputs(json_path)
    ex = run_explain(classes, seed, targets, label_smoothing=label_smoothing,
                     temperature=temperature, softcap=softcap, z_loss=z_loss, weight=weight,
                     ignore_index=ignore_index, reduction=reduction)
    render_explanation(ex, make_console(stderr=json_path == "-"))
    text = ex.to_json()
    if json_path == "-":
        click.echo(text)
    elif json_path:
        write_atomic(json_path, text)
    return EXIT_OK if ex.passed else EXIT_FAIL


@cli.command()
def schema():
    """Print the JSON Schema (draft 2020-12) of the JSON report."""
    from ..report.schema import schema_json

    click.echo(schema_json())


@cli.command()
@click.option("--classes", type=CommaList(int), default="10", show_default=True)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@DEBUG
def mutants(classes, seed):
    """Prove the checker's power: every built-in wrong gradient must be caught, and the
    correct one must pass under the same options.  Exit 0 only then."""
    from ..report.console import render_mutants
    from ..tools.mutants import run_mutants

    ok = render_mutants(run_mutants(classes=classes, seed=seed), make_console(stderr=False))
    return EXIT_OK if ok else EXIT_FAIL


@cli.command()
@click.option("--classes", type=int, default=10, show_default=True)
@click.option("--batch", type=int, default=6, show_default=True)
@click.option("--targets", type=click.Choice(TARGET_KINDS), default="index")
@click.option("--reduction", type=click.Choice(REDUCTIONS), default="mean")
@click.option("--regime", type=click.Choice([r for r in REGIMES if r != "all-ignored"]),
              default="normal")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--plot", "plot_path", default=None, help="Draw the curves to PATH.png (needs softcheck[plot]).")
@DEBUG
def steps(classes, batch, targets, reduction, regime, seed, plot_path):
    """Sweep the finite-difference step h over decades and print each method's error against
    the closed form: the V of truncation vs rounding, with the derived h marked (*)."""
    from ..report.console import render_steps
    from ..tools.steps import plot, pyplot, step_case, sweep

    check_outputs(plot_path)
    if plot_path:
        pyplot()                        # without matplotlib: one line, exit 2, before the work
    case = step_case(classes=classes, batch=batch, targets=targets, reduction=reduction,
                     regime=regime, seed=seed)
    sweeps = sweep(case)
    console = make_console(stderr=False)
    render_steps(sweeps, console)
    if plot_path:
        plot(sweeps, plot_path, case.name)
        console.print(f"wrote {plot_path}", markup=False)
    return EXIT_OK
