"""--tensor-parallel W: the TARGET on W torch.distributed ranks (real OS processes), each given
its column shard of the logits, or (``--framework jax``) inside jax.shard_map over W host
devices of one worker process; the shards' gradients judged per rank, the losses across ranks."""

from __future__ import annotations

import select
import socket
import time

import numpy as np

import softcheck.candidate.reply as wire
from ..candidate.call import CallResult, judged, kwargs_for, repeated, signature_of
from ..candidate.described import BadDescription, load_error
from ..candidate.conventions import SHARD_KEYWORDS
from ..candidate.sharding import shards
from ..candidate.arena import ArenaError, close_all, read_sealed
from ..candidate.channel import _Died, _Worker
from ..candidate.worker import MAX_VARIANTS, IsolatedCandidate, described, reply_fields
from ..spec import Inputs, SoftcheckError

RANK_MAIN = "softcheck.candidate.rank_main"
FIRST_ORDER = "--tensor-parallel checks first-order gradients only"
HARD_ONLY = ("--tensor-parallel shards the logits' columns and gives every rank the global "
             "class ids: --targets index only")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Slot:
    """One rank's memory files: its call's sealed inputs (``IsolatedCandidate._place``) and
    its last reply's sealed outputs (``_mm``, ``_out`` bytes long)."""

    def __init__(self):
        self._inputs = self._mm = None
        self._out = 0

    def close(self):
        if self._inputs is not None:
            self._inputs.close()


def _first_dead(ranks: list[_Worker], but: int, within: float) -> int | None:
    """The first rank other than ``but`` whose process has ended, waiting up to ``within``
    seconds for one to end."""
    deadline = time.monotonic() + within
    while True:
        for k, w in enumerate(ranks):
            if k != but and w.proc.poll() is not None:
                return k
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)


