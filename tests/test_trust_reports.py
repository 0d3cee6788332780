"""#26: reports only the judge writes, and nothing the candidate says is obeyed by a format.
Each test runs a real ``python -m softcheck`` subprocess (the CI action's call) and reads the
files it leaves: never a stale passing report, never half a file, never a pass after a signal
or without a case, and a candidate's words (its exception, its output, its function names)
shown in every format, never interpreted (tests/candidates/report_attacks.py)."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET

import pytest
from reports import leftover_processes, load_report

SMALL = ["--classes", "5", "--batch", "3", "--dtype", "float64", "--regime", "normal"]
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TARGET = os.path.join(HERE, "candidates", "report_attacks.py") + ":grad"


def _env(attack: str = "", run: str = "") -> dict:
    env = {**os.environ, "ATTACK": attack, "REPORT_RUN": run, "SOFTCHECK_NO_PROGRESS": "1",
           "NO_COLOR": "1", "PYTHONPATH": os.pathsep.join(
               [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    for k in ("SOFTCHECK_DEBUG", "FORCE_COLOR"):
        env.pop(k, None)
    return env


def _stale(tmp_path) -> dict:
    """Passing reports of an earlier run, in every format, at the paths of the next."""
    paths = {"json": tmp_path / "r.json", "junit": tmp_path / "r.xml",
             "markdown": tmp_path / "r.md"}
    paths["json"].write_text(json.dumps({"passed": True, "cases": []}))
    paths["junit"].write_text('<testsuites tests="12" failures="0"/>')
    paths["markdown"].write_text("## ✅ softcheck check: 12/12 cases passed\n")
    return paths


def _report_args(paths: dict) -> list:
    return ["--json", str(paths["json"]), "--junit", str(paths["junit"]),
            "--markdown", str(paths["markdown"])]


def _assert_failing(paths: dict, reason: str = "incomplete run") -> None:
    """Every report says the run failed or did not finish: none passes."""
    d = json.loads(paths["json"].read_text())
    assert d["passed"] is False and reason in d.get("reason", ""), d
    suites = ET.parse(paths["junit"]).getroot()
    assert int(suites.get("failures")) >= 1, paths["junit"].read_text()
    assert paths["markdown"].read_text().startswith("## ❌"), paths["markdown"].read_text()


def _softcheck(*args, attack="", cwd=None, limit=120, **kw):
    return subprocess.run([sys.executable, "-m", "softcheck", *args], capture_output=True,
                          text=True, env=_env(attack), timeout=limit, cwd=cwd, **kw)


def _thread_named(name: bytes) -> bool:
    """Whether a thread anywhere is named ``name`` (the candidate names its own)."""
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{tid}/comm", "rb") as f:
                        if f.read().strip() == name:
                            return True
            except OSError:
                continue
    return False


def _wait_for_thread(p: subprocess.Popen, name: bytes, within: float = 90) -> None:
    """Until the candidate names its thread ``name`` (it is there now), or fail."""
    deadline = time.monotonic() + within
    while not _thread_named(name):
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.1)


# ------------------------------------------------------------ marked before anything else

@pytest.mark.parametrize("make_args", [
    lambda d: ["check", str(d / "syntax.py") + ":grad", *SMALL],
    lambda d: ["check", TARGET, "--no-such-option", *SMALL],
    lambda d: ["check", TARGET, "--classes", "many"],
    lambda d: ["run", "--regime", "all-ignored"],
], ids=["target-syntax-error", "unknown-option", "bad-option-value", "refused-options"])
def test_a_run_that_cannot_start_leaves_no_stale_passing_report(tmp_path, make_args):
    """The report paths were marked incomplete only once the TARGET was resolved and the
    options parsed: a syntax error or a bad option exited 2 with the earlier run's passing
    report in place, which CI then read as this run's verdict."""
    (tmp_path / "syntax.py").write_text("def grad(logits, target):\n    return (\n")
    paths = _stale(tmp_path)
    r = _softcheck(*make_args(tmp_path), *_report_args(paths), cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    _assert_failing(paths)


def test_help_leaves_the_reports_alone(tmp_path):
    """Marking is for runs: asking for help runs nothing and overwrites nothing."""
    paths = _stale(tmp_path)
    r = _softcheck("check", *_report_args(paths), "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(paths["json"].read_text())["passed"] is True


def test_a_report_that_cannot_be_written_leaves_no_report_passing_and_no_temporary_file(
        tmp_path):
    """The reports were written one after the other: when the Markdown one could not be
    (its folder gone), the JSON one already said the run passed, and softcheck ended with
    an internal error (exit 3).  Now every report is complete on disk before the first is
    renamed into place: exit 2 with the reason on one line, each report still the marker of
    an incomplete run, and no temporary file left."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    js, md, go = tmp_path / "a" / "r.json", tmp_path / "b" / "r.md", tmp_path / "go"
    js.write_text(json.dumps({"passed": True, "cases": []}))
    env = {**_env("wait_then_pass"), "GO_FILE": str(go)}
    p = subprocess.Popen([sys.executable, "-m", "softcheck", "check", TARGET, *SMALL,
                          "--json", str(js), "--markdown", str(md)], env=env, cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_thread(p, b"sc-waiting")
        os.remove(md)
        os.rmdir(tmp_path / "b")
        (tmp_path / "b").write_text("a file where the report's folder was")
        go.touch()
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 2, (p.returncode, out, err)
    assert err.strip().startswith("softcheck: error: cannot write the reports"), err
    assert len(err.strip().splitlines()) == 1, err
    d = json.loads(js.read_text())
    assert d["passed"] is False and d["incomplete"] is True, d
    assert os.listdir(tmp_path / "a") == ["r.json"]


# ---------------------------------------------------------------------------- signals

@pytest.mark.parametrize("sig, attack, where", [
    (signal.SIGTERM, "sleep", b"sc-calling"),
    (signal.SIGINT, "sleep", b"sc-calling"),
    (signal.SIGTERM, "sleep_at_import", b"sc-importing"),
], ids=["sigterm-in-a-case", "sigint-in-a-case", "sigterm-while-the-target-imports"])
def test_a_signal_ends_the_run_with_exit_128_plus_n_and_reports_saying_interrupted(
        tmp_path, sig, attack, where):
    """SIGTERM killed softcheck outright (status -15, not a word said, and during the
    TARGET's import the earlier run's passing report still in place); SIGINT said
    "aborted".  Now each ends the run: one line naming the signal, exit 128 + N, every
    report saying the run was interrupted, and nothing of the run left running."""
    run = uuid.uuid4().hex
    paths = _stale(tmp_path)
    p = subprocess.Popen([sys.executable, "-m", "softcheck", "check", TARGET, *SMALL,
                          *_report_args(paths)], env=_env(attack, run), cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_thread(p, where)
        p.send_signal(sig)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    name = signal.Signals(sig).name
    assert p.returncode == 128 + sig, (p.returncode, out, err)
    assert err.strip().splitlines() == [
        f"softcheck: error: interrupted by {name}; the reports say incomplete"], err
    _assert_failing(paths, f"interrupted by {name}")
    deadline = time.monotonic() + 10
    while leftover_processes(f"REPORT_RUN={run}") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftover_processes(f"REPORT_RUN={run}") == []


# ------------------------------------------------------------------------- zero cases

def test_a_pytest_session_that_collects_no_softcheck_case_does_not_write_passed_true(
        tmp_path):
    """The plugin wrote ``passed: true`` for a session that judged nothing (all([]) is
    True): a CI step reading it passed a kernel nothing had checked."""
    import importlib.metadata

    (tmp_path / "test_other.py").write_text("def test_nothing():\n    pass\n")
    installed = any(e.value == "softcheck.testing.plugin"
                    for e in importlib.metadata.entry_points(group="pytest11"))
    out = tmp_path / "softcheck.json"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        *([] if installed else ["-p", "softcheck.testing.plugin"]),
                        "test_other.py", "--softcheck-json", str(out)],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr        # pytest's verdict is pytest's
    d = load_report(out.read_text())
    assert d["passed"] is False and d["cases"] == [] and "no case ran" in d["reason"]
    assert "no case ran" in r.stdout


def test_a_report_without_cases_fails_in_every_format():
    """Markdown drew "✅ 0/0 cases passed" and JUnit said 0 tests, 0 failures (a pass to
    every CI reporter) for a report that judged nothing."""
    from softcheck.engine.results import Report
    from softcheck.report import FORMATS

    report = Report(())
    assert json.loads(FORMATS["json"](report))["passed"] is False
    assert FORMATS["markdown"](report).startswith("## ❌")
    assert ET.fromstring(FORMATS["junit"](report).split("?>", 1)[1]).get("failures") == "1"


# ---------------------------------------------------------------------------- escaping

@pytest.fixture(scope="module")
def forged(tmp_path_factory):
    """One run of a candidate whose exception, output and function name carry a fake
    passing heading, HTML, rich markup, terminal escapes and a NUL."""
    d = tmp_path_factory.mktemp("forged")
    paths = _stale(d)
    r = _softcheck("check", TARGET, *SMALL, *_report_args(paths), attack="forge", cwd=d)
    return r, paths


def test_a_candidates_message_cannot_add_a_passing_heading_to_the_markdown_summary(forged):
    """The exception message went into the job summary's table as written: its
    ``<h2>✅ 12/12 passed</h2>`` (HTML GitHub renders in a cell) drew a passing heading
    under the failing one, and ``<img onerror>`` an image."""
    from markdown_it import MarkdownIt

    r, paths = forged
    assert r.returncode == 1, r.stdout + r.stderr
    text = paths["markdown"].read_text()
    assert "0/1 cases passed" in text and "12/12 passed" in text     # shown, as text
    html = MarkdownIt("commonmark", {"html": True}).enable("table").render(text)
    assert html.count("<h") - html.count("<hr") == 1 and html.startswith("<h2>❌"), html
    assert "<img" not in html and "<h1>" not in html
    assert html.count("<td>") == 5, html                  # its pipes split no cell


def test_a_candidates_message_and_output_keep_the_junit_xml_well_formed(forged):
    """A NUL or an ESC in the message or the output went into the XML as written: no XML
    parser reads the file, so the CI reporter showed nothing at all."""
    r, paths = forged
    root = ET.parse(paths["junit"]).getroot()            # raises on a NUL
    (failure,) = root.iter("failure")
    assert "<h2>✅ 12/12 passed</h2>" in failure.get("message")
    assert "\\x00" in failure.get("message") and "\\x1b" in failure.text
    assert "bye \\x1b[0m" in next(root.iter("system-out")).text


def test_a_candidates_message_and_output_cannot_restyle_or_rewrite_the_console(forged):
    """ESC sequences (clear the screen, set the title, colours), BEL, NUL and CR from the
    candidate reached the terminal as written; they show as visible escapes now, and rich
    markup stays text."""
    r, _ = forged
    shown = r.stdout + r.stderr
    for raw in ("\x1b", "\x07", "\x00", "\r", "\x0c"):
        assert raw not in shown, repr(raw)
    assert "\\x1b[2J" in shown and "[bold green]all agree[/bold green]" in shown
    assert "in <h1>✅ passed</h1>\\x1b[32m" in shown        # the function's name, as text
    assert "bye \\x1b[0m" in shown                          # its output, as text


def test_a_lone_surrogate_in_a_candidates_message_is_a_failed_case_not_exit_3(tmp_path):
    """A message holding a lone surrogate could not be printed: softcheck ended with an
    internal error (exit 3) and no report, for something the candidate did."""
    paths = _stale(tmp_path)
    r = _softcheck("check", TARGET, *SMALL, *_report_args(paths), attack="surrogate",
                   cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "\\ud800" in r.stdout
    d = load_report(paths["json"].read_text())
    assert not d["passed"] and "RuntimeError" in d["cases"][0]["error"]
    assert "\\ud800" in paths["markdown"].read_text()
    ET.parse(paths["junit"])


# ------------------------------------------------------------ the judge's own imports

PLANTED = '''import os
open(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                  "PLANTED-" + __name__ + "-" + str(os.getpid())), "w").close()
raise ImportError("a planted module ran")
'''


def test_python_m_softcheck_runs_no_module_planted_in_the_working_folder(tmp_path):
    """``python -m softcheck`` (the CI action) kept the working folder first on sys.path
    while softcheck imported modules as it went: an ``xml.py`` or ``rich.py`` there ran in
    the judge (and made it exit 3).  The folder is dropped before softcheck imports
    anything; the judge imports its renderers before the first candidate call."""
    for name in ("xml", "rich", "tomllib", "jsonschema"):
        (tmp_path / f"{name}.py").write_text(PLANTED)
    out = tmp_path / "r.json"
    p = subprocess.Popen([sys.executable, "-m", "softcheck", "check", TARGET, *SMALL,
                          "--json", str(out), "--junit", str(tmp_path / "r.xml")],
                         env=_env(), cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    stdout, stderr = p.communicate(timeout=120)
    planted = [f for f in os.listdir(tmp_path) if f.startswith("PLANTED-")]
    assert not [f for f in planted if f.endswith(f"-{p.pid}")], planted
    assert p.returncode == 1, stdout + stderr
    d = load_report(out.read_text())
    assert not d["passed"] and d["cases"] and not d["cases"][0]["passed"]
