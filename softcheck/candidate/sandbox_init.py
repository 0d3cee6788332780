"""The sandbox a worker process starts in (``python -S -I sandbox_init.py SPEC -- ARGV``; the
standard library only, no softcheck import): new user, PID and mount namespaces made with
unshare(2), every mount read-only but a private tmpfs for temporary files and /dev/shm, a fresh
read-only /proc showing only the sandbox, no capabilities, no new privileges, a parent-death
signal and resource limits; then the worker (ARGV) is executed as PID 2 under a tiny init.

Three processes: this helper (the judge's child, outside the PID namespace: it mirrors the
worker's end as its own, a signal as the same signal), the namespace's init (PID 1: when it
ends the kernel kills everything left in the namespace) and the worker.  Where namespaces
cannot be made (no user namespaces, a seccomp filter), the worker is executed in place with
the limits alone; either way one JSON line on the status fd says what is in effect."""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import struct
import sys

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID = 0x00020000, 0x10000000, 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 0x4000, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP = 1, 4, 24
PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 38, 47, 4
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, AT_RECURSIVE, AT_FDCWD = 1, 2, 0x8000, -100
SYS_MOUNT_SETATTR = 442                   # the same number on every architecture (5.12+)
_ST_FLAGS = {1: MS_RDONLY, 2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC}   # statvfs → mount flags

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def prctl(option: int, arg: int = 0, arg3: int = 0) -> int:
    return _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(arg3),
                       ctypes.c_ulong(0), ctypes.c_ulong(0))


def _mount(src, target: str, fstype, flags: int, data=None) -> None:
    enc = (lambda s: None if s is None else s.encode())
    _check(_libc.mount(enc(src), target.encode(), enc(fstype), ctypes.c_ulong(flags),
                       enc(data)), f"mount {target}")


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


#: device files a program may open for writing: those whose writes go nowhere or to the
#: kernel's pool, and the accelerators' (a GPU is opened O_RDWR: NVIDIA's, DRM's, AMD's kfd)
WRITABLE_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
ACCELERATOR_DEVICES = ("/dev/nvidia*", "/dev/nvidia-caps/*", "/dev/dri/*", "/dev/kfd")


def writable_devices() -> list[str]:
    """The device files bound read-write into the read-only mounts (existing ones only)."""
    import glob

    found = [d for d in WRITABLE_DEVICES if os.path.exists(d)]
    for pattern in ACCELERATOR_DEVICES:
        found += sorted(p for p in glob.glob(pattern) if not os.path.isdir(p))
    return found


def _read_only_everywhere() -> None:
    """Every mount of the new namespace read-only and nosuid: one recursive mount_setattr
    (5.12+), else a bind remount of each mount keeping its locked flags."""
    attr = struct.pack("QQQQ", MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, 0, 0)
    buf = ctypes.create_string_buffer(attr, len(attr))
    if _libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(AT_FDCWD), b"/",
                     ctypes.c_uint(AT_RECURSIVE), buf, ctypes.c_size_t(len(attr))) == 0:
        return
    with open("/proc/self/mountinfo") as f:
        points = [ln.split()[4].encode().decode("unicode_escape") for ln in f]
    for p in points:
        try:
            st = os.statvfs(p)
        except OSError:
            continue
        keep = sum(v for k, v in _ST_FLAGS.items() if st.f_flag & k)
        _mount(None, p, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | keep)


def _drop_privileges() -> None:
    """No capability left or to be gained (bounding set emptied, ambient cleared, the
    effective/permitted/inheritable sets zeroed), and no new privileges on exec."""
    cap = 0
    while prctl(PR_CAPBSET_DROP, cap) == 0 or ctypes.get_errno() != 22:  # EINVAL: past the last
        cap += 1
        if cap > 127:
            break
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = struct.pack("Ii", 0x20080522, 0)                           # _LINUX_CAPABILITY_VERSION_3
    data = ctypes.create_string_buffer(24)
    _libc.capset(ctypes.create_string_buffer(header, 8), data)
    _check(prctl(PR_SET_NO_NEW_PRIVS, 1), "PR_SET_NO_NEW_PRIVS")


def _limits(spec: dict) -> None:
    """The memory limit as RLIMIT_DATA (private writable memory: what an allocation takes;
    not RLIMIT_AS, which XLA's address-space reservations exceed), processes and threads as
    RLIMIT_NPROC (counted per user namespace; the kernel exempts uid 0)."""
    if spec.get("memory"):
        resource.setrlimit(resource.RLIMIT_DATA, (spec["memory"], spec["memory"]))
    if spec.get("nproc"):
        resource.setrlimit(resource.RLIMIT_NPROC, (spec["nproc"], spec["nproc"]))


