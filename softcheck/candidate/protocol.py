"""The one interface every kind of candidate implements, so the engine never asks which kind
it holds: in this process (``call.Candidate``: ``--in-process``, ``in_process=True``), in a
sandboxed worker (``worker.IsolatedCandidate``), on torch.distributed ranks
(``engine/ranks.RankedCandidate``) or inside JAX shard_map (``engine/shardmap.ShardMapCandidate``).
``tests/test_candidate_protocol.py`` runs the same conformance checks against each kind."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class CandidateProtocol(Protocol):
    """What the engine may ask of a candidate, and nothing else."""

    label: str                  # its name in reports
    source: str | None          # TARGET with an absolute path (None: cannot be re-imported)
    hvp_source: str | None
    isolated: bool              # called in a process of its own (False: the judge's)
    x64: bool | None            # JAX float64 on in its process (None: not its own process)
    sandbox: dict | None        # what confined its process (candidate/sandbox.py), if any

    def takes(self, name: str) -> bool:
        """Whether it declares the keyword option ``name`` (``**kwargs`` takes them all)."""

    def call(self, inputs, *, timeout: float | None = None, repeat: int = 1,
             variants: bool = True, upstream: bool = False, beside=None):
        """Its gradient on ``inputs`` (a ``call.CallResult``); ``upstream``: a torch autograd
        kernel given logits an op upstream saved for its backward (conventions.py), the
        gradient that reaches that op's input; ``beside``: where the first call's gradient
        is final before the repeats are made (a plain function's sealed file, shared.py),
        ``beside(gradient)`` is called then, in the caller's thread; it may never be."""

    def call_hvp(self, inputs, direction, *, timeout: float | None = None):
        """Its Hessian-vector product along ``direction`` (a ``call.CallResult``)."""

    def call_fused(self, fi, *, timeout: float | None = None, repeat: int = 1):
        """Its fused linear cross-entropy outputs on ``fi`` (a ``fused.FusedResult``)."""

    def shared_logits(self, shape: tuple[int, int], dtype, pad: int = 0) -> np.ndarray | None:
        """A large case's logits made where its process reads them without a copy, or None
        (the engine then draws them in its own memory)."""

    def close(self) -> None:
        """End its process (nothing to end for one in this process)."""