class RankedCandidate:
    """A Candidate drop-in: W rank processes started once and reused across cases; a rank
    that dies, hangs or raises fails the call (rank named) and all W are stopped, to be
    started afresh for the next call."""

    def __init__(self, source: str, label: str, settings, *, x64: bool = True,
                 grace: float = 2.0, start_timeout: float | None = 300.0,
                 memory_limit: int | None = None):
        self.target, self.label, self.settings = source, label, settings
        self.memory_limit, self.sandbox = memory_limit, {}
        self.source = None              # never re-loaded by a pool worker: the ranks are here
        self.world, self.backend, self.split = (settings.tensor_parallel, settings.backend,
                                                settings.split)
        self.x64, self.grace, self.start_timeout = x64, grace, start_timeout
        self.hvp = None
        self.pids: list[int] = []
        self._slots = [_Slot() for _ in range(self.world)]
        self._ranks: list[_Worker] | None = None
        try:
            ready = self._start()[0].ready
        except BaseException:
            self.close()
            raise
        try:
            params, self._varkw = signature_of(described(ready)[0])
        except BadDescription as e:
            self.close()
            raise SoftcheckError(f"TARGET {self.target}: rank 0 described it wrongly ({e})"
                                 ) from None
        self._params = set(params) - {settings.kernel_name("group")}

    def takes(self, name: str) -> bool:
        return name in self._params or self._varkw

    def _start(self) -> list[_Worker]:
        init = f"tcp://127.0.0.1:{_free_port()}"
        ranks: list[_Worker] = []
        try:              # all W start at once (their imports overlap), then each is awaited
            for r, slot in enumerate(self._slots):
                hello = {"source": self.target, "label": self.label, "settings": self.settings,
                         "rank": r, "world": self.world, "backend": self.backend, "init": init}
                # each rank its own sandbox, the network shared (gloo's TCP on loopback);
                # NCCL's shared memory needs the host's /dev/shm
                ranks.append(_Worker(hello, self.x64, self.start_timeout,
                                     self.pids, module=RANK_MAIN, wait=False,
                                     memory=self.memory_limit,
                                     host_shm=self.backend == "nccl"))
            for r, w in enumerate(ranks):
                try:
                    w.handshake(self.start_timeout)
                except TimeoutError:
                    raise SoftcheckError(f"TARGET {self.target}: rank {r} took longer than "
                                         f"{self.start_timeout:g} s to load it") from None
                except _Died as e:
                    raise SoftcheckError(f"TARGET {self.target}: rank {r}: "
                                         f"{e}".replace("during the call", "while loading")
                                         ) from None
                if not isinstance(w.ready, dict) or "load_error" in w.ready:
                    raise load_error(w.ready.get("load_error")
                                     if isinstance(w.ready, dict) else None)
        except BaseException:
            for w in ranks:
                w.stop()
            raise
        self._ranks = ranks
        self.sandbox = ranks[0].sandbox
        return ranks

    def _stop(self, grace: float | None = None) -> None:
        for w in self._ranks or ():
            w.stop(grace)
        self._ranks = None

    def close(self) -> None:
        self._stop()
        for s in self._slots:
            s.close()
        self._slots = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    isolated = True                 # the CandidateProtocol (candidate/protocol.py)
    hvp_source = None

    def call_fused(self, fi, *, timeout=None, repeat: int = 1):
        """Fused linear cross-entropy on vocab-parallel ranks (``--hidden``, as Apple CCE's
        VocabParallelOptions): rank r gets x, its rows W[a:b] (bias[a:b]) and the global
        targets; back come its loss, its grad_x (the all-reduced whole: judged on every rank)
        and its rows of grad_W (grad_b), joined here (candidate/fused.py ``joined``)."""
        from ..candidate import fused

        cols = shards(fi.lm_weight.shape[0], self.world, self.split)
        sent = [fused.fused_request(fi, c) for c in cols]
        dt, fields = fused.out_dtype(fi), fused.loss_fields(fi)

        def one(i: int):
            def build(r: int, slot: _Slot):
                names, arrays, layout, nbytes = sent[r]
                descs, out = _place(slot, arrays, nbytes, [])
                return {"op": "fused", "index": i, "arrays": dict(zip(names, descs)),
                        "spec": fi.spec, "shape": fi.shape, "out": out, "layout": layout}, out

            replies, outs = self._round(build, timeout, fields)
            if isinstance(replies, CallResult):
                return fused.FusedResult(error=replies.error, output=replies.output)
            return fused.joined([(r, a, b, replies[r]["loss"],
                                  fused.read_grads(self._slots[r]._mm, outs[r], sent[r][2], dt),
                                  replies[r]["notes"]) for r, (a, b) in enumerate(cols)],
                                self._output())

        return fused.fused_repeated(one, repeat)

    def shared_logits(self, shape, dtype, pad: int = 0) -> None:
        """None: the ranks get their shards from the engine's own memory."""
        return None

    def call_hvp(self, inputs, direction, *, timeout=None) -> CallResult:
        return CallResult(None, FIRST_ORDER)

    # -- one call on every rank -------------------------------------------------------
    def call(self, inputs: Inputs, *, timeout: float | None = None, repeat: int = 1,
             variants: bool = True, upstream: bool = False, beside=None) -> CallResult:
        """``repeat`` calls on every rank (each its own request), judged here."""
        if not inputs.spec.hard:
            return CallResult(None, HARD_ONLY)
        conv = self.settings.convention != "grad"
        if conv:
            kw = {"weight": inputs.weight, "grad_output": np.asarray(inputs.grad_output)}
            kw = {k: np.asarray(x) for k, x in kw.items() if x is not None}
            kw["variants"] = variants
        else:
            kw = kwargs_for(inputs, self.takes, self.settings)
        fields = reply_fields("convention" if conv else "call", inputs)
        return repeated(lambda i: self._once(inputs, kw, fields, timeout, i), repeat)

    def _once(self, inputs: Inputs, kw: dict, fields: dict, timeout, index: int) -> CallResult:
        n, v = inputs.logits.shape
        cols = shards(v, self.world, self.split)
        conv = self.settings.convention != "grad"
        outs = 1 + MAX_VARIANTS if conv else 1
        names = [k for k, x in kw.items() if isinstance(x, np.ndarray)]
        target = np.ascontiguousarray(inputs.target)
        # each rank hands back its other array arguments after the call (not a convention's)
        back = [] if conv else [("target", target), *((k, np.asarray(kw[k])) for k in names)]

        def build(r: int, slot: _Slot):
            a, b = cols[r]
            shard = np.ascontiguousarray(inputs.logits[:, a:b])
            arrays = [shard, target] + [np.asarray(kw[k]) for k in names]   # 0-d stays 0-d
            size = 8 * shard.size
            descs, out_off = _place(slot, arrays, outs * size, back)
            rkw = dict(kw)
            rkw.update(zip(names, descs[2:len(arrays)]))
            backs = dict(zip((k for k, _ in back), descs[len(arrays):]))
            return ({"op": "convention" if conv else "call", "index": index, "args": descs[:2],
                     "kw": rkw, "back": backs, "shape": tuple(shard.shape),
                     "case_dtype": inputs.logits.dtype.name, "out": out_off,
                     "spec": inputs.spec if conv else None},
                    (out_off, size, tuple(shard.shape), backs))

        replies, placed = self._round(build, timeout, fields)
        if isinstance(replies, CallResult):
            return replies
        return self._assemble(replies, placed, cols, inputs, dict(back))

    def _round(self, build, timeout, fields: dict):
        """One request on every rank (the ranks restarted first if one has died):
        ``build(r, slot)`` → (its request, what the caller keeps of it), sent with the slot's
        sealed inputs; then every reply (``_gather``).  ``(replies, kept)``, or the
        CallResult of the first rank that failed and None."""
        if self._ranks is not None and any(w.proc.poll() is not None for w in self._ranks):
            self._stop()
        try:
            ranks = self._ranks or self._start()
        except SoftcheckError as e:
            return CallResult(None, f"restarting the ranks failed: {e}"), None
        kept = []
        for r, (w, slot) in enumerate(zip(ranks, self._slots)):
            req, keep = build(r, slot)
            kept.append(keep)
            w.seq += 1
            try:
                w.send({**req, "seq": w.seq, "out_size": slot._out},
                       [slot._inputs.fd])       # its sealed inputs (arena.py)
            except (_Died, OSError) as e:
                return self._failed(r, str(e)), None
        replies = self._gather(ranks, timeout, fields)
        return replies, (kept if not isinstance(replies, CallResult) else None)

    def _gather(self, ranks: list[_Worker], timeout, fields: dict):
        """Every rank's reply, checked (reply.py), or the CallResult of the first rank that
        died, raised, hung or sent a malformed reply."""
        deadline = None if not timeout else time.monotonic() + timeout
        replies: dict[int, dict] = {}
        while len(replies) < len(ranks):
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            fds = {}
            for r, w in enumerate(ranks):
                if r not in replies:
                    fds[w.sock] = r
                    if w.pidfd is not None:
                        fds[w.pidfd] = r
            ready, _, _ = select.select(list(fds), [], [], wait)
            if not ready:
                slow = [r for r in range(len(ranks)) if r not in replies]
                output = "\n".join(f"[rank {r}] " + ln for r in slow
                                   for ln in ranks[r].output().splitlines())
                self._stop(self.grace)
                names = ", ".join(map(str, slow))
                return CallResult(None, f"rank{'s' if len(slow) > 1 else ''} {names} took "
                                        f"longer than {timeout:g} s (--timeout): hung, perhaps "
                                        "in a collective another rank never entered; all "
                                        f"{len(ranks)} ranks were stopped", output=output)
            r = fds[ready[0]]
            w = ranks[r]
            try:
                reply = w.receive(None if deadline is None else
                                  max(0.1, deadline - time.monotonic()))
            except (_Died, TimeoutError) as e:
                return self._failed(r, str(e) or "did not finish its reply")
            except OSError as e:                          # any socket error: the call failed
                return self._failed(r, f"its channel failed ({type(e).__name__}: {e})")
            sent, w.fds = w.fds, []
            try:
                got = wire.checked(reply, fields, w.seq)
                if not got["error"]:              # its outputs, sealed by it, checked here
                    if len(sent) != 1:
                        raise ArenaError(f"its reply brought {len(sent)} memory files, not 1")
                    self._slots[r]._mm = read_sealed(sent.pop(), self._slots[r]._out)
            except wire.ReplyError as e:
                return self._failed(r, f"sent an invalid reply ({e})")
            except ArenaError as e:
                return self._failed(r, f"its outputs did not come back as they must: {e}")
            finally:
                close_all(sent)
            if got["error"]:
                # a peer's death makes the survivors' collectives raise (gloo: "Read error"):
                # name the rank that died, not the first one to report the broken group
                dead = _first_dead(ranks, r, within=1.0)
                if dead is not None:
                    return self._failed(dead, ranks[dead].death_reason())
                return self._failed(r, w.explain(got["error"]))
            replies[r] = got
        return replies

    def _failed(self, r: int, why: str) -> CallResult:
        output = self._output()
        self._stop()
        why = why.replace("the candidate's process", "its process")
        return CallResult(None, f"rank {r} of {self.world}: {why}; all ranks were stopped",
                          output=output)

    def _output(self) -> str:
        return "\n".join(f"[rank {r}] " + ln for r, w in enumerate(self._ranks or ())
                         for ln in w.output().splitlines())

    def _assemble(self, replies, placed, cols, inputs: Inputs, originals: dict) -> CallResult:
        """Each rank's raw shard judged (its arguments, its dtype), then the shards joined."""
        per = []
        for r in range(len(self._slots)):
            off, size, sh, backs = placed[r]
            got, mm = replies[r], self._slots[r]._mm

            def read(j: int, dt, off=off, size=size, sh=sh, mm=mm) -> np.ndarray:
                return np.frombuffer(mm, dt, size // 8, off + j * size).reshape(sh).copy()

            after = tuple((k, np.frombuffer(mm, a.dtype, a.size, backs[k][1]).reshape(
                a.shape).copy()) for k, a in originals.items())
            raw = CallResult(read(0, got["dtype"]), None, got["notes"], after=after,
                             variants=tuple((lab, g, read(k + 1, dt)) for k, (lab, g, dt)
                                            in enumerate(got.get("variants", ()))))
            one = judged(raw, originals, inputs.logits.dtype, got["x64_off"])
            if one.error is not None:
                return CallResult(None, f"rank {r} of {self.world}: {one.error}",
                                  output=self._output())
            per.append(one)
        full = [np.concatenate([p.grad for p in per], axis=1)] + [
            np.concatenate([p.variants[k][2] for p in per], axis=1)
            for k in range(len(per[0].variants))]
        first = replies[0]
        variants = tuple((lab, g, full[k + 1])
                         for k, (lab, g, _) in enumerate(per[0].variants))
        notes = []
        for r, p in enumerate(per):
            notes += [f"rank {r}: {x}" for x in p.notes if f"rank {r}: {x}" not in notes]
        info = tuple((r, a, b, replies[r].get("loss"), b - a)
                     for r, (a, b) in enumerate(cols))
        return CallResult(full[0], None, tuple(notes), output=self._output(),
                          loss=first.get("loss"), z_loss=first.get("z_loss"),
                          lse=first.get("lse"), variants=variants, ranks=info)


def _place(slot, arrays: list, out_bytes: int, back: list):
    """``arrays`` in a rank's sealed input file; in its output file ``out_bytes`` for its
    outputs, then room for the arguments it hands back (``back``): descriptors of both, and
    the output offset."""
    extra = sum(-(-a.nbytes // 64) * 64 for _, a in back)
    descs, out_off = IsolatedCandidate._place(slot, arrays, out_bytes + extra)
    slot._out = out_bytes + extra
    pos = out_off + out_bytes
    for _, a in back:
        descs.append(("arr", pos, tuple(int(s) for s in a.shape), a.dtype.name))
        pos += -(-a.nbytes // 64) * 64
    return descs, out_off
