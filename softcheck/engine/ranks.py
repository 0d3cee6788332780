"""--tensor-parallel W: the TARGET on W torch.distributed ranks (real OS processes), each given
its column shard of the logits, or (``--framework jax``) inside jax.shard_map over W host
devices of one worker process; the shards' gradients judged per rank, the losses across ranks."""

from __future__ import annotations

import dataclasses
import os
import select
import socket
import time

import numpy as np

from ..candidate.call import CallResult, kwargs_for, signature_of
from ..candidate.described import BadDescription, load_error
from ..candidate.conventions import SHARD_KEYWORDS
from ..candidate.sharding import shards
from ..candidate.arena import ArenaError, close_all, place, take_outputs
from ..candidate.channel import _Died, _Worker
from ..candidate.worker import IsolatedCandidate, described
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
        self._params = set(params) - {"group"}

    def takes(self, name: str) -> bool:
        return name in self._params or self._varkw

    def _start(self) -> list[_Worker]:
        init = f"tcp://127.0.0.1:{_free_port()}"
        ranks: list[_Worker] = []
        try:              # all W start at once (their imports overlap), then each is awaited
            for r in range(self.world):
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
        if not inputs.spec.hard:
            return CallResult(None, HARD_ONLY)
        n, v = inputs.logits.shape
        cols = shards(v, self.world, self.split)
        conv = self.settings.convention != "grad"
        if conv:
            kw = {"weight": inputs.weight, "grad_output": np.asarray(inputs.grad_output)}
            kw = {k: np.asarray(x) for k, x in kw.items() if x is not None}
            kw["variants"] = variants
        else:
            kw = kwargs_for(inputs, self.takes)
        if self._ranks is not None and any(w.proc.poll() is not None for w in self._ranks):
            self._stop()
        try:
            ranks = self._ranks or self._start()
        except SoftcheckError as e:
            return CallResult(None, f"restarting the ranks failed: {e}")
        shapes = []
        for r, (w, (a, b)) in enumerate(zip(ranks, cols)):
            names = [k for k, x in kw.items() if isinstance(x, np.ndarray)]
            shard = np.ascontiguousarray(inputs.logits[:, a:b])
            arena, descs = place([shard, inputs.target] + [kw[k] for k in names])
            rkw = dict(kw)
            rkw.update(zip(names, descs[2:]))
            w.seq += 1
            req = {"op": "convention" if conv else "call", "seq": w.seq,
                   "args": descs[:2], "kw": rkw,
                   "shape": tuple(shard.shape), "case_dtype": inputs.logits.dtype.name,
                   "repeat": max(1, int(repeat)), "spec": inputs.spec if conv else None}
            shapes.append(tuple(shard.shape))
            try:
                w.send(req, [arena.fd])       # a sealed file (arena.py), closed once sent
            except _Died as e:
                return self._failed(r, str(e))
            finally:
                arena.close()
        replies = self._gather(ranks, timeout)
        if isinstance(replies, CallResult):
            return replies
        return self._assemble(replies, shapes, cols, (n, v))

    def _gather(self, ranks: list[_Worker], timeout):
        """Every rank's reply, or the CallResult of the first rank that died, raised or hung."""
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
            if not isinstance(reply, dict) or reply.get("seq") != w.seq:
                close_all(w.fds)
                return self._failed(r, "sent an invalid reply")
            reply["fds"], w.fds = w.fds, []
            if reply.get("error"):
                # a peer's death makes the survivors' collectives raise (gloo: "Read error"):
                # name the rank that died, not the first one to report the broken group
                dead = _first_dead(ranks, r, within=1.0)
                if dead is not None:
                    return self._failed(dead, ranks[dead].death_reason())
                close_all(reply["fds"])
                return self._failed(r, w.explain(str(reply["error"])))
            replies[r] = reply
        return replies

    def _failed(self, r: int, why: str) -> CallResult:
        output = "\n".join(f"[rank {k}] " + ln for k, w in enumerate(self._ranks or ())
                           for ln in w.output().splitlines())
        self._stop()
        why = why.replace("the candidate's process", "its process")
        return CallResult(None, f"rank {r} of {self.world}: {why}; all ranks were stopped",
                          output=output)

    def _assemble(self, replies, shapes, cols, shape) -> CallResult:
        got = []                                 # each rank's outputs, from its sealed file
        for r in range(len(replies)):
            try:
                got.append(take_outputs(replies[r], [shapes[r]] * (
                    1 + len(replies[r].get("variants", ())))))
            except (ArenaError, OSError, ValueError, TypeError) as e:
                for k in range(r + 1, len(replies)):
                    close_all(replies[k].get("fds") or [])
                return self._failed(r, f"its outputs did not come back as they must: {e}")
        full = [np.concatenate([np.asarray(g[j], np.float64) for g in got], axis=1)
                for j in range(1 + len(replies[0].get("variants", ())))]
        first = replies[0]

        def arr(x):
            return None if x is None else np.asarray(x, np.float64)

        variants = tuple((str(lab), arr(g), full[k + 1])
                         for k, (lab, g) in enumerate(first.get("variants", ())))
        notes = []
        for r in range(len(replies)):
            notes += [f"rank {r}: {x}" for x in replies[r].get("notes", ())
                      if f"rank {r}: {x}" not in notes]
        info = tuple((r, a, b, arr(replies[r].get("loss")), b - a)
                     for r, (a, b) in enumerate(cols))
        return CallResult(full[0], None, tuple(notes),
                          output="\n".join(f"[rank {r}] " + ln for r, w in
                                           enumerate(self._ranks or ())
                                           for ln in w.output().splitlines()),
                          nondet=max(float(replies[r].get("nondet", 0.0)) for r in replies),
                          loss=arr(first.get("loss")), z_loss=arr(first.get("z_loss")),
                          lse=arr(first.get("lse")), variants=variants, ranks=info)


