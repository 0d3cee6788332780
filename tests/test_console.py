"""The console a user reads, through a real pipe at 80 columns: one bug on one screen, hint
first; the -v table keeps every case's name; a passing run shows its notes."""

import json
import math
import os
import re
import subprocess
import sys

import pytest

from softcheck.report.text import SHORT_DTYPE, shape

SEEDED = "tests/candidates/seeded.py"


def softcheck(*args, columns=80):
    env = dict(os.environ, COLUMNS=str(columns))
    env.pop("FORCE_COLOR", None)
    return subprocess.run([sys.executable, "-m", "softcheck", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def screen_rows(text: str, columns: int = 80) -> int:
    """The rows ``text`` takes on a terminal ``columns`` wide (long lines wrap)."""
    return sum(max(1, math.ceil(len(line) / columns)) for line in text.splitlines())


@pytest.mark.parametrize("target, first_hint", [
    ("numpy_doubled", "hint: off by a constant factor 2"),
    ("TorchIgnoresGradOutput", "hint: looks like a known bug: the upstream gradient "
                               "(grad_output) is ignored"),
    ("numpy_no_max_shift", "hint: NaN/Inf at"),      # hints differing by their rows: one
])
@pytest.mark.slow  # 17 s measured (2 cores, load ~1): CI runs the rest
def test_one_seeded_bug_fills_at_most_40_rows_hint_first(target, first_hint):
    out = softcheck("check", f"{SEEDED}:{target}")
    assert out.returncode == 1, out.stderr
    assert out.stdout.startswith(first_hint), out.stdout[:300]
    assert screen_rows(out.stdout) <= 40, out.stdout
    assert re.search(r"the same in [1-9]\d* more cases", out.stdout)   # alike: once
    hints = [ln for ln in out.stdout.splitlines() if ln.startswith("hint:")]
    assert len(hints) == len({shape(h) for h in hints}) <= 4


@pytest.mark.slow  # 5 s measured (2 cores, load ~1): CI runs the rest
def test_verbose_shows_every_case_in_full():
    out = softcheck("check", f"{SEEDED}:numpy_doubled", "--dtype", "float64", "-v")
    assert out.returncode == 1
    assert out.stdout.count("\nFAIL C10-") == 14          # each failing case, hints and all
    assert "the same in" not in out.stdout


def _row_names(stdout: str) -> list[str]:
    rows = [ln for ln in stdout.splitlines() if re.search(r"\s(PASS|FAIL)\s*$", ln)]
    return [re.split(r"\s{2,}", ln.strip())[0] for ln in rows]


@pytest.mark.parametrize("args", [
    ["tests/candidates/seeded.py:torch_loss", "--convention", "loss", "--dtype",
     "float64,float32"],
    ["tests/candidates/seeded.py:numpy_right", "--dtype", "float32,bfloat16"],
])
@pytest.mark.slow  # 12 s measured (2 cores, load ~1): CI runs the rest
def test_verbose_table_keeps_every_case_name_at_80_columns_piped(tmp_path, args):
    report = tmp_path / "r.json"
    out = softcheck("check", *args, "-v", "--json", str(report))
    assert out.returncode == 0, out.stdout + out.stderr
    assert max(map(len, out.stdout.splitlines())) <= 80
    cases = json.loads(report.read_text())["cases"]
    want = [f"B{c['params']['batch']} {SHORT_DTYPE[c['params']['dtype']]} "
            f"{c['params']['regime']}" for c in cases]
    assert _row_names(out.stdout) == want


@pytest.mark.slow  # 6 s measured (2 cores, load ~1): CI runs the rest
def test_passing_console_shows_the_candidates_notes_once():
    out = softcheck("check", f"{SEEDED}:numpy_writes_logits",
                    "--dtype", "float64")
    assert out.returncode == 0, out.stdout + out.stderr
    notes = [ln for ln in out.stdout.splitlines() if ln.startswith("note:")]
    assert len(notes) == 1 and "(14 of 14 cases)" in notes[0], out.stdout


@pytest.mark.slow  # 5 s measured (2 cores, load ~1): CI runs the rest
def test_worst_error_names_the_candidate_not_a_reference_pair():
    out = softcheck("check", f"{SEEDED}:numpy_right", "--dtype", "float64")
    assert re.search(r"worst error \S+ \(cand vs ", out.stdout), out.stdout


def test_progress_bar_stays_on_one_line_at_80_columns():
    import io

    from rich.console import Console

    from softcheck.cli.output import _LazyBar

    buf = io.StringIO()
    bar = _LazyBar(Console(file=buf, width=80, force_terminal=True))
    bar.start(280)
    bar._show()
    bar.case_started("C131072-B256-bfloat16-probs-none-target-prob[label_smoothing=0.1]")
    bar.block(3, 100)
    bar.done = 279
    bar._update()
    bar.close()
    frames = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue()).replace("\n", "\r")
    assert frames.strip() and max(map(len, frames.split("\r"))) <= 80


def test_mutants_table_is_one_row_per_mutant_at_80_columns():
    import io

    from rich.console import Console

    from softcheck.report.console import render_mutants
    from softcheck.tools.mutants import MUTANTS, MutantResult

    results = [MutantResult(m, tuple(f"c{i}" for i in range(28)), 28, True,
                            ("confident", "large", "masked", "normal"),
                            tuple(f"c{i}" for i in range(26))) for m in MUTANTS]
    for width in (80, 160):
        buf = io.StringIO()
        render_mutants(results, Console(file=buf, width=width, no_color=True))
        lines = buf.getvalue().splitlines()
        rows = [ln for ln in lines if "CAUGHT, NAMED" in ln]
        assert len(rows) == len(MUTANTS) and max(map(len, lines)) <= width
        assert [r.split()[0] for r in rows] == [m.name for m in MUTANTS]   # names whole
        assert ("(confident, large" in rows[0]) == (width >= 140)
