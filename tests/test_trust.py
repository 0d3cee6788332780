"""#26: the judge alone judges.  Each test runs a real `softcheck check` subprocess on a
candidate that attacks the judging itself (families 1 and 5 of the issue: candidate code in
the judging process, the worker acting on the judge as the same user) and returns a wrong
gradient; the verdict must stay a fresh, failing report with exit 1 and nothing left running.
(Forged repeats and replies: test_trust_executor.py; shared memory: test_sealed_memory.py;
reports and escaping: test_trust_reports.py.)"""

import json
import os
import subprocess
import sys
import time
import uuid

import pytest
from reports import leftover_processes, load_report

SMALL = ["--classes", "5", "--batch", "3", "--dtype", "float64", "--regime", "normal"]
HERE = os.path.dirname(os.path.abspath(__file__))


def _run(tmp_path, target, attack="", limit=120, **env_extra):
    run = uuid.uuid4().hex
    out = tmp_path / "out.json"
    out.write_text(json.dumps({"passed": True, "cases": []}))     # a stale passing report
    env = {**os.environ, "ATTACK": attack, "ATTACK_RUN": run, "ATTACK_REPORT": str(out),
           **env_extra}
    env.pop("SOFTCHECK_DEBUG", None)
    r = subprocess.run([sys.executable, "-m", "softcheck", "check",
                        os.path.join(HERE, "candidates", target), *SMALL, "--json", str(out)],
                       capture_output=True, text=True, env=env, timeout=limit, cwd=tmp_path)
    return r, out, run


def _no_process_left(run: str, within: float = 6.0) -> list[int]:
    """Processes of the run alive ``within`` seconds after it ended (environment or command
    line carrying its id: a daemon may empty its environment)."""
    deadline = time.monotonic() + within
    while True:
        left = leftover_processes(f"ATTACK_RUN={run}") + _cmdline_has(run)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _cmdline_has(text: str) -> list[int]:
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        found.append(int(d))
            except OSError:
                pass
    return found


def _namespaces_here() -> bool:
    """Whether this machine lets a process make user, PID and mount namespaces (util-linux's
    unshare as the probe): where it does, the sandbox must be the full one."""
    import shutil

    return bool(shutil.which("unshare")) and subprocess.run(
        ["unshare", "--user", "--map-root-user", "--pid", "--mount", "--fork", "true"],
        capture_output=True).returncode == 0


def _require_sandbox(report: dict) -> None:
    """Skip where no namespaces can be made; else the report must say they were in effect."""
    if not _namespaces_here():
        pytest.skip("this machine makes no user namespaces (the sandbox is weaker here)")
    (info,) = report["environment"]["candidate_process"].values()
    assert info.get("sandbox", {}).get("kind") == "namespaces", info


def test_a_module_patching_the_judge_at_import_patches_nothing_that_judges(tmp_path):
    """check imported the TARGET in softcheck's own process to validate it: a module that set
    the tolerance constant to 1e300 and Report.passed to True at import passed 2x the
    gradient with exit 0."""
    r, out, _ = _run(tmp_path, "patch_at_import.py:grad")
    assert r.returncode == 1, r.stdout + r.stderr
    report = load_report(out.read_text())
    assert not report["passed"] and report["cases"] and not any(
        c["passed"] for c in report["cases"])


def test_a_module_ending_in_sys_exit_0_does_not_end_softcheck_with_exit_0(tmp_path):
    """SystemExit raised by the TARGET's import in softcheck's process was not caught: exit 0
    with the stale passing report left in place.  Now the import happens in the worker: the
    TARGET could not be loaded (exit 2, one line) and the stale report no longer passes."""
    r, out, _ = _run(tmp_path, "exit_at_import.py:grad")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert "SystemExit" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not json.loads(out.read_text()).get("passed")


@pytest.mark.parametrize("attack", ["sigkill_judge", "sigstop_judge", "sigterm_judge",
                                    "fsize_judge", "write_judge_memory"])
def test_a_worker_cannot_signal_limit_or_write_the_judge(tmp_path, attack):
    """The worker ran as the same user beside the judge: SIGKILL/SIGSTOP/SIGTERM to its
    parent (or every process it saw), RLIMIT_FSIZE set on the judge so the report write
    failed, and the judge's memory written through /proc/PID/mem (as root).  In its sandbox
    (a PID namespace) it sees no process but its own."""
    r, out, run = _run(tmp_path, "judge_attacks.py:attack", attack)
    assert r.returncode == 1, r.stdout + r.stderr
    report = load_report(out.read_text())
    _require_sandbox(report)
    assert not report["passed"] and all(not c["passed"] for c in report["cases"])
    assert "2" in json.dumps(report["cases"][0]["comparisons"]) or report["cases"][0]["error"]
    assert _no_process_left(run) == []


def test_an_escaped_daemon_cannot_rewrite_the_report_after_softcheck_exits(tmp_path):
    """A double-forked daemon with an emptied environment outlived the run (cleanup by
    environment tag missed it) and rewrote the JSON as passing.  Ending the PID namespace
    ends it, and the sandbox's mounts are read-only."""
    r, out, run = _run(tmp_path, "judge_attacks.py:attack", "daemon")
    assert r.returncode == 1, r.stdout + r.stderr
    _require_sandbox(load_report(out.read_text()))
    assert _no_process_left(run) == []
    time.sleep(4.5)                               # past the daemon's 4 s
    assert load_report(out.read_text())["passed"] is False


def test_a_fork_bomb_is_stopped_by_the_process_limit(tmp_path):
    """No process limit held for uid 0 (the kernel exempts root from RLIMIT_NPROC): a
    candidate forking without end could take the machine.  Its sandbox joins a cgroup with
    pids.max (or RLIMIT_NPROC for another uid); the refused fork fails the case."""
    r, out, run = _run(tmp_path, "judge_attacks.py:attack", "fork_bomb",
                       SOFTCHECK_PIDS_LIMIT="256")        # the default 4096, reached sooner
    assert r.returncode == 1, r.stdout + r.stderr
    report = load_report(out.read_text())
    (info,) = report["environment"]["candidate_process"].values()
    box = info["sandbox"]
    if box.get("pids_limit") is None:
        pytest.skip("no process limit can be set here: " + box.get("pids_why", "?"))
    assert box["pids_limit"] == 256 and box["pids_by"]
    (case,) = report["cases"]
    assert not case["passed"] and "Resource temporarily unavailable" in case["error"], case
    assert _no_process_left(run) == []


def test_an_ordinary_program_runs_in_the_sandbox_that_keeps_the_host_read_only(tmp_path):
    """The sandbox made /dev read-only, so opening /dev/null for writing was EROFS: Apple
    CCE's torch.compile path (inductor starts a process with DEVNULL) failed in the worker,
    and so did its cache under a host TORCHINDUCTOR_CACHE_DIR. A correct kernel that needs
    them passes; the host's files stay read-only to it.  Regression: JAX's cache (jaxsetup's
    SOFTCHECK_CACHE_DIR) stayed the judge's host path, read-only there, so a JAX candidate's
    compile warned into its output (the README's vocab-parallel blocks went stale)."""
    r, out, _ = _run(tmp_path, "sandbox_needs.py:grad",
                     TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "host-cache"),
                     SOFTCHECK_CACHE_DIR=str(tmp_path / "host-jax"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    report = load_report(out.read_text())
    _require_sandbox(report)
    assert report["passed"]
    assert not (tmp_path / "host-cache").exists()            # the private tmpfs held it
