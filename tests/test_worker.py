"""The isolated worker process: what a candidate can do to it, and that nothing survives it."""

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import softcheck.candidate
from softcheck.candidate import load
from softcheck.suite.inputs import make_inputs_from_arrays
from softcheck.spec import SoftcheckError
from softcheck.candidate.worker import IsolatedCandidate

HOSTILE = "tests/candidates/hostile.py"


def _inputs(first=0.25, n=4, c=5, dtype=np.float64):
    z = np.random.default_rng(0).normal(size=(n, c)).astype(dtype)
    z[0, 0] = first
    return make_inputs_from_arrays(z, np.arange(n) % c)


def _alive(pid: int) -> bool:
    """Running (a zombie is dead: reaped here when it is this process's child)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            zombie = f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return False
    if zombie:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    return not zombie


def _tagged_processes() -> list[int]:
    """Every process started by a worker of this test process (they carry its tag)."""
    tag = f"SOFTCHECK_WORKER_TAG={os.getpid()}-".encode()
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    if tag in f.read():
                        found.append(int(name))
            except OSError:
                pass
    return found


def _outer(inner: int) -> int:
    """The pid (here) of the tagged process that is ``inner`` in its own PID namespace."""
    for pid in _tagged_processes():
        try:
            with open(f"/proc/{pid}/status") as f:
                ns = next(ln for ln in f if ln.startswith("NSpid:")).split()[1:]
        except (OSError, StopIteration):
            continue
        if int(ns[-1]) == inner:
            return pid
    raise AssertionError(f"no process of this test is {inner} in its namespace")


@pytest.fixture
def make(tmp_path, monkeypatch):
    """IsolatedCandidate factory; after the test every worker it ever started is gone."""
    monkeypatch.setenv("SOFTCHECK_TEST_DIR", str(tmp_path))
    made = []
    before = set(_tagged_processes())       # an earlier test's leak is that test's failure

    def factory(fn, **kw):
        c = IsolatedCandidate(f"{HOSTILE}:{fn}", kw.pop("hvp_source", None), fn, **kw)
        made.append(c)
        return c

    yield factory
    for c in made:
        c.close()
    for c in made:
        assert c.pids and not any(os.path.exists(f"/proc/{p}") for p in c.pids), c.pids
    assert sorted(set(_tagged_processes()) - before) == []


def test_load_error_is_the_same_softcheck_error(make):
    with pytest.raises(SoftcheckError) as direct:
        load(f"{HOSTILE}:no_such_function", label="no_such_function")
    with pytest.raises(SoftcheckError) as isolated:
        make("no_such_function")
    assert str(isolated.value) == str(direct.value)
    assert _tagged_processes() == []


def test_a_real_process_serving_many_calls(make):
    c = make("signature")
    pid = c.pid
    assert pid != os.getpid() and os.getsid(pid) == pid            # its own session
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[1:3] == [b"-m", b"softcheck.candidate.worker_main"]
    assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
    inherited = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    assert sum("socket:" in x for x in inherited) == 1            # only the control channel
    assert c.takes("weight") and c.takes("reduction") and not c.takes("z_loss")
    want = load(f"{HOSTILE}:correct", in_process=True).call(_inputs()).grad
    for _ in range(3):
        r = c.call(_inputs())
        assert r.error is None and r.grad.dtype == np.float64
        np.testing.assert_array_equal(r.grad, want)
    assert c.pids == [pid]                                         # reused, not restarted


def test_arrays_cross_by_shared_memory(make, tmp_path):
    c = make("dtype_name")
    big = _inputs(n=2000, c=500)                                   # 8 MB of logits
    r = c.call(big)
    assert r.error is None and r.grad.shape == (2000, 500)
    assert c.bytes_sent < 4096                                     # not pickled
    with open(f"/proc/{c.pid}/maps") as f:
        assert "memfd:softcheck" in f.read()
    import ml_dtypes

    inputs = _inputs()
    bf = dataclasses.replace(inputs, logits=inputs.logits.astype(ml_dtypes.bfloat16))
    r = c.call(bf)
    assert r.output.strip() == "bfloat16 True int64"
    assert r.error is None and r.notes == ()
    np.testing.assert_array_equal(r.grad, load(f"{HOSTILE}:dtype_name", in_process=True).call(bf).grad)


def test_output_is_captured_not_a_failure(make):
    r = make("prints").call(_inputs())
    assert r.error is None and r.grad is not None
    for text in ("python stdout", "python stderr", "fd1 write", "fd2 write", "child process",
                 "C puts"):
        assert text in r.output
    r = make("prints_a_lot").call(_inputs())
    assert r.error is None and r.output.endswith("… (5904 bytes more)")


@pytest.mark.parametrize("how", [1, 2, 3, 4])
def test_system_exit_is_an_error_not_an_exit(make, how):
    c = make("exits")
    r = c.call(_inputs(how))
    assert r.grad is None
    assert r.error == ("raised KeyboardInterrupt" if how == 4 else "raised SystemExit") or \
        r.error.startswith("raised _ExitOnStr (and its message raised SystemExit")
    assert c.call(_inputs()).error is None and len(c.pids) == 1   # the same worker lives on


@pytest.mark.parametrize("how, reason", [
    (1, "exited with status 0"),
    (2, "was killed by signal 9 (SIGKILL)"),
    (3, "was killed by signal 11 (SIGSEGV)"),
    (4, "was killed by signal 6 (SIGABRT)"),
    (5, "was killed by signal 14 (SIGALRM)"),
])
@pytest.mark.slow  # 4 s measured (2 cores, load ~1): CI runs the rest
def test_death_is_a_failed_call(make, how, reason):
    c = make("dies")
    r = c.call(_inputs(how))
    assert r.grad is None and r.error.startswith(f"the candidate's process {reason} during the call")
    if how == 3:
        assert "string_at" in r.error and "hostile.py" in r.error          # faulthandler stack
    first = c.pids[0]
    assert not _alive(first)
    r = c.call(_inputs())
    assert r.error is None and len(c.pids) == 2                    # a fresh worker


@pytest.mark.parametrize("how", [1, 2, 3, 4], ids=["python-loop", "C-loop", "__array__",
                                                   "ignores-SIGTERM"])
@pytest.mark.slow  # 5 s measured (2 cores, load ~1): CI runs the rest
def test_timeout_stops_the_process(make, how):
    c = make("slow", grace=0.3)
    t0 = time.monotonic()
    r = c.call(_inputs(how), timeout=0.4)
    assert time.monotonic() - t0 < 3
    assert r.grad is None
    assert r.error == "took longer than 0.4 s (--timeout); the candidate's process was stopped"
    assert not _alive(c.pids[0])
    r = c.call(_inputs(), timeout=0)                               # 0: no limit
    assert r.error is None and len(c.pids) == 2


def test_close_kills_threads_and_escaped_children(make, tmp_path):
    c = make("escapes")
    r = c.call(_inputs())
    assert r.error is None
    pids = [_outer(int(p)) for p in r.output.split("pids", 1)[1].split()]
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    assert all(os.getsid(p) != os.getsid(c.pid) for p in pids)     # outside the group
    c.close()
    c.close()                                                       # idempotent
    assert not any(_alive(p) for p in pids)
    assert not list(tmp_path.glob("escaped-*"))


def test_candidate_meddling_stays_in_the_worker(make, tmp_path):
    cwd, err, abs_, to_array = os.getcwd(), np.geterr(), np.abs, softcheck.candidate.call.to_array
    c = make("meddles")
    with open(f"/proc/{c.pid}/environ", "rb") as f:
        assert b"JAX_ENABLE_X64=1" in f.read().split(b"\0")
    assert os.readlink(f"/proc/{c.pid}/cwd") == cwd
    r = c.call(_inputs())
    # its patched to_array zeroes what the worker hands back: that is the candidate's own
    # output, judged here (and wrong); nothing of the parent changed
    assert r.error is None and np.abs(r.grad).sum() == 0
    assert os.getcwd() == cwd and np.geterr() == err and np.abs is abs_
    assert softcheck.candidate.call.to_array is to_array
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    c.close()
    assert not (tmp_path / "atexit-ran").exists()


def test_repeat_catches_nondeterminism_and_shared_buffers(make):
    r = make("correct").call(_inputs(), repeat=2)
    assert r.error is None and r.nondet == 0.0 and r.notes == ()
    r = make("noisy").call(_inputs(), repeat=2)
    assert 0 < r.nondet < 1e-7
    assert any(n.startswith("nondeterministic: two calls on identical inputs differ by up to")
               for n in r.notes)
    r = make("same_buffer").call(_inputs(), repeat=2)
    assert "returned the same buffer on two calls" in r.notes
    want = load(f"{HOSTILE}:correct", in_process=True).call(_inputs()).grad
    np.testing.assert_array_equal(r.grad, want)                    # the first call's gradient
    c = make("third_call_raises")
    assert c.call(_inputs(), repeat=2).error is None
    assert c.call(_inputs(), repeat=2).error.startswith("raised RuntimeError: third call\n  at ")


def test_argument_checks_as_today(make):
    assert make("mutates_target").call(_inputs()).error == "modified its target argument in place"
    r = make("writes_logits").call(_inputs())
    assert r.error is None and r.notes == (
        "wrote into its logits argument (allowed: each call gets a fresh copy)",)


@pytest.mark.slow  # 3 s measured (2 cores, load ~1): CI runs the rest
def test_float32_hint_only_when_jax_x64_is_off(make):
    r = make("jax_float32_x64_off").call(_inputs())
    assert r.notes == ("returned float32 for a float64 case (JAX x64 is off in the "
                       "candidate's process?)",)
    r = make("jax_float32_x64_on").call(_inputs())
    assert r.notes == ("returned float32 for a float64 case",)


def test_hvp(make):
    c = IsolatedCandidate("tests/candidates/hvp_kernels.py:grad",
                          "tests/candidates/hvp_kernels.py:hvp", "hvp")
    try:
        assert c.hvp
        inputs = _inputs()
        d = np.random.default_rng(1).normal(size=inputs.logits.shape)
        want = load("tests/candidates/hvp_kernels.py:grad",
                    hvp="tests/candidates/hvp_kernels.py:hvp", in_process=True).call_hvp(inputs, d).grad
        np.testing.assert_array_equal(c.call_hvp(inputs, d).grad, want)
    finally:
        c.close()
    assert not any(_alive(p) for p in c.pids)


SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from softcheck.candidate.worker import IsolatedCandidate
    c = IsolatedCandidate("tests/candidates/hostile.py:correct", None, "x")
    print(c.pid, flush=True)
    if sys.argv[1] == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.parametrize("end", ["exits", "killed"])
def test_worker_ends_with_its_parent(end):
    """atexit closes live candidates; PR_SET_PDEATHSIG kills the worker of a killed parent."""
    p = subprocess.run([sys.executable, "-c", SCRIPT, end], capture_output=True, text=True,
                       timeout=30)
    pid = int(p.stdout.split()[0])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    assert not _alive(pid)
