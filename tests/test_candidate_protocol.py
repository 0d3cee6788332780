"""#26: one Candidate protocol.  Every kind of candidate (in this process, a sandboxed worker,
torch.distributed ranks, JAX shard_map) implements ``candidate.protocol.CandidateProtocol``
and behaves the same on the same case: a correct kernel agrees with the float64 closed form,
a wrong one is caught, and closing ends its processes."""

import os

import numpy as np
import pytest

from softcheck.candidate import load
from softcheck.candidate.conventions import settings
from softcheck.candidate.protocol import CandidateProtocol
from softcheck.candidate.worker import IsolatedCandidate
from softcheck.engine.case import run_case
from softcheck.suite.config import config
from softcheck.suite.kernel import select

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUMPY = os.path.join(ROOT, "scripts/examples/numpy_ce.py")
RANKS = os.path.join(ROOT, "scripts/examples/vocab_parallel_ce.py")
JAX_RANKS = os.path.join(ROOT, "scripts/examples/jax_vocab_parallel_ce.py")


def _case(**kw):
    cfg = config(classes=8, batch=4, dtype="float64", regime="normal", **kw)
    (case,) = select(cfg, check=True)[0][:1]
    return case


def _in_process():
    return load(f"{NUMPY}:grad", in_process=True)


def _isolated():
    return IsolatedCandidate(f"{NUMPY}:grad", None, "grad")


def _ranks():
    pytest.importorskip("torch")
    from softcheck.engine.ranks import RankedCandidate

    described = load(f"{RANKS}:vocab_parallel_ce", settings=settings(convention="loss",
                                                                      tensor_parallel=2))
    described.close()                             # its ranks start as ranks
    st = described.settings
    return RankedCandidate(f"{RANKS}:vocab_parallel_ce", "ranks", st)


def _shard_map():
    pytest.importorskip("jax")
    from softcheck.engine.shardmap import ShardMapCandidate

    src = f"{JAX_RANKS}:vocab_parallel_ce"
    described = load(src, settings=settings(convention="loss", tensor_parallel=2,
                                            framework="jax"))
    described.close()
    st = described.settings
    return ShardMapCandidate(src, "shard_map", st)


KINDS = {"in_process": _in_process, "isolated": _isolated, "torch_ranks": _ranks,
         "jax_shard_map": _shard_map}


@pytest.mark.slow  # 16 s measured (2 cores, load ~1): CI runs the rest
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_implements_the_protocol_and_agrees_on_a_case(kind):
    cand = KINDS[kind]()
    try:
        assert isinstance(cand, CandidateProtocol)
        assert cand.isolated is (kind != "in_process")
        assert isinstance(cand.label, str) and cand.label
        if kind != "isolated":                      # only a plain worker takes streamed logits
            assert cand.shared_logits((2, 2), np.float32) is None
        if cand.isolated:
            assert cand.sandbox is None or cand.sandbox.get("kind") in ("namespaces", "limits")
        r = run_case(_case(), cand)
        assert r.passed, (r.error, [c.reason for c in r.comparisons if not c.passed])
        assert not any(inv.name == "deterministic" and not inv.passed
                       for inv in r.invariants)
    finally:
        cand.close()


WRONG = os.path.join(ROOT, "tests/candidates/attacks.py")


@pytest.mark.parametrize("kind", ["in_process", "isolated"])
def test_every_kind_catches_the_same_wrong_gradient(kind):
    cand = (load(f"{WRONG}:wrong", in_process=True) if kind == "in_process"
            else IsolatedCandidate(f"{WRONG}:wrong", None, "wrong"))
    try:
        r = run_case(_case(), cand)
        assert not r.passed and any(not c.passed for c in r.comparisons)
    finally:
        cand.close()
