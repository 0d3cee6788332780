"""Run a candidate in its own OS process (a drop-in for Candidate): death and timeouts are
failed calls, arrays cross through shared memory, nothing it starts outlives it."""

from __future__ import annotations

import atexit
import io
import mmap
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
import weakref

import numpy as np

from ..spec import Inputs, SoftcheckError
from .call import OUTPUT_LIMIT, CallResult, clip_output, kwargs_for
from .processes import _descendants, _kill, _proc_table, _set_subreaper, _tagged  # noqa: F401
from .conventions import Settings

#: the gradients a convention call returns besides the main one (other upstream gradients)
MAX_VARIANTS = 2

_HEADER = struct.Struct("<Q")
_MAX_REPLY = 1 << 20
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

class _Died(Exception):
    pass


class _SafeUnpickler(pickle.Unpickler):
    """Replies hold only builtins: unpickling never imports or runs anything the worker names."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"the worker's reply names {module}.{name}")


class _Worker:
    """One live worker process, its channel and output file; ``stop`` ends it and all it started."""

    def __init__(self, shm_fd: int, hello: dict, x64: bool, start_timeout: float | None,
                 pids: list[int], module: str = "softcheck.candidate.worker_main",
                 env: dict | None = None, *, wait: bool = True):
        _set_subreaper()
        parent_sock, child_sock = socket.socketpair()
        self.out = tempfile.TemporaryFile()
        self.tag = f"SOFTCHECK_WORKER_TAG={os.getpid()}-{uuid.uuid4().hex}".encode()
        extra, env = env, dict(os.environ)
        env["SOFTCHECK_WORKER_FDS"] = f"{child_sock.fileno()},{shm_fd},{os.getpid()}"
        env["SOFTCHECK_WORKER_TAG"] = self.tag.split(b"=", 1)[1].decode()
        # the parent's import path (pytest's rootdir, a script's folder): a TARGET module or a
        # function re-imported by module and name resolves there as it does here
        path = [_PACKAGE_ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        path += [p for p in sys.path if p and os.path.isdir(p) and p not in path]
        env["PYTHONPATH"] = os.pathsep.join(path)
        if x64:
            env["JAX_ENABLE_X64"] = "1"
        env.update(extra or {})
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module], stdin=subprocess.DEVNULL,
                stdout=self.out, stderr=self.out, close_fds=True,
                pass_fds=(child_sock.fileno(), shm_fd), start_new_session=True, env=env,
                cwd=os.getcwd())
        finally:
            child_sock.close()
        pids.append(self.proc.pid)
        self.sock = parent_sock
        self.seq, self.bytes_sent, self.stopped = 0, 0, False
        self.limit = _MAX_REPLY
        _LIVE.add(self)
        try:                    # a kernel before 5.3 or a seccomp filter: poll the process
            self.pidfd = os.pidfd_open(self.proc.pid)
        except (OSError, AttributeError):
            self.pidfd = None
        try:
            self.send(hello)
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

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, obj) -> None:
        body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.sock.sendall(_HEADER.pack(len(body)) + body)
        except OSError as e:
            raise _Died(self.death_reason()) from e
        self.bytes_sent += _HEADER.size + len(body)

    def receive(self, timeout: float | None):
        """The next reply, or ``TimeoutError`` at the deadline, or ``_Died``."""
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
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    died = True
                buf += chunk
            elif self.pidfd in ready or (self.pidfd is None and self.proc.poll() is not None):
                self.sock.setblocking(False)
                try:
                    while chunk := self.sock.recv(1 << 16):
                        buf += chunk
                except (BlockingIOError, OSError):
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
        if grace and self.proc.poll() is None:
            try:
                os.killpg(pid, signal.SIGTERM)
                self.proc.wait(grace)
            except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(pid, signal.SIGKILL)
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
        for f in (self.sock, self.out):
            f.close()
        if self.pidfd is not None:
            os.close(self.pidfd)


_LIVE: set[_Worker] = set()
_CANDIDATES: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for c in list(_CANDIDATES):
        c.close()
    for w in list(_LIVE):
        w.stop()


class IsolatedCandidate:
    """The TARGET loaded and called in a worker process that is restarted after it dies or
    times out; arrays cross through one shared memory file."""

    #: the worker's module, and what it adds to the environment (engine/ranks.ShardMapCandidate)
    module = "softcheck.candidate.worker_main"
    env: dict = {}

    def __init__(self, source: str, hvp_source: str | None, label: str, *, x64: bool = True,
                 settings: Settings = Settings(),
                 grace: float = 2.0, start_timeout: float | None = 300.0):
        self.source, self.hvp_source, self.label = source, hvp_source, label
        self.settings = settings
        self.x64, self.grace, self.start_timeout = x64, grace, start_timeout
        self.pids: list[int] = []                  # every worker started, for tests and reports
        self._shm_fd = os.memfd_create("softcheck", 0)
        os.set_inheritable(self._shm_fd, False)
        self._mm, self._size = None, 0
        self._worker: _Worker | None = None
        self._closed = False
        _CANDIDATES.add(self)
        try:
            ready = self._start().ready
        except BaseException:
            self.close()
            raise
        self._params, self._varkw = set(ready["params"]), ready["varkw"]

    # -- the Candidate interface -------------------------------------------------------
    @property
    def hvp(self):
        return self.hvp_source

    def takes(self, name: str) -> bool:
        return name in self._params or self._varkw

    def kwargs(self, inputs: Inputs) -> dict:
        return kwargs_for(inputs, self.takes)

    def call(self, inputs: Inputs, *, timeout: float | None = None, repeat: int = 1,
             variants: bool = True) -> CallResult:
        if self.settings.convention != "grad":
            return self._call_convention(inputs, timeout, repeat, variants)
        return self._call("call", inputs, [inputs.logits, inputs.target], timeout, repeat)

    def _call_convention(self, inputs: Inputs, timeout, repeat, variants: bool = True
                         ) -> CallResult:
        """A loss / inplace / split / autograd.Function kernel: the worker runs the
        convention (``call.invoke_convention``); gradients come back through shared memory,
        the forward's values in the reply."""
        from ..reference.loss import values

        lse64 = values(inputs.float64()).lse
        arrays = {"weight": inputs.weight, "grad_output": np.asarray(inputs.grad_output),
                  "lse64": np.asarray(lse64, np.float64)}
        kw: dict = {k: np.asarray(v) for k, v in arrays.items() if v is not None}
        kw["variants"] = variants
        return self._call("convention", inputs, [inputs.logits, inputs.target], timeout, repeat,
                          kw=kw, outputs=1 + MAX_VARIANTS, spec=inputs.spec)

    def call_hvp(self, inputs: Inputs, direction, *, timeout=None) -> CallResult:
        return self._call("hvp", inputs, [inputs.logits, inputs.target, np.asarray(direction)],
                          timeout, 1)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        if not self._closed:
            self._closed = True
            if self._mm is not None:
                try:
                    self._mm.close()
                except BufferError:
                    pass
            os.close(self._shm_fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def pid(self) -> int | None:
        return None if self._worker is None else self._worker.pid

    @property
    def bytes_sent(self) -> int:
        return 0 if self._worker is None else self._worker.bytes_sent

    # -- internals ---------------------------------------------------------------------
    def _start(self) -> _Worker:
        hello = {"source": self.source, "hvp_source": self.hvp_source, "label": self.label,
                 "settings": self.settings}
        try:
            w = _Worker(self._shm_fd, hello, self.x64, self.start_timeout, self.pids,
                        module=self.module, env=self.env)
        except TimeoutError:
            raise SoftcheckError(f"TARGET {self.source}: loading took longer than "
                                 f"{self.start_timeout:g} s") from None
        except _Died as e:
            raise SoftcheckError(f"TARGET {self.source}: {e}".replace("during the call",
                                                                      "while loading")) from None
        if "load_error" in w.ready:
            w.stop()
            raise SoftcheckError(w.ready["load_error"])
        self._worker = w
        return w

    def exchange(self, req: dict, timeout, *, limit: int = _MAX_REPLY
                 ) -> tuple[dict | None, str | None, str]:
        """One request to the worker (started afresh if it died between calls) and its reply:
        ``(reply, error, output)``.  A death or a timeout is the error and ends the worker
        (and all it started); the candidate's error is the reply's."""
        if self._closed:
            raise SoftcheckError("this candidate was closed")
        if self._worker is not None and self._worker.proc.poll() is not None:
            self._worker.stop()                   # died between calls: start afresh
            self._worker = None
        try:
            w = self._worker or self._start()
        except SoftcheckError as e:
            return None, f"restarting the candidate's process failed: {e}", ""
        w.seq += 1
        w.limit = limit
        try:
            w.send({**req, "seq": w.seq, "shm_size": self._size})
            reply = w.receive(timeout)
            if not isinstance(reply, dict) or reply.get("seq") != w.seq:
                raise _Died("the candidate's process sent an invalid reply")
        except (TimeoutError, _Died) as e:
            output = w.output()
            timed_out = isinstance(e, TimeoutError)
            w.stop(self.grace if timed_out else None)
            self._worker = None
            return None, (f"took longer than {timeout:g} s (--timeout); the candidate's "
                          "process was stopped" if timed_out else str(e)), output
        output = w.output()
        return reply, (str(reply["error"]) if reply.get("error") else None), output

    def _place(self, arrays: list, out_bytes: int):
        """Write ``arrays`` into the shared file; descriptors for them and the output offset."""
        # ascontiguousarray makes a 0-d array 1-d: keep every array's own shape
        arrays = [np.ascontiguousarray(a).reshape(np.shape(a)) for a in arrays]
        offsets, pos = [], 0
        for a in arrays:
            offsets.append(pos)
            pos += -(-a.nbytes // 64) * 64
        need = pos + out_bytes
        if need > self._size:
            size = max(need, 2 * self._size, 1 << 16)
            os.ftruncate(self._shm_fd, size)
            if self._mm is not None:
                self._mm.close()
            self._mm, self._size = mmap.mmap(self._shm_fd, size), size
        for a, off in zip(arrays, offsets):
            np.frombuffer(self._mm, np.uint8, a.nbytes, off)[:] = a.reshape(-1).view(np.uint8)
        descs = [("arr", off, tuple(int(s) for s in a.shape), a.dtype.name)
                 for a, off in zip(arrays, offsets)]
        return descs, pos

    def _call(self, op, inputs: Inputs, args, timeout, repeat, *, kw=None, outputs: int = 1,
              spec=None) -> CallResult:
        if self._closed:
            raise SoftcheckError("this candidate was closed")
        kw = self.kwargs(inputs) if kw is None else kw
        names = [k for k, v in kw.items() if isinstance(v, np.ndarray)]
        arrays = [*args, *(kw[k] for k in names)]
        shape = tuple(inputs.logits.shape)
        size = 8 * int(np.prod(shape))
        descs, out_off = self._place(arrays, outputs * size)
        kw.update(zip(names, descs[len(args):]))
        # the reply carries the forward's (N,) values as lists (about 9 bytes a number)
        reply, error, output = self.exchange(
            {"op": op, "args": descs[:len(args)], "kw": kw, "shape": shape,
             "case_dtype": inputs.logits.dtype.name, "out": out_off,
             "repeat": max(1, int(repeat)), "spec": spec},
            timeout, limit=max(_MAX_REPLY, 64 * 8 * int(shape[0]) + (1 << 16)))
        if error is not None:
            return CallResult(None, error, output=output)

        def read(k: int) -> np.ndarray:
            n = int(np.prod(shape))
            return np.frombuffer(self._mm, np.float64, n, out_off + k * size).reshape(shape).copy()

        def arr(v):
            return None if v is None else np.asarray(v, np.float64)

        variants = tuple((str(lab), arr(g), read(k + 1))
                         for k, (lab, g) in enumerate(reply.get("variants", ())))
        ranks = tuple((int(r), int(a), int(b), arr(x), int(w))      # shard_map: per device
                      for r, a, b, x, w in reply.get("ranks", ()))
        return CallResult(read(0), None, tuple(str(n) for n in reply.get("notes", ())),
                          output=output, nondet=float(reply.get("nondet", 0.0)),
                          loss=arr(reply.get("loss")), z_loss=arr(reply.get("z_loss")),
                          lse=arr(reply.get("lse")), variants=variants, ranks=ranks)
