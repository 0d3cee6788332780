"""Issue 21's readable output: the summary-first console, -v, report files (modes, folders,
--json-detail), str/repr of a Report, the candidate's frames, progress lines, the estimate."""

import json
import pytest
import os
import re
import stat
import subprocess
import sys

from click.testing import CliRunner
from reports import load_report

import softcheck
from softcheck.cli import cli
from softcheck.report.files import write_atomic

BAD = "tests/candidates/misbehaving.py"
EXAMPLE = "scripts/examples/numpy_ce.py:grad"
SMALL = ["--classes", "5", "--batch", "3", "--dtype", "float64", "--regime", "normal,tied"]


def invoke(*args, env=None):
    return CliRunner().invoke(cli, list(args), env={"COLUMNS": "80", **(env or {})})


def test_report_file_takes_the_umask_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomic(str(tmp_path / "a.json"), "{}")
        os.umask(0o077)
        write_atomic(str(tmp_path / "b.json"), "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "b.json").st_mode) == 0o600


def test_report_files_create_their_parent_folders(tmp_path):
    out = tmp_path / "out" / "deep"
    r = invoke("check", EXAMPLE, *SMALL, "--json", str(out / "r.json"), "--junit",
               str(out / "r.xml"), "--markdown", str(tmp_path / "md" / "r.md"))
    assert r.exit_code == 0, r.output
    load_report((out / "r.json").read_text())
    assert (out / "r.xml").read_text().startswith("<?xml")
    assert (tmp_path / "md" / "r.md").read_text().startswith("## ✅")


def test_console_is_hint_first_and_shows_cases_failing_alike_once():
    r = invoke("check", f"{BAD}:wrong_denominator", "--classes", "5", "--batch", "3",
               "--dtype", "float64,float32", "--regime", "normal,tied,large")
    assert r.exit_code == 1
    out = r.stdout
    assert out.startswith("hint: ")
    assert "\nFAIL check: 0 passed, 6 failed\n    worst error " in out
    assert "candidate vs analytic, autodiff, FD (they agree): max error" in out
    assert "row 0, class" in out
    shown = out.count("\nFAIL C5-B3-")
    alike = sum(int(n) for n in re.findall(r"the same in (\d+) more case", out))
    assert shown + alike == 6 and shown < 6                 # each case once, alike together
    assert "│" not in out and " cand " not in out            # no table without -v
    assert out.rstrip().endswith("DISAGREEMENT ({:s})".format(out.rsplit("(", 1)[1][:-2]))
    assert max(len(line) for line in out.splitlines() if not line.startswith(
        ("  ", "FAIL C", "hint:"))) <= 80


def test_verbose_adds_every_row_with_fd_coverage_in_80_columns():
    r = invoke("run", "--classes", "5", "--batch", "3", "--dtype", "float64",
               "--targets", "index", "--reduction", "mean,sum", "--regime", "normal,masked",
               "-v")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    rows = [line for line in lines if line.rstrip().endswith("PASS") and "all" in line]
    assert len(rows) == 4                                   # one row per case, FD "all"
    assert "FD" in r.stdout and "cols" in r.stdout
    assert max(len(line) for line in lines) <= 80
    assert lines[-3] == "PASS run: 4 passed, 0 failed"
    assert lines[-2].startswith("    worst error") and "FD every column" in lines[-2]


def test_fd_coverage_in_the_summary_when_columns_are_sampled():
    r = invoke("check", EXAMPLE, "--classes", "3000", "--batch", "2", "--dtype", "float64",
               "--regime", "normal", "--fd-budget", "1e3", "-v")
    assert r.exit_code == 0, r.output
    assert "FD covered " in r.stdout and " of 3000 columns (+8 probes)" in r.stdout
    assert "/3000" in r.stdout                                 # the table's FD column


def test_json_detail_summary_drops_worst_entries_of_passing_cases_only():
    full = load_report(invoke("check", f"{BAD}:off_by_1e6", *SMALL, "--dtype", "float64,float32",
                              "--json", "-").stdout)
    summ = load_report(invoke("check", f"{BAD}:off_by_1e6", *SMALL, "--dtype", "float64,float32",
                              "--json", "-", "--json-detail", "summary").stdout)
    assert full["detail"] == "full" and summ["detail"] == "summary"
    assert [c["passed"] for c in full["cases"]] == [c["passed"] for c in summ["cases"]]
    assert {c["passed"] for c in summ["cases"]} == {True, False}
    for c in summ["cases"]:
        has = ["worst" in x for x in c["comparisons"]]
        assert all(has) if not c["passed"] else not any(has)
        assert all("max_abs_error" in x and "reason" in x for x in c["comparisons"])
    assert len(json.dumps(summ)) < len(json.dumps(full))


def test_batch_json_defaults_to_summary(tmp_path):
    f = tmp_path / "b.toml"
    f.write_text('[[case]]\nclasses = 4\nbatch = 2\ndtype = "float64"\nregime = "normal"\n'
                 'targets = "index"\nreduction = "mean"\n')
    assert load_report(invoke("batch", str(f), "--json", "-").stdout)["detail"] == "summary"


def test_every_schema_field_is_described():
    from softcheck.report.schema import REPORT

    missing = []

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.get("properties", {}).items():
                if "description" not in v:
                    missing.append(f"{path}.{k}")
                walk(v, f"{path}.{k}")
            for key in ("items", "oneOf", "patternProperties"):
                sub = node.get(key)
                for s in (sub if isinstance(sub, list) else
                          sub.values() if isinstance(sub, dict) and key == "patternProperties"
                          else [sub] if sub else []):
                    walk(s, path)

    walk(REPORT, "")
    assert not missing, missing


def test_str_of_a_report_is_the_console_and_repr_is_short():
    rep = softcheck.run(classes=5, batch=2, dtype="float64", targets="index", reduction="mean",
                        regime=("normal", "tied"))
    text = str(rep)
    assert text.startswith("PASS run: 2 passed, 0 failed")
    assert text.splitlines()[-1].startswith("2 cases: 2 passed, 0 failed — all agree")
    assert "CaseResult(" not in text and "\x1b[" not in text
    assert "C5 B2 f64 index mean" in rep.to_text(verbose=True)
    assert repr(rep).startswith("<Report run: 2 cases, 2 passed, 0 failed") and len(repr(rep)) < 120
    assert rep.to_markdown().startswith("## ✅ softcheck run: 2/2 cases passed")
    assert rep.to_junit().startswith("<?xml") and 'tests="2"' in rep.to_junit()


def test_a_raising_candidate_carries_its_file_line_and_function():
    r = invoke("check", f"{BAD}:raises", "--classes", "4", "--batch", "2", "--dtype", "float64",
               "--regime", "normal", "--json", "-")
    assert r.exit_code == 1
    err = load_report(r.stdout)["cases"][0]["error"]
    first, *frames = err.splitlines()
    assert first == "raised ValueError: boom"
    assert frames and frames[-1].strip().startswith("at ")
    assert "misbehaving.py:" in frames[-1] and frames[-1].endswith(" in raises")
    assert "softcheck/candidate" not in err and "softcheck/engine" not in err
    console = invoke("check", f"{BAD}:raises", "--classes", "4", "--batch", "2", "--dtype",
                     "float64", "--regime", "normal").stdout
    assert "misbehaving.py:" in console and "in raises" in console


def test_format_exception_keeps_the_innermost_frames_outside_softcheck():
    from softcheck.candidate.errors import FRAMES, format_exception

    def inner(k):
        if k == 0:
            raise KeyError("deep")
        inner(k - 1)

    try:
        inner(6)
    except KeyError as e:
        text = format_exception(e)
    lines = text.splitlines()
    assert lines[0] == "raised KeyError: 'deep'" and len(lines) == 1 + FRAMES
    assert all("test_reporting.py:" in x and x.endswith("in inner") for x in lines[1:])


@pytest.mark.slow  # 21 s measured (2 cores, load ~1): CI runs the rest
def test_piped_run_prints_progress_lines_to_stderr():
    env = {**os.environ, "SOFTCHECK_PROGRESS_INTERVAL": "0.2"}
    env.pop("SOFTCHECK_NO_PROGRESS", None)
    r = subprocess.run([sys.executable, "-m", "softcheck", "check", f"{BAD}:slow", "--classes",
                        "4", "--batch", "2", "--dtype", "float64", "--regime", "normal"],
                       capture_output=True, text=True, env=env)
    lines = [x for x in r.stderr.splitlines() if x.startswith("softcheck: ")]
    assert len(lines) >= 3, r.stderr                    # the case sleeps 3 s
    assert all("/1 cases done, " in x and " elapsed" in x for x in lines)
    assert "cases done" not in r.stdout


@pytest.mark.slow  # 3 s measured (2 cores, load ~1): CI runs the rest
def test_a_long_run_says_its_estimate_before_it_starts():
    from softcheck.engine.suites import estimate_run
    from softcheck.suite.config import config
    from softcheck.cli.output import LONG_RUN

    # 14 cases at 96×131072 (~3 min by the model; at 64 rows the streamed cases' re-measured
    # cost put the suite just under LONG_RUN)
    assert estimate_run(config(classes=131072, batch=96), check=True) > LONG_RUN
    assert estimate_run(config(classes=10), check=True) < 10
    # regression: a streamed 4096×131072 case was announced as ~36 min (the whole-array model
    # and FD at 1e9 evaluations/s); the numpy example's takes 47–60 s here (docs/benchmarks.md,
    # "A fourth session"): the estimate within a factor of two of ~48 s
    big = estimate_run(config(classes=131072, batch=4096, dtype="float32", regime="normal"),
                       check=True)
    assert 24 < big < 96, big
    r = subprocess.run([sys.executable, "-m", "softcheck", "check", f"{BAD}:raises", "--classes",
                        "131072", "--batch", "96", "--fail-fast"], capture_output=True,
                       text=True)
    assert r.returncode == 1
    assert "softcheck: 14 cases, estimated to take about " in r.stderr, r.stderr   # 7 regimes × 2 dtypes