class ShardMapCandidate(IsolatedCandidate):
    """``--framework jax``: one worker process (candidate/shard_main.py) hosting the W XLA
    host devices (XLA_FLAGS set before JAX starts there), the TARGET called inside
    jax.shard_map (candidate/sharding.py); every device's loss comes back for the judging.
    A death or timeout of that process fails the call like any isolated candidate's."""

    module = "softcheck.candidate.shard_main"

    def __init__(self, source: str, label: str, settings, *, x64: bool = True,
                 memory_limit: int | None = None):
        self.world, self.split = settings.tensor_parallel, settings.split    # before it starts
        super().__init__(source, None, label, x64=x64, settings=settings,
                         memory_limit=memory_limit)
        self._params -= set(SHARD_KEYWORDS)

    @property
    def env(self) -> dict:                # type: ignore[override]
        from ..reference.jaxsetup import host_devices

        return {"XLA_FLAGS": host_devices(self.world, os.environ.get("XLA_FLAGS", "")),
                "JAX_PLATFORMS": "cpu"}

    def call(self, inputs: Inputs, *, timeout: float | None = None, repeat: int = 1,
             variants: bool = True) -> CallResult:
        if not inputs.spec.hard:
            return CallResult(None, HARD_ONLY)
        return super().call(inputs, timeout=timeout, repeat=repeat, variants=variants)

    def shared_logits(self, shape, dtype, pad: int = 0) -> None:
        """None: shard_map takes its logits whole from the engine (never streamed)."""
        return None

    def call_hvp(self, inputs, direction, *, timeout=None) -> CallResult:
        return CallResult(None, FIRST_ORDER)

    def exchange(self, req: dict, timeout, **kw):
        reply, error, output = super().exchange(req, timeout, **kw)
        if error and reply is None:               # died or hung: every device with it
            error = error.replace("the candidate's process", "the shard_map worker (hosting "
                                  f"all {self.world} devices)")
        return reply, error, output


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