def _namespaces(spec: dict) -> None:
    """unshare the user, mount and PID namespaces (the caller keeps its uid and gid: mapped to
    themselves), then the mounts: all read-only, private tmpfs on the temporary folder and
    /dev/shm (or the host's /dev/shm writable: ranks that share it, NCCL)."""
    uid, gid = os.getuid(), os.getgid()
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID), "unshare")
    try:
        _write("/proc/self/setgroups", "deny")
    except OSError:
        pass
    _write("/proc/self/uid_map", f"{uid} {uid} 1")
    _write("/proc/self/gid_map", f"{gid} {gid} 1")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _read_only_everywhere()
    size = f",size={spec['tmpfs']}" if spec.get("tmpfs") else ""
    _mount("tmpfs", spec["tmp"], "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777" + size)
    if os.path.isdir("/dev/shm"):
        if spec.get("host_shm"):
            _mount("/dev/shm", "/dev/shm", None, MS_BIND | MS_REC)
        else:
            _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777" + size)
    # a read-only /dev made opening a device for writing EROFS: subprocess(stdout=DEVNULL)
    # failed in the worker (torch inductor, CCE), and so would a GPU's O_RDWR open
    for dev in writable_devices():
        try:                               # each bound afresh, read-write
            _mount(dev, dev, None, MS_BIND)
            _mount(None, dev, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NOEXEC)
        except OSError:
            pass                           # a locked read-only flag: it stays as it was


def _exec_worker(spec: dict, argv: list[str], parent: int) -> None:
    """The worker: its own session, killed when its parent dies, limits set, no privileges,
    signals as a fresh process has them; then exec (never returns)."""
    try:
        try:
            os.setsid()
        except OSError:                       # already a session leader (no namespaces)
            pass
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(3)
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGPIPE, signal.SIGCHLD):
            signal.signal(s, signal.SIG_DFL)
        _limits(spec)
        _drop_privileges()
        env = dict(os.environ)
        fds = env["SOFTCHECK_WORKER_FDS"].split(",")
        env["SOFTCHECK_WORKER_FDS"] = ",".join(fds[:2] + [str(parent)])
        os.execve(argv[0], argv, env)
    except BaseException as e:  # noqa: BLE001
        os.write(2, f"softcheck sandbox: starting the worker failed: {e}\n".encode())
    os._exit(127)


def _close_worker_fds() -> None:
    """Close the worker's control socket and shared file here (the helper and init keep no
    copy: a worker that closes its own must leave the judge reading end-of-file)."""
    for fd in os.environ["SOFTCHECK_WORKER_FDS"].split(",")[:2]:
        try:
            os.close(int(fd))
        except OSError:
            pass


def _init(spec: dict, argv: list[str], status_w: int) -> None:
    """PID 1 of the namespace: a fresh /proc, then the worker as PID 2; reap every orphan,
    and when the worker ends send its wait status up and end (so does the namespace)."""
    try:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
    except BaseException as e:  # noqa: BLE001
        os.write(2, f"softcheck sandbox: {e}\n".encode())
        os._exit(127)
    pid = os.fork()
    if pid == 0:
        os.close(status_w)
        _exec_worker(spec, argv, 1)
    _close_worker_fds()
    prctl(PR_SET_DUMPABLE, 0)
    _drop_privileges()
    while True:
        try:
            done, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(0)
        except InterruptedError:
            continue
        if done == pid:
            os.write(status_w, struct.pack("<i", status))
            os._exit(0)


def _mirror(status: int) -> None:
    """End as the worker ended: its exit status, or killed by the same signal."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def main() -> None:
    spec = json.loads(sys.argv[1])
    argv = sys.argv[sys.argv.index("--") + 1:]
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != spec["parent"]:
        os._exit(3)
    prctl(PR_SET_DUMPABLE, 0)
    info = {"user": os.getuid(), "no_new_privs": True, "parent_death_signal": True,
            "memory_limit": spec.get("memory"), "pids_limit": spec.get("nproc"),
            "pids_by": "rlimit_nproc" if spec.get("nproc") else None,
            "memory_by": "rlimit_data" if spec.get("memory") else None}
    if spec.get("pids_cgroup"):             # first, before anything here forks
        try:
            _write(os.path.join(spec["pids_cgroup"], "cgroup.procs"), "0")
            info.update(pids_limit=spec["pids_max"], pids_by=spec["pids_by"])
        except OSError as e:
            info["pids_why"] = f"joining its cgroup failed: {e.strerror or e}"
    try:
        if not spec.get("namespaces", True):
            raise OSError(0, f"turned off by {spec.get('why_not')}")
        _namespaces(spec)
    except OSError as e:
        why = e.strerror if e.errno == 0 else f"no user namespaces here: {e.strerror or e}"
        info.update(kind="limits", pid=False, mount=False, read_only=False,
                    why=f"{why}; the candidate runs as the same user, sees every process "
                        "and can write every file it could")
        os.write(spec["status_fd"], (json.dumps(info) + "\n").encode())
        os.close(spec["status_fd"])
        _exec_worker(spec, argv, spec["parent"])
    info.update(kind="namespaces", pid=True, mount=True, read_only=True,
                private_tmp=spec["tmp"])
    r, w = os.pipe()
    init = os.fork()
    if init == 0:
        os.close(r)
        os.close(spec["status_fd"])
        _init(spec, argv, w)
    os.close(w)
    _close_worker_fds()
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)      # the judge's SIGTERM is for the worker
    _drop_privileges()
    os.write(spec["status_fd"], (json.dumps(info) + "\n").encode())
    os.close(spec["status_fd"])
    while True:
        try:
            _, status = os.waitpid(init, 0)
            break
        except InterruptedError:
            continue
    data = os.read(r, 4)
    if len(data) == 4:
        _mirror(struct.unpack("<i", data)[0])
    _mirror(status)


if __name__ == "__main__":
    main()
