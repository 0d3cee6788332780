"""``--tensor-parallel W --framework jax``: the TARGET inside jax.shard_map over W XLA host
devices of one worker process (candidate/shard_main.py, candidate/sharding.py), judged by
``ranks.judge_ranks`` as torch ranks are."""

from __future__ import annotations

import dataclasses
import os

import softcheck.candidate.reply as wire
from ..candidate.call import CallResult
from ..candidate.conventions import SHARD_KEYWORDS
from ..candidate.worker import IsolatedCandidate
from ..spec import Inputs, SoftcheckError
from .ranks import FIRST_ORDER, HARD_ONLY


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
             variants: bool = True, upstream: bool = False, beside=None) -> CallResult:
        if not inputs.spec.hard:
            return CallResult(None, HARD_ONLY)
        try:
            cols, width = self._layout(inputs)
        except SoftcheckError as e:
            return CallResult(None, str(e))
        r = super().call(inputs, timeout=timeout, repeat=repeat, variants=variants)
        if r.error is None and self.settings.convention == "grad":   # each device's columns
            r = dataclasses.replace(r, ranks=tuple((k, a, b, None, width)
                                                   for k, (a, b) in enumerate(cols)))
        return r

    def _layout(self, inputs: Inputs):
        from ..candidate.sharding import layout

        return layout(int(inputs.logits.shape[1]), self.world, self.split)

    def _ranks_field(self, inputs: Inputs):
        """Every device's (rank, start, stop, loss, width): the columns the judge's own
        layout gives, the loss a list of values."""
        n = int(inputs.logits.shape[0])
        cols, width = self._layout(inputs)
        want = [(k, a, b, width) for k, (a, b) in enumerate(cols)]

        def ranks(v, what):
            if not isinstance(v, (list, tuple)) or len(v) != len(want):
                raise wire.ReplyError(f"{what} is not one entry per device ({len(want)})")
            out = []
            for k, (x, w) in enumerate(zip(v, want)):
                if not isinstance(x, (list, tuple)) or len(x) != 5 or (
                        *x[:3], x[4]) != w or any(isinstance(y, bool) for y in x):
                    raise wire.ReplyError(f"{what}[{k}] is not device {k}'s columns "
                                          f"{w[1]}:{w[2]} of width {w[3]}")
                out.append((k, w[1], w[2], wire.values(x[3], f"{what}[{k}]'s loss", n),
                            w[3]))
            return tuple(out)
        return ranks

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
