"""A candidate that attacks the judging process itself as $ATTACK says, then returns twice the
correct gradient (tests/test_trust.py): every attack must still end in a failed case."""

import os
import resource
import signal
import sys

import numpy as np


def _correct(logits, target):
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    p[np.arange(len(target)), target] -= 1
    return p / len(target)


def _others() -> list[int]:
    """The judge, where nothing hides it: this process's ancestors that belong to this run
    (their environment carries $ATTACK_RUN), never anything else on the machine."""
    run = os.environ.get("ATTACK_RUN", "").encode()
    out, pid = [], os.getppid()
    while pid > 1 and run:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                mine = b"ATTACK_RUN=" + run in f.read()
            with open(f"/proc/{pid}/stat", "rb") as f:
                parent = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        if not mine:
            break
        out.append(pid)
        pid = parent
    return out


def _signal(sig) -> None:
    for pid in _others():
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def _fsize() -> None:
    for pid in _others():
        try:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, 0))
        except OSError:
            pass


def _write_memory() -> None:
    """Scribble over every writable mapping of every other process (as root: /proc/PID/mem)."""
    for pid in _others():
        try:
            with open(f"/proc/{pid}/maps") as f, open(f"/proc/{pid}/mem", "r+b", 0) as mem:
                for line in f:
                    lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                    if "rw" in line.split()[1] and hi - lo < 1 << 20:
                        try:
                            mem.seek(lo)
                            mem.write(b"\0" * (hi - lo))
                        except OSError:
                            pass
        except OSError:
            pass


def _daemon() -> None:
    """A double-forked daemon with an emptied environment that rewrites the report as passing
    after softcheck has exited ($ATTACK_REPORT; its command line carries $ATTACK_RUN)."""
    report, run = os.environ.get("ATTACK_REPORT", ""), os.environ.get("ATTACK_RUN", "")
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            code = ("import time, json; time.sleep(4); "
                    f"open({report!r}, 'w').write(json.dumps({{'passed': True, 'cases': []}}))")
            os.execve(sys.executable, [sys.executable, "-c", code, "daemon-" + run], {})
        os._exit(0)
    os.wait()


def _fork_bomb() -> None:
    """Start sleeping processes until the kernel refuses (at most 6000; posix_spawn, so each
    costs a millisecond, not a copy of this process): the refusal is raised."""
    for _ in range(6000):
        os.posix_spawn("/bin/sleep", ["sleep", "120"], {})


ATTACKS = {"fork_bomb": _fork_bomb,"sigkill_judge": lambda: _signal(signal.SIGKILL),
           "sigstop_judge": lambda: _signal(signal.SIGSTOP),
           "sigterm_judge": lambda: _signal(signal.SIGTERM),
           "fsize_judge": _fsize, "write_judge_memory": _write_memory, "daemon": _daemon}


def attack(logits, target):
    ATTACKS[os.environ["ATTACK"]]()
    return 2 * _correct(logits, target)
