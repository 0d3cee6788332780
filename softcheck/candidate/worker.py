"""Run a candidate in its own OS process (a drop-in for Candidate): death and timeouts are
failed calls, arrays cross in sealed memory files (arena.py: inputs sealed by the judge
before the worker sees them, outputs sealed by the worker before the judge reads them),
nothing it starts outlives it."""

from __future__ import annotations

import atexit
import time
import weakref
from collections.abc import Callable

import numpy as np

from ..spec import Inputs, SoftcheckError
import softcheck.candidate.reply as wire
from .call import (ARGUMENT_NAMES, CallResult, exact_lse, judged, kwargs_for, repeated,
                   signature_of, with_layout_note)
from .arena import ArenaError, close_all, place, read_sealed, take_outputs
from .channel import _LIVE, _MAX_REPLY, _Died, _Worker
from .conventions import Settings, upstreams
from .described import BadDescription, Described, load_error

#: the gradients a convention call returns besides the main one (other upstream gradients)
MAX_VARIANTS = 2


_CANDIDATES: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for c in list(_CANDIDATES):
        c.close()
    for w in list(_LIVE):
        w.stop()


def described(ready: dict) -> tuple:
    """A ready reply's descriptions of the TARGET, its hvp and its backward (None where
    absent), each checked (``BadDescription``)."""
    fn = Described.from_wire(ready.get("fn"))
    rest = [None if ready.get(k) is None else Described.from_wire(ready[k])
            for k in ("hvp", "backward")]
    return (fn, *rest)


