"""The worker process (``python -m softcheck.candidate.worker_main``): load the TARGET once,
then serve calls sent over the channel.  Nothing here reaches the parent but its replies."""

from __future__ import annotations

import ctypes
import faulthandler
import os
import pickle
import signal
import socket
import struct
import sys

import numpy as np

from .arena import close_all, recv_with_fds, send_with_fds
from .call import call_once, convention_once, invoke
from .record import x64_off
from .described import describe
from .errors import format_exception
from .load import load_in_worker

_HEADER = struct.Struct("<Q")


def _prctl(option: int, arg: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _recv(sock: socket.socket, fds: list | None = None):
    """The next request; the descriptors sent with it appended to ``fds``."""
    fds = [] if fds is None else fds
    head = _recv_exact(sock, _HEADER.size, fds)
    if head is None:
        return None
    body = _recv_exact(sock, _HEADER.unpack(head)[0], fds)
    return None if body is None else pickle.loads(body)


def _recv_exact(sock, n, fds):
    buf = bytearray()
    while len(buf) < n:
        chunk = recv_with_fds(sock, n - len(buf), fds)
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _send(sock, obj, fds=()) -> None:
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    send_with_fds(sock, _HEADER.pack(len(body)) + body, fds)


from . import shared  # noqa: E402
from .arena import (ArenaError, OutputArena, SealedInputs,  # noqa: E402
                    dtype_named as _dtype)


class _Shm:
    """One request's memory files: its sealed inputs (``fresh``; a streamed call's logits
    ``logits``, sent first) and the output file the judge asked for (``out``: made once the
    candidate has returned, so no child it forked maps it; written in place, sealed by
    ``serve_forever`` before the reply)."""

    def __init__(self):
        self.inputs = self.logits = self.out = None
        self.out_size = 0

    def begin(self, fds: list, out_size) -> None:
        files = [SealedInputs(fd) for fd in fds]
        self.inputs = files[-1] if files else None
        self.logits = files[0] if len(files) > 1 else None
        self.out, self.out_size = None, int(out_size or 0)

    def fresh(self, desc):
        """A writable private copy of an array described as ("arr", offset, shape, dtype)."""
        if self.inputs is None:
            raise ArenaError("no memory file came with the request")
        return self.inputs.fresh(desc)

    @property
    def mm(self):
        """The output file's writable mapping."""
        if not self.out_size:
            raise ArenaError("the judge asked for no output file")
        if self.out is None:
            self.out = OutputArena(self.out_size)
        return self.out.mm


def _write(shm: _Shm, arr, off: int) -> None:
    """``arr`` as it is (its own dtype: the judge converts it) at ``off`` in the output file."""
    arr = np.ascontiguousarray(arr)
    np.frombuffer(shm.mm, np.uint8, arr.nbytes, off)[:] = arr.reshape(-1).view(np.uint8)


#: the previous call's returned object, for the same-buffer note (reset at a case's first call)
_LAST: dict = {}


def serve_convention(cand, shm: _Shm, req: dict, runner=None) -> dict:
    """A convention call (loss, inplace, split, autograd.Function): ``convention_once`` on
    fresh Inputs (``runner``: another ``conventions.run``, shard_map's); the gradients to
    shared memory as they came, the forward's values (small) in the reply."""
    from ..spec import Inputs

    kw = req["kw"]
    weight = shm.fresh(kw["weight"]) if "weight" in kw else None
    inputs = Inputs(shm.fresh(req["args"][0]), shm.fresh(req["args"][1]), weight,
                    shm.fresh(kw["grad_output"]), req["spec"],
                    transposed=req.get("transposed") is True)
    lse64 = shm.fresh(kw["lse64"]) if "lse64" in kw else None
    r = convention_once(cand.fn, cand.settings, inputs, bwd=cand.backward, lse64=lse64,
                        variants=bool(kw.get("variants", True)),
                        upstream=kw.get("upstream") is True,
                        **({"runner": runner} if runner else {}))
    if r.error is not None:
        return {"error": r.error, "notes": list(r.notes)}
    size = 8 * int(np.prod(req["shape"]))
    for k, g in enumerate([r.grad] + [v[2] for v in r.variants]):
        _write(shm, g, req["out"] + k * size)

    def plain(v):
        return None if v is None else np.asarray(v, np.float64).tolist()

    return {"error": None, "notes": list(r.notes), "dtype": r.grad.dtype.name,
            "x64_off": x64_off(), "loss": plain(r.loss), "z_loss": plain(r.z_loss),
            "lse": plain(r.lse),
            "variants": [(lab, plain(g), x.dtype.name) for lab, g, x in r.variants],
            "ranks": [(r_, a, b, plain(x), w) for r_, a, b, x, w in r.ranks]}


def serve_call(cand, shm: _Shm, req: dict) -> dict:
    """One request: the candidate called once (``call_once``), its gradient written to
    shared memory as it came, and its other array arguments as they are after the call
    (``req["back"]``: where) for the judge to compare with its originals."""
    if req["op"] == "settings":                    # the judge resolved how it is called
        cand.settings = req["settings"]
        return {"error": None}
    if req["op"] == "convention":
        if req.get("stream"):                      # a large case's logits in place
            from .streamed import serve_convention as serve_streamed

            return serve_streamed(cand, shm, req)
        return serve_convention(cand, shm, req)
    if req["op"] == "block":                       # a kept repeat's rows (shared.py)
        return shared.block(req)
    if req["op"] == "fused":                       # fused linear cross-entropy (--hidden)
        from .fused import serve_fused

        return serve_fused(cand, shm, req)
    fn = cand.fn if req["op"] == "call" else cand.hvp
    if fn is None:
        return {"error": "no Hessian-vector product function was given"}
    if req.get("stream"):               # a large case's logits in place (shared.py)
        return _serve_stream(fn, shm, req)
    shared.drop()
    if req["index"] == 0:
        _LAST.clear()
    args = tuple(shm.fresh(d) for d in req["args"])
    kw = {k: shm.fresh(v) for k, v in req["kw"].items()}
    r = call_once(fn, args, kw, tuple(req["shape"]), _LAST)
    if r.error is not None:
        return {"error": r.error, "notes": list(r.notes)}
    _write(shm, r.grad, req["out"])
    for name, a in r.after:
        _, off, shape, dt = req["back"][name]
        a = np.asarray(a)
        if a.shape != tuple(shape) or a.dtype.name != dt:
            return {"error": f"changed the shape or dtype of its {name} argument in place",
                    "notes": list(r.notes)}
        _write(shm, a, off)
    return {"error": None, "notes": list(r.notes), "dtype": r.grad.dtype.name,
            "x64_off": x64_off()}


def _serve_stream(fn, shm: _Shm, req: dict) -> dict:
    """A large case's one call (shared.py): ``invoke`` with its sink on the sealed logits
    mapped copy-on-write; a repeat (``keep``) is kept here for ``shared.block`` to send."""
    if shm.logits is None:
        raise ArenaError("a streamed call came without its logits' memory file")

    def fresh():
        return (tuple(shared.private(shm.logits, d) if i == 0 else shm.fresh(d)
                      for i, d in enumerate(req["args"])),
                {k: shm.fresh(v) for k, v in req["kw"].items()})

    sink = shared.Keep() if req.get("keep") else shared.Sink(req)
    _, error, notes, nondet = invoke(
        fn, fresh, tuple(req["shape"]), _dtype(req["case_dtype"]), 1,
        pristine=lambda: shared.pristine(shm.logits, shm.inputs, req["args"]), sink=sink)
    if error is not None:
        return {"error": error, "notes": [str(x) for x in notes]}
    return {"error": None, "notes": [str(x) for x in notes], **sink.fields}


def _flush() -> None:
    for f in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            f.flush()
        except BaseException:  # noqa: BLE001
            pass


def start(hvp: bool = True):
    """Boot a worker process: die with the parent, enable faulthandler, read the hello, load
    the TARGET (a load error is replied, then exit), reply ready.  Returns (sock, shm, hello,
    candidate)."""
    ctl_fd, _, parent = (int(x) for x in os.environ["SOFTCHECK_WORKER_FDS"].split(","))
    _prctl(1, signal.SIGKILL)                     # PR_SET_PDEATHSIG: die with the parent
    if os.getppid() != parent:
        os._exit(3)
    faulthandler.enable()                         # fd 2 is the captured output file
    try:
        sys.stdout.reconfigure(line_buffering=True)
    except (AttributeError, ValueError):
        pass
    sock = socket.socket(fileno=ctl_fd)
    shm = _Shm()
    hello = _recv(sock)
    if hello is None:
        os._exit(0)
    try:
        cand = load_in_worker(hello, hvp=hvp)
        ready = {"ready": True, "fn": describe(cand.fn).wire(),
                 "hvp": None if cand.hvp is None else describe(cand.hvp).wire(),
                 "backward": None if cand.backward is None else describe(cand.backward).wire()}
    except BaseException as e:  # noqa: BLE001 - SoftcheckError's message, or what the import raised
        msg = str(e) if isinstance(e, ValueError) else \
            f"importing TARGET {hello.get('label') or hello['source']} raised {type(e).__name__}"
        _flush()
        _send(sock, {"load_error": msg})
        os._exit(0)
    _flush()
    _send(sock, ready)
    return sock, shm, hello, cand


def serve_forever(sock, shm: _Shm, handle) -> None:
    """Answer requests until the parent closes the channel: each call's output captured
    afresh (fds 1 and 2 share one file), ``handle(req)`` guarded, the reply sent.  A child
    the candidate forked that returns into this loop never answers (it ends)."""
    me = os.getpid()
    while True:
        fds: list[int] = []
        req = _recv(sock, fds)
        if req is None:
            os._exit(0)
        _flush()
        os.ftruncate(1, 0)
        os.lseek(1, 0, os.SEEK_SET)
        try:
            shm.begin(fds, req.get("out_size"))   # sealed inputs: closed after the call
            reply = handle(req)
        except (KeyboardInterrupt, SystemExit) as e:
            reply = {"error": f"raised {type(e).__name__}"}
        except BaseException as e:  # noqa: BLE001
            try:
                reply = {"error": f"judging its result failed: {format_exception(e)}"}
            except BaseException:  # noqa: BLE001
                reply = {"error": "judging its result failed"}
        if os.getpid() != me:
            os._exit(0)
        if shm.out_size:                    # the outputs written: sealed, then sent
            try:
                if reply.get("error"):
                    if shm.out is not None:
                        os.close(shm.out.fd)
                else:
                    _ = shm.mm                  # the file made if nothing was written
                    reply["fds"] = [shm.out.seal()]
            except (ArenaError, OSError) as e:
                reply = {"error": f"sending its outputs failed: {e}"}
        _flush()
        reply["seq"] = req["seq"]
        out = [int(f) for f in reply.pop("fds", ())]
        try:
            _send(sock, reply, out)
        finally:
            close_all(out)
            close_all(fds)
            shm.out, shm.out_size = None, 0


def main() -> None:
    sock, shm, _, cand = start()
    serve_forever(sock, shm, lambda req: serve_call(cand, shm, req))


if __name__ == "__main__":
    main()
