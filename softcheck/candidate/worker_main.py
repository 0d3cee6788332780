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
from .call import invoke, invoke_convention
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
from .arena import ArenaError, SealedInputs, dtype_named as _dtype, outputs  # noqa: E402


def serve_convention(cand, req: dict, runner=None) -> dict:
    """A convention call (loss, inplace, split, autograd.Function): ``invoke_convention`` on
    fresh Inputs (``runner``: another ``conventions.run``, shard_map's); gradients in a sealed
    output file, the forward's values (small) in the reply."""
    from ..spec import Inputs

    kw, shm = req["kw"], _inputs(req)

    def fresh():
        weight = shm.fresh(kw["weight"]) if "weight" in kw else None
        return Inputs(shm.fresh(req["args"][0]), shm.fresh(req["args"][1]), weight,
                      shm.fresh(kw["grad_output"]), req["spec"])

    lse64 = shm.fresh(kw["lse64"]) if "lse64" in kw else None
    r = invoke_convention(cand.fn, cand.settings, fresh, bwd=cand.backward, lse64=lse64,
                          repeat=req["repeat"], variants=bool(kw.get("variants", True)),
                          **({"runner": runner} if runner else {}))
    if r.error is not None:
        return {"error": r.error, "notes": [str(x) for x in r.notes]}
    def plain(v):
        return None if v is None else np.asarray(v, np.float64).tolist()

    return {"error": None, "notes": [str(x) for x in r.notes], "nondet": float(r.nondet),
            "loss": plain(r.loss), "z_loss": plain(r.z_loss), "lse": plain(r.lse),
            "variants": [(str(lab), plain(g)) for lab, g, _ in r.variants],
            "ranks": [(r_, a, b, plain(x), w) for r_, a, b, x, w in r.ranks],
            **outputs([r.grad] + [v[2] for v in r.variants])}


def _inputs(req: dict, k: int = -1) -> SealedInputs:
    """The request's sealed inputs (the last memory file sent with it; a streamed call's
    logits come first)."""
    files = req.get("files") or ()
    if not files:
        raise ArenaError("no memory file came with the request")
    return files[k]


def serve_call(cand, req: dict) -> dict:
    """One request: the candidate called (``invoke``), its gradient sent back in a sealed
    output file; a streamed case's repeat is kept here and sent back a block at a time."""
    if req["op"] == "convention":
        return serve_convention(cand, req)
    if req["op"] == "fused":                       # fused linear cross-entropy (--hidden)
        from .fused import serve_fused

        return serve_fused(cand, _inputs(req), req)
    if req["op"] == "block":                       # a kept repeat's rows (shared.py)
        return shared.block(req)
    shared.drop()
    fn = cand.fn if req["op"] == "call" else cand.hvp
    if fn is None:
        return {"error": "no Hessian-vector product function was given"}

    stream = bool(req.get("stream"))          # a large case's logits in place (shared.py)
    shm = _inputs(req)
    logits = _inputs(req, 0) if stream else None

    def fresh():
        return (tuple(shared.private(logits, d) if stream and i == 0 else shm.fresh(d)
                      for i, d in enumerate(req["args"])),
                {k: shm.fresh(v) for k, v in req["kw"].items()})

    sink = (shared.Keep() if req.get("keep") else shared.Sink(req)) if stream else None
    grad, error, notes, nondet = invoke(
        fn, fresh, tuple(req["shape"]), _dtype(req["case_dtype"]), req["repeat"],
        pristine=(lambda: shared.pristine(logits, shm, req["args"])) if stream else None,
        sink=sink)
    if error is not None:
        return {"error": error, "notes": [str(x) for x in notes]}
    reply = {"error": None, "notes": [str(x) for x in notes], "nondet": float(nondet)}
    return {**reply, **(sink.fields if sink is not None else outputs([grad]))}


def _flush() -> None:
    for f in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            f.flush()
        except BaseException:  # noqa: BLE001
            pass


def start(hvp: bool = True):
    """Boot a worker process: die with the parent, enable faulthandler, read the hello, load
    the TARGET (a load error is replied, then exit), reply ready.  Returns (sock, hello,
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
    return sock, hello, cand


def serve_forever(sock, handle) -> None:
    """Answer requests until the parent closes the channel: each call's output captured
    afresh (fds 1 and 2 share one file), ``handle(req)`` guarded (``req["files"]``: the
    sealed memory files that came with it, arena.SealedInputs), the reply sent."""
    while True:
        fds: list[int] = []
        req = _recv(sock, fds)
        if req is None:
            os._exit(0)
        _flush()
        os.ftruncate(1, 0)
        os.lseek(1, 0, os.SEEK_SET)
        try:
            req["files"] = [SealedInputs(fd) for fd in fds]   # closed after the call
            reply = handle(req)
        except (KeyboardInterrupt, SystemExit) as e:
            reply = {"error": f"raised {type(e).__name__}"}
        except BaseException as e:  # noqa: BLE001
            try:
                reply = {"error": f"judging its result failed: {format_exception(e)}"}
            except BaseException:  # noqa: BLE001
                reply = {"error": "judging its result failed"}
        _flush()
        reply["seq"] = req["seq"]
        out = [int(f) for f in reply.pop("fds", ())]
        try:
            _send(sock, reply, out)
        finally:
            close_all(out)
            close_all(fds)


def main() -> None:
    sock, _, cand = start()
    serve_forever(sock, lambda req: serve_call(cand, req))


if __name__ == "__main__":
    main()
