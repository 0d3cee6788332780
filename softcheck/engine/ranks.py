"""--tensor-parallel W: the TARGET on W torch.distributed ranks (real OS processes), each given
its column shard of the logits, or (``--framework jax``) inside jax.shard_map over W host
devices of one worker process; the shards' gradients judged per rank, the losses across ranks."""

from __future__ import annotations

import dataclasses
import select
import socket
import time

import numpy as np

import softcheck.candidate.reply as wire
from ..candidate.call import CallResult, judged, kwargs_for, repeated, signature_of
from ..candidate.described import BadDescription, load_error
from ..candidate.conventions import SHARD_KEYWORDS
from ..candidate.sharding import shards
from ..candidate.channel import _Died, _Worker, close_shared, shared_file
from ..candidate.worker import MAX_VARIANTS, IsolatedCandidate, described, reply_fields
from ..judge.compare import Comparison, Invariant, compare
from ..reference import analytic
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
    """One rank's shared memory file (``IsolatedCandidate._place`` writes into it)."""

    def __init__(self):
        self._shm_fd = shared_file("softcheck-rank")
        self._mm, self._size = None, 0

    def close(self):
        close_shared(self._mm, self._shm_fd)


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
                ranks.append(_Worker(slot._shm_fd, hello, self.x64, self.start_timeout,
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
        raise SoftcheckError("--hidden (fused linear cross-entropy) does not run on "
                             "--tensor-parallel ranks")

    def shared_logits(self, shape, dtype, pad: int = 0) -> None:
        """None: the ranks get their shards from the engine's own memory."""
        return None

    def call_hvp(self, inputs, direction, *, timeout=None) -> CallResult:
        return CallResult(None, FIRST_ORDER)

    # -- one call on every rank -------------------------------------------------------
    def call(self, inputs: Inputs, *, timeout: float | None = None, repeat: int = 1,
             variants: bool = True) -> CallResult:
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
        if self._ranks is not None and any(w.proc.poll() is not None for w in self._ranks):
            self._stop()
        try:
            ranks = self._ranks or self._start()
        except SoftcheckError as e:
            return CallResult(None, f"restarting the ranks failed: {e}")
        outs = 1 + MAX_VARIANTS if conv else 1
        names = [k for k, x in kw.items() if isinstance(x, np.ndarray)]
        target = np.ascontiguousarray(inputs.target)
        # each rank hands back its other array arguments after the call (not a convention's)
        back = [] if conv else [("target", target), *((k, np.asarray(kw[k])) for k in names)]
        placed = []
        for r, (w, slot, (a, b)) in enumerate(zip(ranks, self._slots, cols)):
            shard = np.ascontiguousarray(inputs.logits[:, a:b])
            arrays = [shard, target] + [np.asarray(kw[k]) for k in names]   # 0-d stays 0-d
            size = 8 * shard.size
            descs, out_off = _place(slot, arrays, outs * size, back)
            rkw = dict(kw)
            rkw.update(zip(names, descs[2:len(arrays)]))
            backs = dict(zip((k for k, _ in back), descs[len(arrays):]))
            w.seq += 1
            req = {"op": "convention" if conv else "call", "seq": w.seq, "index": index,
                   "shm_size": slot._size, "args": descs[:2], "kw": rkw, "back": backs,
                   "shape": tuple(shard.shape), "case_dtype": inputs.logits.dtype.name,
                   "out": out_off, "spec": inputs.spec if conv else None}
            placed.append((out_off, size, tuple(shard.shape), backs))
            try:
                w.send(req)
            except (_Died, OSError) as e:
                return self._failed(r, str(e))
        replies = self._gather(ranks, timeout, fields)
        if isinstance(replies, CallResult):
            return replies
        return self._assemble(replies, placed, cols, inputs, dict(back))

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
            try:
                got = wire.checked(reply, fields, w.seq)
            except wire.ReplyError as e:
                return self._failed(r, f"sent an invalid reply ({e})")
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
    """``arrays`` written into a rank's shared file, ``out_bytes`` for its outputs, then room
    for the arguments it hands back (``back``): descriptors of both, and the output offset."""
    extra = sum(-(-a.nbytes // 64) * 64 for _, a in back)
    descs, out_off = IsolatedCandidate._place(slot, arrays, out_bytes + extra)
    pos = out_off + out_bytes
    for _, a in back:
        descs.append(("arr", pos, tuple(int(s) for s in a.shape), a.dtype.name))
        pos += -(-a.nbytes // 64) * 64
    return descs, out_off


# ------------------------------------------------------------------------------- judging

def judge_ranks(call: CallResult, inputs64: Inputs, *, dtype: str, kappa: float, scale: float,
                user=None) -> tuple[list[Comparison], list[Invariant], tuple[str, ...]]:
    """Per rank: its shard's gradient against its columns of the float64 closed form (the
    other columns zeroed on both sides, so entries keep their global class ids); across ranks:
    the loss each returned, identical on every rank.  Hints name the sharding bug's pattern."""
    if not call.ranks:
        return [], [], ()
    ref = analytic.gradient(inputs64)
    comps, hints = [], []
    for r, a, b, _, _ in call.ranks:
        mask = np.zeros(ref.shape[1], bool)
        mask[a:b] = True
        comps.append(compare((f"candidate[rank {r}]", "analytic"),
                             np.where(mask, call.grad, 0.0), np.where(mask, ref, 0.0),
                             inputs=inputs64, dtype=dtype, kappa=kappa, scale=scale, user=user))
    bad = [c for c in comps if not c.passed]
    invs = []
    losses = [(r, loss) for r, _, _, loss, _ in call.ranks if loss is not None]
    if losses:
        r0, l0 = losses[0]
        diffs = [(r, float(np.max(np.abs(np.asarray(x) - np.asarray(l0)), initial=0.0)))
                 for r, x in losses[1:]]
        worst = max(diffs, key=lambda d: d[1], default=(r0, 0.0))
        same = all(np.array_equal(np.asarray(x), np.asarray(l0), equal_nan=True)
                   for _, x in losses[1:])
        detail = (f"every one of the {len(call.ranks)} ranks returned the same loss" if same else
                  "the ranks disagree on the loss: " + ", ".join(
                      f"rank {r} differs from rank {r0} by up to {d:.3g}" for r, d in diffs
                      if d or not np.isfinite(d)))
        invs.append(Invariant("ranks_agree_on_loss", "candidate", bool(same), detail))
        if not same:
            hints.append(f"the ranks disagree on the loss (rank {worst[0]} by {worst[1]:.3g}): "
                         "a reduction is not all-reduced across the group (the max, the sum of "
                         "exps or the target logit computed from the shard alone)")
    hints[:0] = _shard_width_hint(call, inputs64, ref, bad, dtype, kappa, scale)
    if bad and not hints:
        hints.append("wrong on rank" + ("s " if len(bad) > 1 else " ") + ", ".join(
            c.pair[0].split()[-1].rstrip("]") for c in bad) + " of " + str(len(call.ranks)))
    return comps, invs, tuple(hints)


def _shard_width_hint(call, inputs64: Inputs, ref, bad, dtype, kappa, scale) -> list[str]:
    """Label smoothing's uniform part spread over the shard's width V/W instead of the
    vocabulary V (Megatron #737): on rank r the smoothing term of the gradient is scaled by
    V/V_r (uniform) or (V-1)/(V_r-1) (others), V_r the width it was given (JAX: padded);
    matched with the per-rank tolerance."""
    spec = inputs64.spec
    if not bad or not spec.label_smoothing:
        return []
    plain = analytic.gradient(dataclasses.replace(inputs64, spec=spec.replace(label_smoothing=0.0)))
    smooth = ref - plain                    # the smoothing term (linear in EPS)
    v = ref.shape[1]
    hit = []
    for c in bad:
        r = int(c.pair[0].split()[-1].rstrip("]"))
        _, a, b, _, width = call.ranks[r]
        k = (v / width) if spec.smoothing_convention == "uniform" else (v - 1) / max(width - 1, 1)
        # off-target columns: the term is -EPS/V (resp. -EPS/(V-1)) per entry, times g
        t = inputs64.target
        off = np.ones_like(ref, bool)
        rows = np.flatnonzero(inputs64.valid)
        off[rows, t[rows]] = False
        mask = np.zeros_like(ref, bool)
        mask[:, a:b] = True
        mask &= off
        want = np.where(mask, plain + k * smooth, 0.0)
        got = np.where(mask, call.grad, 0.0)
        if compare(("x", "y"), got, want, inputs=inputs64, dtype=dtype, kappa=kappa,
                   scale=scale).passed:
            hit.append(r)
    if not hit:
        return []
    return [f"label smoothing uses the shard's vocabulary size on rank{'s' if len(hit) > 1 else ''} "
            f"{', '.join(map(str, hit))}: its uniform part is EPS/(V/W) instead of EPS/V "
            "(Megatron-LM #737)"]