class IsolatedCandidate:
    """The TARGET loaded and called in a worker process that is restarted after it dies or
    times out; arrays cross through one shared memory file."""

    #: the worker's module, and what it adds to the environment (engine/shardmap.ShardMapCandidate)
    module = "softcheck.candidate.worker_main"
    env: dict = {}
    isolated = True                 # the CandidateProtocol (protocol.py)
    sandbox: dict | None = None     # what the first worker had in effect (its _start)

    def __init__(self, source: str, hvp_source: str | None, label: str, *, x64: bool = True,
                 settings: Settings = Settings(), memory_limit: int | None = None,
                 grace: float = 2.0, start_timeout: float | None = 300.0,
                 meanwhile: Callable[[], object] | None = None):
        self.source, self.hvp_source, self.label = source, hvp_source, label
        self.memory_limit = memory_limit
        self.settings = settings
        self.x64, self.grace, self.start_timeout = x64, grace, start_timeout
        self.pids: list[int] = []                  # every worker started, for tests and reports
        self._inputs = None       # the last call's sealed inputs (arena.Arena, _place)
        self._mm = None           # the last reply's sealed outputs, mapped read-only
        self._logits = None       # a large case's logits' arena (shared.py)
        self._shared = None                       # a large case's logits (shared.py)
        self._worker: _Worker | None = None
        self._closed = False
        self._serving = False                     # serve_as took it (once)
        _CANDIDATES.add(self)
        try:
            ready = self._start(meanwhile).ready
        except BaseException:
            self.close()
            raise
        self.described, self.described_hvp, self.described_backward = described(ready)
        params, self._varkw = signature_of(self.described)
        self._params = set(params)

    # -- the Candidate interface -------------------------------------------------------
    @property
    def hvp(self):
        return self.hvp_source

    def takes(self, name: str) -> bool:
        return name in self._params or self._varkw

    def kwargs(self, inputs: Inputs) -> dict:
        return kwargs_for(inputs, self.takes, self.settings)

    def call(self, inputs: Inputs, *, timeout: float | None = None, repeat: int = 1,
             variants: bool = True, upstream: bool = False, beside=None) -> CallResult:
        if self._shared is not None and inputs.logits is self._shared:   # shared.py
            from .shared import call_shared
            from .streamed import call_convention
            grad = self.settings.convention == "grad"
            r = call_shared(self, inputs, timeout, repeat, beside) if grad else \
                call_convention(self, inputs, timeout, repeat, variants)
        elif self.settings.convention != "grad":
            r = self._call_convention(inputs, timeout, repeat, variants, upstream)
        else:
            r = self._call("call", inputs, [inputs.logits, inputs.target], timeout, repeat)
        return with_layout_note(r, inputs, self.settings)

    def shared_logits(self, shape: tuple[int, int], dtype, pad: int = 0) -> np.ndarray:
        """A large case's logits, made in the shared file: sent without a copy (shared.py);
        ``pad`` > 0: the view [:, :C] of rows padded by that many elements (--layout)."""
        from .shared import logits_in

        self._shared = logits_in(self, shape, dtype, pad)
        return self._shared

    def _call_convention(self, inputs: Inputs, timeout, repeat, variants: bool = True,
                         upstream: bool = False) -> CallResult:
        """A loss / inplace / split / autograd.Function kernel: the worker runs the
        convention once per request (``call.convention_once``); gradients come back through shared memory,
        the forward's values in the reply."""
        arrays = {"weight": inputs.weight, "grad_output": np.asarray(inputs.grad_output),
                  "lse64": exact_lse(self.settings, inputs)}
        kw: dict = {k: np.asarray(v) for k, v in arrays.items() if v is not None}
        kw["variants"], kw["upstream"] = variants, upstream
        return self._call("convention", inputs, [inputs.logits, inputs.target], timeout, repeat,
                          kw=kw, outputs=1 + MAX_VARIANTS, spec=inputs.spec)

    def serve_as(self, source, hvp_source, settings, *, x64: bool,
                 memory_limit: int | None) -> bool:
        """This worker, which described the TARGET (load.describing_worker), serves its calls
        too when it was started as they need (same TARGET, memory limit, and JAX float64 for a
        JAX TARGET); its settings become the resolved ones.  Once: False after that."""
        if (self._closed or self._serving or source != self.source
                or hvp_source != self.hvp_source or memory_limit != self.memory_limit
                or (x64 != self.x64 and settings.framework == "jax")):
            return False
        reply, error, _ = self.exchange({"op": "settings", "settings": settings}, 60.0)
        if error is not None or reply is None:
            return False
        self.settings, self._serving = settings, True
        return True

    def call_fused(self, fi, *, timeout=None, repeat: int = 1):
        """Fused linear cross-entropy in the worker (fused.call_in_worker)."""
        from .fused import call_in_worker

        return call_in_worker(self, fi, timeout, repeat)

    def call_hvp(self, inputs: Inputs, direction, *, timeout=None) -> CallResult:
        return self._call("hvp", inputs, [inputs.logits, inputs.target, np.asarray(direction)],
                          timeout, 1)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        if not self._closed:
            self._closed = True
            for a in (self._inputs, self._logits):
                if a is not None:
                    a.close()

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
    def _start(self, meanwhile: Callable[[], object] | None = None) -> _Worker:
        """A new worker; ``meanwhile`` runs here while it loads (before its ready message)."""
        hello = {"source": self.source, "hvp_source": self.hvp_source, "label": self.label,
                 "settings": self.settings}
        try:
            w = _Worker(hello, self.x64, self.start_timeout, self.pids, module=self.module,
                        env=self.env, memory=self.memory_limit, meanwhile=meanwhile)
        except TimeoutError:
            raise SoftcheckError(f"TARGET {self.source}: loading took longer than "
                                 f"{self.start_timeout:g} s") from None
        except _Died as e:
            raise SoftcheckError(f"TARGET {self.source}: {e}".replace("during the call",
                                                                      "while loading")) from None
        if not isinstance(w.ready, dict) or "load_error" in w.ready:
            w.stop()
            raise load_error(w.ready.get("load_error") if isinstance(w.ready, dict) else None)
        try:
            described(w.ready)
        except BadDescription as e:
            w.stop()
            raise SoftcheckError(f"TARGET {self.label}: its process described it wrongly "
                                 f"({e})") from None
        self._worker = w
        self.sandbox = w.sandbox                  # what the first worker had in effect
        return w

    def exchange(self, req: dict, timeout, *, limit: int = _MAX_REPLY, fds=(), out=None
                 ) -> tuple[dict | None, str | None, str]:
        """One request to the worker (started afresh if it died between calls) and its reply:
        ``(reply, error, output)``; ``fds``: sealed memory files sent with the request, and
        ``reply["fds"]`` the ones that came back (the caller's to close: ``take``); ``out``:
        the bytes of the sealed output file the worker must send back, mapped read-only as
        ``self._mm`` once its seals and size are checked (a missing, unsealed or short one
        is the error).  A death or a timeout is the error and ends the worker (and all it
        started); the candidate's error is the reply's."""
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
            w.send({**req, "seq": w.seq, **({"out_size": out} if out else {})}, fds)
            deadline = None if not timeout else time.monotonic() + timeout
            while True:
                reply = w.receive(None if deadline is None else
                                  max(1e-3, deadline - time.monotonic()))
                seq = reply.get("seq") if isinstance(reply, dict) else None
                if not (type(seq) is int and seq < w.seq):
                    break           # an earlier request's (a forked child's copy): dropped
            if not isinstance(reply, dict) or reply.get("seq") != w.seq:
                raise _Died("the candidate's process sent an invalid reply")
            reply["fds"], w.fds = w.fds, []
        except (TimeoutError, _Died, OSError) as e:   # any socket error: the call failed
            output = w.output()
            timed_out = isinstance(e, TimeoutError)
            w.stop(self.grace if timed_out else None)
            self._worker = None
            why = (str(e) if isinstance(e, _Died) else
                   f"the channel to the candidate's process failed ({type(e).__name__}: {e}); "
                   "it was stopped")
            return None, (f"took longer than {timeout:g} s (--timeout); the candidate's "
                          "process was stopped" if timed_out else why), output
        output = w.output()
        if reply.get("error"):
            close_all(reply["fds"])
            return reply, w.explain(str(reply["error"])), output
        if out:
            fds = reply["fds"]
            try:
                if len(fds) != 1:
                    raise ArenaError(f"its reply brought {len(fds)} memory files, not 1")
                self._mm = read_sealed(fds.pop(), out)
            except ArenaError as e:
                return None, f"its outputs did not come back as they must: {e}", output
            finally:
                close_all(fds)
        return reply, None, output

    @staticmethod
    def take(reply, error, output, shapes) -> tuple[dict | None, str | None, str, list]:
        """The outputs a reply brought as ``arena.outputs`` sent them (a large case's:
        shared.py), its memory files closed whatever happened."""
        if error is not None:
            close_all(list((reply or {}).get("fds") or ()))
            return reply, error, output, []
        try:                            # its fields first (a block's reply has no notes)
            got = wire.checked({"notes": [], **reply}, {"out_dtypes": lambda v, what: v})
        except wire.ReplyError as e:
            close_all(list(reply.get("fds") or ()))
            return reply, f"the candidate's process sent an invalid reply ({e})", output, []
        reply = {**reply, "notes": list(got["notes"])}
        try:
            outs = take_outputs(reply, shapes)
        except (ArenaError, OSError, ValueError, TypeError) as e:
            return reply, f"its outputs did not come back as they must: {e}", output, []
        return reply, None, output, outs

    def _place(self, arrays: list, out_bytes: int):
        """``arrays`` in a fresh sealed memory file (``self._inputs``, its fd sent with the
        call's requests); their descriptors, and where the outputs start in the file the
        worker sends back (``out_bytes`` long: ``exchange``'s ``out``)."""
        if self._inputs is not None:
            self._inputs.close()
        self._inputs, descs = place(arrays)
        return descs, 0

    def _call(self, op, inputs: Inputs, args, timeout, repeat, *, kw=None, outputs: int = 1,
              spec=None) -> CallResult:
        """``repeat`` requests on the same inputs, each one call in the worker; the replies
        checked (reply.py) and judged here (record.py: repeats, arguments, dtypes)."""
        if self._closed:
            raise SoftcheckError("this candidate was closed")
        kw = self.kwargs(inputs) if kw is None else kw
        names = [k for k, v in kw.items() if isinstance(v, np.ndarray)]
        arrays = [*args, *(kw[k] for k in names)]
        shape = tuple(inputs.logits.shape)
        size = 8 * int(np.prod(shape))
        # a gradient function hands back its other array arguments after the call: the judge
        # compares them with these, its own (a convention kernel's are checked by conventions)
        back = [] if op == "convention" else [
            *zip(ARGUMENT_NAMES, args[1:]), *((k, kw[k]) for k in names)]
        back = [(k, np.asarray(a)) for k, a in back]
        out_bytes = outputs * size + sum(_aligned(a) for _, a in back)
        descs, out_off = self._place(arrays, out_bytes)
        if inputs.pad:          # the worker hands the logits over as a padded view (fresh)
            descs[0] = (*descs[0], int(inputs.pad))
        kw.update(zip(names, descs[len(args):]))
        backs, pos = {}, out_off + outputs * size
        for k, a in back:
            backs[k] = ("arr", pos, tuple(int(s) for s in a.shape), a.dtype.name)
            pos += _aligned(a)
        req = {"op": op, "args": descs[:len(args)], "kw": kw, "shape": shape,
               "case_dtype": inputs.logits.dtype.name, "out": out_off, "back": backs,
               "spec": spec, "transposed": inputs.transposed}
        fields = reply_fields(op, inputs, self._ranks_field(inputs))
        # the reply carries the forward's (N,) values as lists (about 9 bytes a number)
        limit = max(_MAX_REPLY, 64 * 8 * int(shape[0]) + (1 << 16))

        def read(k: int, dt) -> np.ndarray:
            n = int(np.prod(shape))
            return np.frombuffer(self._mm, dt, n, out_off + k * size).reshape(shape).copy()

        def once(i: int) -> CallResult:
            reply, error, output = self.exchange({**req, "index": i}, timeout, limit=limit,
                                                 fds=[self._inputs.fd], out=out_bytes)
            if reply is None:
                return CallResult(None, error, output=output)
            try:
                got = wire.checked(reply, fields)
            except wire.ReplyError as e:
                self._drop()
                return CallResult(None, f"the candidate's process sent an invalid reply ({e})",
                                  output=output)
            if got["error"] is not None:
                return CallResult(None, error, got["notes"], output)
            after = tuple((k, np.frombuffer(self._mm, a.dtype, a.size, backs[k][1])
                           .reshape(a.shape).copy()) for k, a in back)
            variants = tuple((lab, g, read(k + 1, dt))
                             for k, (lab, g, dt) in enumerate(got.get("variants", ())))
            raw = CallResult(read(0, got["dtype"]), None, got["notes"], output,
                             loss=got.get("loss"), z_loss=got.get("z_loss"), lse=got.get("lse"),
                             variants=variants, ranks=got.get("ranks", ()), after=after)
            return judged(raw, dict(back), inputs.logits.dtype, got["x64_off"])

        return repeated(once, repeat)

    def _ranks_field(self, inputs: Inputs):
        """The check of a convention reply's ``ranks`` (shard_map's: engine/ranks.py)."""
        return _no_ranks

    def _drop(self) -> None:
        """End a worker that sent a malformed reply (a fresh one serves the next call)."""
        if self._worker is not None:
            self._worker.stop()
            self._worker = None


