"""#26, families 2 and 3: the worker is an executor, not a judge.  Each test runs `softcheck
check` in a real subprocess on a candidate of tests/candidates/executors.py that attacks what
runs in its own process — softcheck's repeat loop and difference patched, its reply forged,
a late interrupt in its main thread — and asserts exit 1 with a fresh, valid report saying why.
"""

import json
import subprocess
import sys

import pytest
from reports import load_report

CANDIDATES = "tests/candidates/executors.py"
SMALL = ["--classes", "5", "--batch", "3", "--dtype", "float64", "--regime", "normal"]


def check(tmp_path, fn, *extra, limit=120):
    out = tmp_path / "out.json"
    out.write_text('{"passed": true, "stale": true}')       # a stale passing report
    r = subprocess.run([sys.executable, "-m", "softcheck", "check", f"{CANDIDATES}:{fn}",
                        *extra, "--json", str(out)], capture_output=True, text=True,
                       timeout=limit)
    assert "Traceback" not in r.stderr, r.stderr
    assert "internal error" not in r.stderr, r.stderr
    return r.returncode, load_report(out.read_text()), r


def test_repeat_hidden_by_patching_the_workers_loop_fails_as_nondeterministic(tmp_path):
    # the candidate patches max_difference and the worker's invoke (repeat=1) in its own
    # process and returns twice the gradient on the second identical call: the judge's own
    # loop sees the difference
    code, report, _ = check(tmp_path, "repeat_doubles", *SMALL)
    assert code == 1 and report["passed"] is False
    det = [i for c in report["cases"] for i in c["invariants"] if i["name"] == "deterministic"]
    assert det and not any(i["passed"] for i in det)
    assert all("2 calls on identical inputs differ by up to" in i["detail"] for i in det)


def test_a_deterministic_candidate_beside_the_patches_passes(tmp_path):
    code, report, r = check(tmp_path, "correct", *SMALL)
    assert code == 0 and report["passed"] is True, r.stdout


def test_fused_kernel_repeat_is_judged_at_all(tmp_path):
    # the fused path never judged determinism: a fused kernel returning 2x on the second
    # identical call passed
    code, report, _ = check(tmp_path, "repeat_doubles_fused", "--convention", "grad",
                            "--hidden", "8", "--classes", "50", "--batch", "4", "--dtype",
                            "float64", "--regime", "normal")
    assert code == 1 and report["passed"] is False
    for c in report["cases"]:
        det = [i for i in c["invariants"] if i["name"] == "deterministic"]
        assert det and not det[0]["passed"], c


def test_fused_repeat_one_has_no_determinism_invariant(tmp_path):
    code, report, _ = check(tmp_path, "repeat_doubles_fused", "--convention", "grad",
                            "--hidden", "8", "--classes", "50", "--batch", "4", "--dtype",
                            "float64", "--regime", "normal", "--repeat", "1")
    assert code == 0, report
    assert not any(i["name"] == "deterministic" for c in report["cases"]
                   for i in c["invariants"])


@pytest.mark.parametrize("fn,reason", [
    ("forged_notes", "notes is 12, not a list of text"),
    ("forged_number", "the reply has unexpected field(s) 'nondet'"),
    ("forged_extra", "the reply has unexpected field(s) 'verdict'"),
])
def test_a_forged_reply_is_a_failed_case_with_the_reason(tmp_path, fn, reason):
    # a string where a number belongs, a number where a list belongs: exit 3, no report
    code, report, _ = check(tmp_path, fn, *SMALL)
    assert code == 1 and report["passed"] is False and "stale" not in report
    (case,) = report["cases"]
    assert case["error"] == f"the candidate's process sent an invalid reply ({reason})"


@pytest.mark.parametrize("fn,raised", [("late_keyboard_interrupt", "KeyboardInterrupt"),
                                       ("late_system_exit", "SystemExit")])
def test_a_late_interrupt_in_the_workers_main_thread_is_a_failed_case(tmp_path, fn, raised):
    code, report, r = check(tmp_path, fn, "--classes", "5", "--batch", "3,4", "--dtype",
                            "float64,float32", "--regime", "normal,large")
    assert code == 1 and report["passed"] is False, r.stdout
    assert len(report["cases"]) == 8                       # the run went on, case by case
    assert all(c["error"] for c in report["cases"] if not c["passed"])
    json.dumps(report)


def test_a_socket_error_is_a_failed_call_and_the_next_gets_a_fresh_worker(monkeypatch):
    import numpy as np

    from softcheck.candidate.channel import _Worker
    from softcheck.candidate.worker import IsolatedCandidate
    from softcheck.suite.inputs import make_inputs_from_arrays

    z = np.random.default_rng(0).normal(size=(4, 5))
    inputs = make_inputs_from_arrays(z, np.arange(4) % 5)
    c = IsolatedCandidate(f"{CANDIDATES}:correct", None, "correct")
    try:
        good = c.call(inputs)
        first = c.pid
        real = _Worker.receive

        def reset(self, timeout):
            raise ConnectionResetError(104, "Connection reset by peer")

        monkeypatch.setattr(_Worker, "receive", reset)
        r = c.call(inputs)
        assert r.grad is None and r.error.startswith(
            "the channel to the candidate's process failed (ConnectionResetError")
        monkeypatch.setattr(_Worker, "receive", real)
        again = c.call(inputs, repeat=2)
        assert again.error is None and c.pid != first
        np.testing.assert_array_equal(again.grad, good.grad)
    finally:
        c.close()


def test_the_judge_checks_the_arguments_it_handed_over(tmp_path):
    """A target modified in place is caught by comparing what the worker hands back after the
    call with the judge's own original."""
    src = tmp_path / "mut.py"
    src.write_text(
        "import numpy as np\n"
        "def mut(logits, target):\n"
        "    z = np.asarray(logits, np.float64)\n"
        "    p = np.exp(z - z.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)\n"
        "    p[np.arange(len(target)), target] -= 1\n"
        "    target[:] = 0\n"
        "    return p / len(target)\n")
    out = tmp_path / "out.json"
    r = subprocess.run([sys.executable, "-m", "softcheck", "check", f"{src}:mut", *SMALL,
                        "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    (case,) = load_report(out.read_text())["cases"]
    assert case["error"] == "modified its target argument in place"


def test_a_forged_reply_on_the_streamed_path_is_a_failed_case_with_the_reason(tmp_path):
    """A large case's reply (shared.call_shared) was read without the field checks: notes
    that are not a list made softcheck exit 3 with no report."""
    code, report, _ = check(tmp_path, "forged_notes", "--classes", "131072", "--batch", "64",
                            "--dtype", "float32", "--regime", "normal", "--repeat", "1",
                            limit=300)
    assert code == 1 and report["passed"] is False and "stale" not in report
    (case,) = report["cases"]
    assert case["error"] == ("the candidate's process sent an invalid reply (notes is 12, not "
                             "a list of text)")
