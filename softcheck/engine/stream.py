"""Judge one large case a block of rows at a time: float64 exists one block at a time."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np

from ..candidate import CallPolicy
from ..judge import tolerances
from ..judge.pairs import (fold_probes, forward_pairs, methods_of, native_note, pairs_of,
                           repeat_invariant, unheard_hint, upstream_hint)
from ..reference import analytic
from ..reference import finite_difference as references
from ..spec import Inputs
from ..suite.cases import Case
from ..suite.config import numpy_dtype
from ..suite.inputs import STREAM_REGIMES, make_inputs_into
from .blocks import FirstPass, Judge, KeptHeap, Scaled, block_of, in_threads
from .lanes import Beside, Judging
from .repeats import Kept, repeated
from .results import CaseResult, FDInfo
from .skeleton import Frame, all_passed, coverage

#: from this many logits on, a case streams (below it the whole-array path runs: the
#: numbers are the same, see tests/test_stream.py, the whole-array path is faster when small)
STREAM_ELEMENTS = 2**23
#: float64 elements per block of rows (8 MB per array; ~30 arrays live at once per thread,
#: kept in the heap between blocks: KeptHeap), half as many for a 16-bit case.  At 2^21 the
#: kept heaps put an in-place kernel's 4096×131072 float32 run above its memory bound (5.04
#: GiB against 4.86); at 2^20 it peaks at 4.81 GiB and takes as long.  A bfloat16 case's
#: bound is smaller (its logits and gradient are half the bytes, the judge's blocks are not):
#: 2.90 GiB at 2^20 against 2.88, 2.72 GiB at 2^19 (docs/benchmarks.md)
BLOCK_ELEMENTS = 2**20
#: threads judging blocks once the candidate has returned (numpy and XLA release the GIL)
JUDGE_THREADS = 2
RELATIONS_NOTE = ("metamorphic relations and the diagnosis are not run on streamed cases "
                  "(each would call the candidate on another full-size input)")


def streamable(case: Case, candidate=None, *, isolate: bool | None = None) -> bool:
    """Index targets, first order, a regime drawn block by block, no user arrays, not
    --hidden; a plain gradient function, or a convention kernel (loss, inplace, split,
    autograd.Function) in its own worker process (``isolate``: whether it will be, for a
    candidate not yet swapped for its worker; None: ``candidate.isolated``); not
    tensor-parallel ranks; not --layout transposed (a (T, B, V) buffer of the whole)."""
    settings = None if candidate is None else candidate.settings
    isolate = getattr(candidate, "isolated", False) if isolate is None else isolate
    return (case.order == 1 and case.spec.hard and case.regime in STREAM_REGIMES
            and case.hidden is None and getattr(case, "inputs", None) is None
            and getattr(case, "layout", "contiguous") != "transposed"
            and (settings is None or (settings.tensor_parallel <= 1 and (
                settings.convention == "grad" or isolate))))


def should_stream(case: Case, candidate=None, *, isolate: bool | None = None) -> bool:
    return (case.batch * case.classes >= STREAM_ELEMENTS
            and streamable(case, candidate, isolate=isolate))


#: element evaluations of one directional probe per entry: two real evaluations (central
#: differences), as a column sweep's entry costs (finite_difference.EVALS["central"])
PROBE_EVALS = 2


def probe_count(case: Case) -> int:
    """Directional probes a streamed case runs: as many of ``case.probes`` as the FD budget
    pays for, at least one (the count is reported in the case's notes and FD info)."""
    each = PROBE_EVALS * case.batch * case.classes
    return max(1, min(case.probes, int(case.fd_budget // each))) if case.probes else 0


def block_elements(dtype: str) -> int:
    """Logits per block of a ``dtype`` case (BLOCK_ELEMENTS; half for 16-bit dtypes)."""
    return BLOCK_ELEMENTS if numpy_dtype(dtype).itemsize >= 4 else max(1, BLOCK_ELEMENTS // 2)


def block_rows(classes: int, dtype: str) -> int:
    return max(1, block_elements(dtype) // classes)


def run_streamed(case: Case, candidate=None, *, policy: CallPolicy = CallPolicy(),
                 progress=None) -> CaseResult:
    """``_streamed`` with the block temporaries kept in the heap (``KeptHeap``)."""
    with KeptHeap():
        return _streamed(case, candidate, policy=policy, progress=progress)


def _streamed(case: Case, candidate=None, *, policy: CallPolicy = CallPolicy(),
              progress=None) -> CaseResult:
    """``run_case`` for a large case: the same comparisons, invariants and FD coverage,
    computed over blocks of rows (``progress.block(done, total)`` after each).

    Two stages.  A first pass (row statistics, and the directional probes' reference values,
    which need no candidate) begins on a second thread once the draw is done, goes on beside
    the candidate's calls in its worker, and is finished by both threads once they return
    (``_drawn_and_called``).  Then the blocks are judged by ``JUDGE_THREADS`` lanes,
    each with its own accumulators, merged at the end (the numbers do not depend on the
    split: engine/lanes.py); a plain function's first lane begins beside its repeat call."""
    frame = Frame(case, candidate)
    n, c = case.batch, case.classes
    conv = candidate is not None and candidate.settings.convention != "grad"
    nb = block_rows(c, case.dtype)
    blocks = [(r, min(n, r + nb)) for r in range(0, n, nb)]
    ticker = _Ticker(progress, 2 * len(blocks))
    native_wanted = (candidate is not None and case.tolerance == "native"
                     and case.dtype in tolerances.LOW_PRECISION)
    method = case.fd or references.default_fd_method(n, c, case.fd_budget)
    sampled = references.EVALS[method] * n * c > case.fd_budget
    n_probes = probe_count(case) if sampled else 0
    dt = numpy_dtype(case.dtype)
    first = FirstPass(blocks, ticker, n_probes, case.seed, native_wanted, dt, loss=conv)
    clock = _Clock(frame.t0)
    pairs = pairs_of(candidate)

    def measures():
        """The row statistics and κ, once the first pass is done."""
        st = first.stats(case.spec, c)
        return st, tolerances.condition_of(first.zmax, c, case.spec.divisor, case.spec.softcap)

    def setup(grad) -> _Made:
        """Once the first pass is done: the row statistics, κ, the FD columns, the judge."""
        first.work()
        first.wait()
        if first.error is not None:             # the call was abandoned
            raise first.error
        inputs = first.inputs
        st, kappa = measures()
        native = tolerances.K_NATIVE * first.native if native_wanted else 0.0
        cols = None
        if sampled:
            cols = _columns(inputs, _priority(inputs, grad, dt),
                            int(case.fd_budget // (references.EVALS[method] * n)), case.seed, nb)
        judge = Judge(inputs, first.tot64, st, grad, cols, method, case, native, n_probes, dt)
        if conv and policy.repeat > 1:           # the repeats are compared with this call
            judge.kept = Kept(n)
        return _Made(st, kappa, native, cols, judge,
                     Judging(case, candidate, judge, pairs, blocks, ticker, kappa))

    # a plain function's repeat runs while one lane judges its main call (engine/lanes.py)
    beside = Beside(setup) if (candidate is not None and not conv and policy.repeat > 1
                               and getattr(candidate, "isolated", False)) else None
    try:
        inputs, call = _drawn_and_called(case, candidate, policy, first, clock, conv, beside)
        st, kappa = measures()
        frame.measured(scale=st.scale, kappa=kappa, phases=clock.laps)
        if call is not None and frame.heard(call):
            return frame.failed(call.error)
        grad = call.grad if call is not None else None
        made = (beside.made() if beside is not None else None) or setup(grad)
        clock.lap("fd_columns")
        lanes = JUDGE_THREADS - (1 if beside is not None and beside.thread is not None else 0)
        in_threads(lambda t: made.judging.lane(), lanes)
        if beside is not None:
            beside.join()
    finally:
        if beside is not None:
            beside.cancel()
    comparisons, invs = made.judging.result()
    clock.lap("judge")
    native, judge = made.native, made.judge
    if native_wanted:
        frame.notes.append(native_note(native, case.dtype))
    if n_probes < case.probes and sampled:
        frame.notes.append(
            f"{n_probes} directional probe{'s' if n_probes != 1 else ''} of the {case.probes} "
            f"asked (each two real evaluations of all {n * c} entries, {PROBE_EVALS}·N·C "
            f"element evaluations; scaled to --fd-budget {case.fd_budget:g}, at least 1)")
    cols = made.cols
    fdr = _FD(method, judge.fd_band, judge.fd_step, cols, c, judge.probes(first))
    comparisons = [fold_probes(cmp, fdr) for cmp in comparisons]
    if candidate is not None and policy.repeat > 1 and not conv:
        invs.append(repeat_invariant(call.nondet, policy, comparisons[0]))
    error = None
    if conv:       # the forward's values, the repeats, then each other upstream gradient's
        comparisons += forward_pairs(call, first.loss_values(case.spec), case, kappa, n)
        # the main gradient dropped first (every reference to its file: the call's too)
        judge.grad = grad = None
        call = dataclasses.replace(call, grad=None)
        if policy.repeat > 1:
            nondet, error, notes, output = repeated(candidate, inputs, policy, judge.kept,
                                                    first.tot64, blocks, JUDGE_THREADS)
            frame.note(*notes)
            frame.base["output"] = (frame.base.get("output") or "") + output or None
            invs.append(repeat_invariant(nondet, policy, comparisons[0], bounded=True))
            clock.lap("repeats")
        if error is None:
            more, error = _variants(call, candidate, inputs, case, policy, first, st, kappa,
                                    blocks, native, frame)
            comparisons += more
            clock.lap("upstream_variants")
    frame.notes.append(f"streamed in {len(blocks)} blocks of {nb} rows; " + RELATIONS_NOTE)
    diagnosis = () if all_passed(comparisons, invs, error=error) else unheard_hint(candidate, case.spec) + (
        upstream_hint(comparisons, inputs) if conv else ())
    info = FDInfo(method, float(np.max(judge.fd_band, initial=0.0)),
                  float(np.median(judge.fd_step)), fdr.coverage, fdr.columns, len(fdr.probes))
    return frame.result(comparisons, invs, fd=info, diagnosis=diagnosis, error=error,
                        coverage=coverage(methods_of(pairs), (), len(fdr.probes), fdr.coverage))


def _drawn_and_called(case, candidate, policy, first: FirstPass, clock, conv: bool,
                      beside=None):
    """The logits drawn (into the candidate's sealed memory file, if any) and the candidate
    called on them, the first pass going on beside the calls and finished once they are done:
    ``(inputs, call or None)``; ``beside``: given the main gradient while the repeats run."""
    n, c = case.batch, case.classes
    upstream = "auto"
    if candidate is not None:
        upstream = "random" if conv or candidate.takes("grad_output") else "one"
    dt = numpy_dtype(case.dtype)
    out = None if candidate is None else candidate.shared_logits((n, c), dt, case.pad)
    out = np.empty((n, c), dt) if out is None else out
    # the first pass begins once the draw is done: the draw's threads keep both cores busy,
    # the candidate's call leaves one idle (a first pass beside the draw only slowed it)
    helper = threading.Thread(target=first.work)
    call = None
    try:
        inputs = make_inputs_into(case, out, upstream=upstream, ready=first.ready)
        clock.lap("draw")
        helper.start()
        if candidate is not None:
            more = {} if beside is None else {"beside": beside}
            # a convention kernel's repeats come after its main call is judged (repeats.py)
            call = candidate.call(inputs, timeout=policy.limit,
                                  repeat=1 if conv else policy.repeat, **more)
            if call.times is not None and call.grad is not None:
                call = dataclasses.replace(call, grad=Scaled(call.grad, call.times))
            first.quick = bool(call.error)      # the report needs the scale, not the probes
        clock.lap("candidate_calls")
    except BaseException:
        first.abandon()
        if helper.is_alive():
            helper.join()
        raise
    first.work()                       # this thread joins in once the candidate has returned
    helper.join()
    first.wait()                       # (a lane begun beside the repeat may hold a block)
    clock.lap("first_pass_after")
    if first.error is not None:
        raise first.error
    if first.finished != len(first.blocks):
        raise RuntimeError(f"first pass finished {first.finished} of {len(first.blocks)} "
                           "blocks")
    return inputs, call


def _priority(inputs: Inputs, grad, dt):
    """Rows r0..r1 of what the FD columns are chosen by: the candidate's gradient, or the
    closed form's where there is no candidate."""
    if grad is not None:
        return lambda r0, r1: grad[r0:r1]
    tot = analytic.mean_totals(inputs, analytic.compute_dtype(dt))
    return lambda r0, r1: analytic.gradient(block_of(inputs, r0, r1, False), totals=tot)


def _variants(call, candidate, inputs, case, policy, first, st, kappa, blocks, native,
              frame: Frame):
    """Each other upstream gradient's call judged (engine/upstreams.py): ``(comparisons,
    error)``; its notes added to ``frame``'s."""
    from .upstreams import judge_variants

    valid = inputs.valid
    more, error, notes = judge_variants(
        call, candidate, inputs, case, timeout=policy.limit, tot64=first.tot64, st=st,
        kappa=kappa, blocks=blocks, native_rel=native / st.scale if st.scale else 0.0,
        targets=np.where(valid, inputs.target, -1), valid=valid, threads=JUDGE_THREADS)
    frame.note(*notes)
    return more, error


@dataclasses.dataclass
class _Made:
    """What judging needs once the first pass is done (``_streamed``'s ``setup``)."""

    st: object
    kappa: float
    native: float
    cols: object
    judge: Judge
    judging: Judging


class _Clock:
    """Wall-clock seconds per stage (the JSON's timing.phases)."""

    def __init__(self, t0: float):
        self.last, self.laps = t0, {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.last, 3)
        self.last = now


class _Ticker:
    """Blocks done, reported to the progress display from any thread."""

    def __init__(self, progress, total: int):
        self.progress, self.total, self.done = progress, total, 0
        self.lock = threading.Lock()

    def tick(self) -> None:
        with self.lock:
            self.done += 1
            if self.progress is not None and hasattr(self.progress, "block"):
                self.progress.block(self.done, self.total)


class _FD:
    """What ``fold_probes`` and the report read of an FDResult."""

    def __init__(self, method, band, step, cols, classes, probes):
        self.method, self.band, self.step, self.probes = method, band, step, probes
        self.columns = classes if cols is None else len(cols)
        self.coverage = ("every coordinate" if cols is None else
                         f"{len(cols)} of {classes} columns (every target column, the largest "
                         f"|g| entries, random columns) + {len(probes)} directional probes "
                         "over every coordinate")


def _columns(inputs: Inputs, priority, count: int, seed: int, nb: int) -> np.ndarray:
    """``finite_difference._choose_columns`` with the largest |priority| entries found a
    block at a time (the first 4·count by (−|g|, flat index), as its stable sort), each half
    of the rows by its own thread: each half's kept entries hold its own first 4·count, so
    their union holds the batch's."""
    n, c = inputs.logits.shape
    count = max(1, min(c, count))
    chosen = list(dict.fromkeys(int(j) for j in inputs.target[inputs.valid]))
    k = 4 * count
    starts = list(range(0, n, nb))
    halves = [starts[: len(starts) // 2], starts[len(starts) // 2:]]
    kept: list = [None, None]

    def half(t):
        kept[t] = _largest(priority, halves[t], n, nb, c, k)

    in_threads(half, 2)
    keep_v, keep_f = _trim(np.concatenate([kept[0][0], kept[1][0]]),
                           np.concatenate([kept[0][1], kept[1][1]]), k)
    chosen += [int(j) for j in dict.fromkeys((keep_f % c).tolist())]
    rng = np.random.default_rng([seed, 3])
    chosen += [int(j) for j in rng.permutation(c)]
    return np.array(list(dict.fromkeys(chosen))[:count])


def _trim(v, f, k):
    """The first k of entries ``v`` at flat indices ``f`` by (−v, f)."""
    order = np.lexsort((f, -v))[:k]
    return v[order], f[order]


def _largest(priority, starts, n: int, nb: int, c: int, k: int):
    """The first k entries by (−|priority|, flat index) of the blocks of rows at ``starts``
    (in order).  Blocks come in flat-index order, so once k entries are at least ``thr``, a
    later entry equal to it ranks after them all: only larger ones are kept; the kept set
    is sorted down to k when it has grown to twice that."""
    keep_v, keep_f = np.zeros(0), np.zeros(0, np.int64)
    new_v: list = []
    new_f: list = []
    thr, pending = None, 0
    for r0 in starts:
        a = np.asarray(priority(r0, min(n, r0 + nb)))
        if a.dtype not in (np.float32, np.float64):
            a = a.astype(np.float32)
        a = np.abs(np.nan_to_num(a)).ravel()
        if thr is not None:
            idx = np.flatnonzero(a > thr)
        elif a.size > k:
            kth = np.partition(a, a.size - k)[a.size - k]
            idx = np.flatnonzero(a >= kth)
        else:
            idx = np.arange(a.size)
        if not idx.size:
            continue
        new_v.append(a[idx].astype(np.float64))
        new_f.append(r0 * c + idx.astype(np.int64))
        pending += idx.size
        if thr is None or pending > k:
            keep_v, keep_f = _trim(np.concatenate([keep_v] + new_v),
                                   np.concatenate([keep_f] + new_f), k)
            new_v, new_f, pending = [], [], 0
            if len(keep_v) >= k:
                thr = keep_v[k - 1]
    return _trim(np.concatenate([keep_v] + new_v), np.concatenate([keep_f] + new_f), k)