def _aligned(a: np.ndarray) -> int:
    return -(-a.nbytes // 64) * 64


def _no_ranks(v, what):
    if v not in ([], ()):
        raise wire.ReplyError(f"{what} is {wire.show(v)}: this candidate has no ranks")
    return ()


def reply_fields(op: str, inputs: Inputs, ranks=_no_ranks) -> dict:
    """What a successful reply to ``op`` holds, each field's check (reply.py); ``ranks``:
    the check of a convention reply's per-device entries (shard_map's)."""
    fields = {"dtype": wire.dtype_name, "x64_off": wire.flag}
    if op != "convention":
        return fields
    n = int(inputs.logits.shape[0])
    expected = dict(upstreams(inputs))

    def variant(v, what):
        if not isinstance(v, (list, tuple)) or len(v) != 3:
            raise wire.ReplyError(f"{what} is not (label, upstream gradient, dtype)")
        lab = wire.text(v[0], f"{what}'s label")
        g = wire.values(v[1], f"{what}'s upstream gradient", n)
        if lab not in expected or g is None or np.shape(g) not in ((), np.shape(expected[lab])) \
                or not np.array_equal(np.broadcast_to(g, np.shape(expected[lab])), expected[lab]):
            raise wire.ReplyError(f"{what} is for an upstream gradient the judge did not ask for")
        return lab, expected[lab], wire.dtype_name(v[2], f"{what}'s dtype")

    def variants(v, what):
        if not isinstance(v, (list, tuple)) or len(v) > MAX_VARIANTS:
            raise wire.ReplyError(f"{what} is not a list of at most {MAX_VARIANTS}")
        return tuple(variant(x, f"{what}[{i}]") for i, x in enumerate(v))

    def forward(v, what):
        return wire.values(v, what, n)

    return {**fields, "variants": variants, "loss": forward, "z_loss": forward, "lse": forward,
            "ranks": ranks}
