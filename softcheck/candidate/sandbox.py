"""The judge's side of the worker's sandbox (``sandbox_init.py`` builds it): start a worker
inside it, learn what is in effect (the report's ``candidate_process.<label>.sandbox``), find
the worker's own pid, and name the memory limit when a candidate ran out of it.

What it guarantees: the worker sees no process but its own (a PID namespace: it cannot signal,
prlimit, ptrace or open /proc of the judge), writes no file (every mount read-only but a
private tmpfs), holds no capability, and everything it starts ends with it (the namespace's
init ending kills all that is left in it)."""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile

from ..spec import SoftcheckError

INIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_init.py")
#: the environment variable that turns the namespaces off (``0``): the limits stay
SWITCH = "SOFTCHECK_SANDBOX"
#: of MemTotal, the default --memory-limit
DEFAULT_FRACTION = 0.75
#: processes and threads of one sandbox (a cgroup's pids.max, else RLIMIT_NPROC, which the
#: kernel does not apply to uid 0); $SOFTCHECK_PIDS_LIMIT overrides it
NPROC = 4096
PIDS_SWITCH = "SOFTCHECK_PIDS_LIMIT"


def pids_limit() -> int:
    """The process limit in effect: $SOFTCHECK_PIDS_LIMIT (at least 64) or NPROC."""
    try:
        return max(64, int(os.environ[PIDS_SWITCH]))
    except (KeyError, ValueError):
        return NPROC
#: what an allocation that failed says (numpy, torch, JAX/XLA, C++)
_OOM = re.compile(r"MemoryError|Unable to allocate|can't allocate memory|RESOURCE_EXHAUSTED|"
                  r"out of memory|bad_alloc|Cannot allocate memory", re.I)
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}

_state: dict = {}


def parse_size(text) -> int:
    """``8G``, ``512M``, ``1.5GiB``, ``1000000`` (bytes) → bytes, ``0``/``none``: no limit;
    a bad size is the user's."""
    if str(text).strip().lower() in ("0", "none"):
        return 0
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(?:I?B)?\s*", str(text), re.I)
    if not m or float(m.group(1)) <= 0:
        raise SoftcheckError(f"--memory-limit takes a size such as 8G, 512M or 1.5G, "
                             f"got {text!r}")
    n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if n < 64 * 2**20:
        raise SoftcheckError(f"--memory-limit {text}: at least 64M (Python and NumPy alone "
                             "take about 100M)")
    return n


def default_memory_limit() -> int | None:
    """3/4 of the machine's memory (MemTotal), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(int(line.split()[1]) * 1024 * DEFAULT_FRACTION)
    except (OSError, ValueError, IndexError):
        pass
    return None


def resolve(limit: int | None) -> int | None:
    """The limit in effect: None → the default, 0 → none."""
    return default_memory_limit() if limit is None else (limit or None)


def describe(n: int | None) -> str:
    if not n:
        return "none"
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def _harden_judge() -> None:
    """The judge non-dumpable (PR_SET_DUMPABLE 0): no process of its uid without
    CAP_SYS_PTRACE may read or write its memory or open its fds through /proc."""
    if not _state.get("hardened"):
        _state["hardened"] = True
        try:
            ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)
        except (OSError, AttributeError):
            pass


def _mountpoint() -> str:
    """An empty folder of the judge's, where each sandbox mounts its own private tmpfs (the
    folder stays empty here; removed at exit)."""
    if "tmp" not in _state:
        _state["tmp"] = tempfile.mkdtemp(prefix="softcheck-sandbox-")
        atexit.register(shutil.rmtree, _state["tmp"], True)
    return _state["tmp"]


def pids_cgroup() -> tuple[str, str] | None:
    """A fresh cgroup allowing ``pids_limit()`` processes and threads, which the sandbox's helper joins
    before it starts anything: ``(path, how)``, or None where no pids controller is writable
    (cgroup v2 with the pids controller delegated, else cgroup v1's pids hierarchy)."""
    try:
        with open("/proc/self/mounts") as f:
            mounts = [ln.split() for ln in f]
        with open("/proc/self/cgroup") as f:
            mine = [ln.rstrip("\n").split(":", 2) for ln in f]
    except OSError:
        return None
    places = []
    for _, point, fstype, opts, *_ in mounts:
        if fstype == "cgroup2":
            own = next((p for h, c, p in mine if h == "0"), None)
            places.append((point, own, "cgroup v2 pids.max"))
        elif fstype == "cgroup" and "pids" in opts.split(","):
            own = next((p for h, c, p in mine if "pids" in c.split(",")), None)
            places.append((point, own, "cgroup v1 pids.max"))
    for point, own, how in places:
        if own is None:
            continue
        path = os.path.join(point + own, f"softcheck-{os.getpid()}-{os.urandom(4).hex()}")
        try:
            os.mkdir(path)
        except OSError:
            continue
        try:
            with open(os.path.join(path, "pids.max"), "w") as f:
                f.write(str(pids_limit()))
            return path, how
        except OSError:
            release(path)
    return None


def release(path: str | None) -> None:
    """Remove a sandbox's cgroup once its processes are gone (a few tries: the kernel takes
    the last exiting ones out a moment after they are reaped)."""
    import signal
    import time

    for _ in range(50):
        if not path:
            return
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                for pid in f.read().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (OSError, ValueError):
                        pass
        except OSError:
            pass
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)


