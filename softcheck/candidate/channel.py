"""One worker process and its channel: started with a clean argv in its own session, a
socketpair for requests and replies (length-prefixed pickles, unpickled with no class lookup),
output captured at fd level, and ``stop`` ending it and everything it started."""

from __future__ import annotations

import io
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid

from .sandbox import explain as _explain, read_status, release, resolve, spawn, worker_pid
from .arena import ArenaError, close_all, recv_with_fds, send_with_fds
from .call import OUTPUT_LIMIT, clip_output
from .processes import _descendants, _kill, _proc_table, _set_subreaper, _tagged

_HEADER = struct.Struct("<Q")
_MAX_REPLY = 1 << 20
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: every live worker process (stopped at exit: worker._close_all)
_LIVE: set = set()


class _Died(Exception):
    pass


class _SafeUnpickler(pickle.Unpickler):
    """Replies hold only builtins: unpickling never imports or runs anything the worker names."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"the worker's reply names {module}.{name}")


class _Worker:
    """One live worker process, its channel and output file; ``stop`` ends it and all it started."""

    def __init__(self, hello: dict, x64: bool, start_timeout: float | None,
                 pids: list[int], module: str = "softcheck.candidate.worker_main",
                 env: dict | None = None, *, wait: bool = True, memory: int | None = None,
                 host_shm: bool = False, meanwhile=None):
        _set_subreaper()
        parent_sock, child_sock = socket.socketpair()
        self.out = tempfile.TemporaryFile()
        self.tag = f"SOFTCHECK_WORKER_TAG={os.getpid()}-{uuid.uuid4().hex}".encode()
        extra, env = env, dict(os.environ)
        # control socket, (no shared file: memory files come with each request, arena.py),
        # parent (sandbox_init.py rewrites it to the pid the worker sees)
        env["SOFTCHECK_WORKER_FDS"] = f"{child_sock.fileno()},-1,{os.getpid()}"
        env["SOFTCHECK_WORKER_TAG"] = self.tag.split(b"=", 1)[1].decode()
        # the parent's import path (pytest's rootdir, a script's folder): a TARGET module or a
        # function re-imported by module and name resolves there as it does here
        path = [_PACKAGE_ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        # the caller's path too when the judge runs for a Python caller (engine/remote.py)
        extra_path = os.environ.get("SOFTCHECK_WORKER_PATH", "").split(os.pathsep)
        path += [p for p in [*sys.path, *extra_path] if p and os.path.isdir(p) and p not in path]
        env["PYTHONPATH"] = os.pathsep.join(path)
        if x64:
            env["JAX_ENABLE_X64"] = "1"
        env.update(extra or {})
        self.memory = resolve(memory)
        self.cgroup = None
        try:                            # in its sandbox (sandbox.py): the helper's Popen
            self.proc, status, self.cgroup = spawn(
                [sys.executable, "-m", module], env=env, stdout=self.out,
                pass_fds=(child_sock.fileno(),), memory=self.memory,
                host_shm=host_shm)
        finally:
            child_sock.close()
        self.sandbox: dict = {}
        self._pid, self._pids = self.proc.pid, pids
        self.sock = parent_sock
        self.seq, self.bytes_sent, self.stopped = 0, 0, False
        self.fds: list[int] = []              # descriptors the last reply brought
        self.limit = _MAX_REPLY
        _LIVE.add(self)
        try:                    # a kernel before 5.3 or a seccomp filter: poll the process
            self.pidfd = os.pidfd_open(self.proc.pid)
        except (OSError, AttributeError):
            self.pidfd = None
        try:
            self.sandbox = read_status(status, start_timeout)
            self.send(hello)
            if meanwhile is not None:     # the caller's own work while the worker loads
                meanwhile()
        except BaseException:
            self.stop()
            raise
        if wait:
            self.handshake(start_timeout)

    def handshake(self, start_timeout: float | None) -> None:
        """Wait for the ready message (the TARGET loaded); ``wait=False`` lets several
        processes start at once and be waited for in turn (the tensor-parallel ranks)."""
        try:
            self.ready = self.receive(start_timeout)
        except BaseException:
            self.stop()
            raise
        self._pid = worker_pid(self.proc.pid, self.sandbox)
        self._pids.append(self._pid)

    @property
    def pid(self) -> int:
        """The worker's own pid (inside a sandbox: not the helper's, ``proc.pid``)."""
        return self._pid

    def explain(self, error: str) -> str:
        """The candidate's error, naming the memory limit when an allocation failed."""
        return _explain(error, self.memory)

    def send(self, obj, fds=()) -> None:
        """One request; ``fds`` (sealed memory files, arena.py) go with it."""
        body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            send_with_fds(self.sock, _HEADER.pack(len(body)) + body, fds)
        except OSError as e:
            raise _Died(self.death_reason()) from e
        self.bytes_sent += _HEADER.size + len(body)

    def receive(self, timeout: float | None):
        """The next reply, or ``TimeoutError`` at the deadline, or ``_Died``; descriptors
        that came with it are in ``self.fds`` (the caller's to close)."""
        close_all(self.fds)
        deadline = None if not timeout else time.monotonic() + timeout
        buf, need, died = bytearray(), None, False
        while True:
            if need is None and len(buf) >= _HEADER.size:
                need = _HEADER.unpack(buf[:_HEADER.size])[0]
                if need > self.limit:
                    raise _Died("the candidate's process sent an invalid reply (too long)")
            if need is not None and len(buf) >= _HEADER.size + need:
                try:
                    return _SafeUnpickler(io.BytesIO(bytes(buf[_HEADER.size:]))).load()
                except Exception as e:  # noqa: BLE001
                    raise _Died(f"the candidate's process sent an invalid reply ({e})") from e
            if died:
                raise _Died(self.death_reason())
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            fds = [self.sock] + ([self.pidfd] if self.pidfd is not None else [])
            ready, _, _ = select.select(fds, [], [], wait if self.pidfd is not None
                                        else min(wait or 0.05, 0.05))
            if self.sock in ready:
                try:
                    chunk = recv_with_fds(self.sock, 1 << 16, self.fds)
                except ArenaError as e:
                    raise _Died(f"the candidate's process sent an invalid reply ({e})") from e
                except OSError:                 # reset: the worker ended with unread data
                    chunk = b""
                if not chunk:
                    died = True
                buf += chunk
            elif self.pidfd in ready or (self.pidfd is None and self.proc.poll() is not None):
                self.sock.setblocking(False)
                try:
                    while chunk := recv_with_fds(self.sock, 1 << 16, self.fds):
                        buf += chunk
                except (BlockingIOError, OSError, ArenaError):
                    pass
                self.sock.setblocking(True)
                died = True
            elif deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError

    def death_reason(self) -> str:
        try:
            code = self.proc.wait(2.0)
        except subprocess.TimeoutExpired:
            self.stop()
            return "the candidate's process closed its control channel; it was stopped"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = "?"
            what = f"was killed by signal {-code} ({name})"
        else:
            what = f"exited with status {code}"
        tail = self.tail()
        return f"the candidate's process {what} during the call" + (
            "; its last output:\n" + "\n".join("  | " + ln for ln in tail) if tail else "")

    def output(self) -> str:
        if self.out.closed:               # stopped already (a channel failure): nothing kept
            return ""
        size = os.fstat(self.out.fileno()).st_size
        text = os.pread(self.out.fileno(), OUTPUT_LIMIT, 0).decode("utf-8", "replace")
        return clip_output(text, size)

    def tail(self, lines: int = 16) -> list[str]:
        if self.out.closed:
            return []
        size = os.fstat(self.out.fileno()).st_size
        start = max(0, size - 8192)
        text = os.pread(self.out.fileno(), size - start, start).decode("utf-8", "replace")
        return text.splitlines()[-lines:]

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM the group (then SIGKILL after ``grace``; at once if None), then SIGKILL
        whatever it started that escaped the group, and reap what became our zombie."""
        if self.stopped:
            return
        self.stopped = True
        _LIVE.discard(self)
        me, pid = os.getpid(), self.proc.pid
        snap = _descendants(_proc_table(), pid) | {pid}
        # the helper's group, and the worker's own session inside a sandbox (while it lives)
        groups = [pid] + ([self._pid] if self._pid != pid and self._pid in snap else [])
        if grace and self.proc.poll() is None:
            try:
                for g in groups:
                    os.killpg(g, signal.SIGTERM)
                self.proc.wait(grace)
            except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
                pass
        for g in groups:
            try:
                os.killpg(g, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for p in snap:
            _kill(p)
        self.proc.wait()
        killed = set(snap)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            table = _proc_table()
            mine = _descendants(table, me)
            live = {p for p in table if table[p][1] != b"Z" and (
                (p in mine and p in killed) or _tagged(p, self.tag))}
            zombies = {p for p in mine & killed if table[p] == (me, b"Z")}
            for p in live:
                _kill(p)
            killed |= live
            for p in zombies:
                try:
                    os.waitpid(p, os.WNOHANG)
                except ChildProcessError:
                    pass
            if not live and not zombies and not any(p in table and p in mine for p in killed):
                break
            time.sleep(0.01)
        close_all(self.fds)
        release(self.cgroup)                    # killing whatever is still in it
        for f in (self.sock, self.out):
            f.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