def spawn(argv: list[str], *, env: dict, pass_fds: tuple, stdout, memory: int | None,
          host_shm: bool = False) -> tuple[subprocess.Popen, int, str | None]:
    """Start ``argv`` (the worker) in a sandbox; returns the helper's Popen (it ends as the
    worker ends, a signal as the same signal), the fd its status line comes on, and the
    cgroup limiting its processes (``release`` it after it ended), if any."""
    _harden_judge()
    cgroup = pids_cgroup()
    r, w = os.pipe()
    tmp = _mountpoint()
    off = os.environ.get(SWITCH, "").strip().lower() in ("0", "off", "no", "false")
    spec = {"parent": os.getpid(), "status_fd": w, "tmp": tmp, "memory": memory,
            "tmpfs": memory, "host_shm": host_shm, "namespaces": not off,
            "why_not": f"{SWITCH}={os.environ.get(SWITCH)}" if off else None,
            "nproc": pids_limit() if os.getuid() != 0 and cgroup is None else None,
            "pids_cgroup": cgroup and cgroup[0], "pids_by": cgroup and cgroup[1],
            "pids_max": pids_limit() if cgroup else None}
    env = {**env, "TMPDIR": tmp, "XDG_CACHE_HOME": os.path.join(tmp, "cache")}
    # compilers' caches in the private tmpfs: a host path (the user's, or one torch wrote into
    # os.environ in the parent) is read-only in the sandbox, and torch.compile failed there
    env["TRITON_CACHE_DIR"] = os.path.join(tmp, "triton")
    env["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tmp, "torchinductor")
    # and JAX's (reference/jaxsetup.py): the judge's ~/.cache/softcheck/jax is read-only here
    # (a compile not in it warned into the candidate's output), and not the candidate's to use
    env["SOFTCHECK_CACHE_DIR"] = os.path.join(tmp, "jax")
    if memory:
        env["SOFTCHECK_MEMORY_LIMIT"] = str(memory)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-S", "-I", "-B", INIT, json.dumps(spec), "--", *argv],
            stdin=subprocess.DEVNULL, stdout=stdout, stderr=stdout, close_fds=True,
            pass_fds=(*pass_fds, w), start_new_session=True, env=env, cwd=os.getcwd())
    except BaseException:
        os.close(r)
        release(cgroup and cgroup[0])
        raise
    finally:
        os.close(w)
    return proc, r, cgroup and cgroup[0]


def read_status(fd: int, timeout: float | None) -> dict:
    """The helper's one JSON line (what is in effect); ``{}`` if it ended without one."""
    data = b""
    try:
        while not data.endswith(b"\n"):
            ready, _, _ = select.select([fd], [], [], timeout or 60.0)
            if not ready:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    try:
        info = json.loads(data.decode() or "{}")
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def worker_pid(helper: int, info: dict) -> int:
    """The worker's pid as the judge sees it: the helper itself without namespaces, else the
    child of the namespace's init that is PID 2 inside."""
    if info.get("kind") != "namespaces":
        return helper
    for init in _children(helper):
        for pid in _children(init):
            try:
                with open(f"/proc/{pid}/status") as f:
                    ns = next(ln for ln in f if ln.startswith("NSpid:")).split()
            except (OSError, StopIteration):
                continue
            if ns[-1] == "2":
                return pid
    return helper


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        from .processes import _proc_table

        return sorted(p for p, (pp, _) in _proc_table().items() if pp == pid)


def report(info: dict) -> dict:
    """What the report says of the sandbox (schema: candidate_process.<label>.sandbox)."""
    keys = ("kind", "user", "pid", "mount", "read_only", "no_new_privs", "parent_death_signal",
            "memory_limit", "memory_by", "pids_limit", "pids_by", "why")
    out = {k: info.get(k) for k in keys if k in info}
    out.setdefault("kind", "unknown")
    if out.get("pids_limit") is None:
        out["pids_why"] = info.get("pids_why") or (
            "none: the kernel does not count uid 0's processes against RLIMIT_NPROC, and no "
            "writable cgroup pids controller was found")
    if out["kind"] != "namespaces":      # the console's one line (report/console.py)
        out["weaker"] = "sandbox: " + (info.get("why") or "its helper did not say what it "
                                                          "set up")
    return out


def explain(error: str, memory: int | None) -> str:
    """A candidate's error that says an allocation failed names the memory limit."""
    if memory and error and _OOM.search(error) and "memory limit" not in error:
        return f"exceeded the memory limit of {describe(memory)} (--memory-limit): {error}"
    return error
