"""The streamed path (engine/stream.py): the same numbers as the whole-array path."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from softcheck.candidate.worker import IsolatedCandidate
from softcheck.engine import blocks, pool, stream
from softcheck.engine.case import run_case as _whole
from softcheck.engine.stream import run_streamed
from softcheck.spec import LossSpec
from softcheck.suite.cases import Case
from softcheck.suite.config import numpy_dtype
from softcheck.suite.inputs import make_inputs, make_inputs_into

GRAD = '''
import numpy as np
def grad(logits, target, ignore_index=-100):
    z = np.array(logits, np.float64)      # float32 sums depend on the buffer's alignment
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    valid = target != ignore_index
    p[np.arange(len(target))[valid], target[valid]] -= 1
    p[~valid] = 0
    return (p / max(1, valid.sum())).astype(logits.dtype)
'''
BUG = GRAD.replace("    return (p", "    p[0, 5] += 1e-3\n    return (p")


def run_case(case, cand=None, *, stream):
    return run_streamed(case, cand) if stream else _whole(case, cand)


def both_paths(tmp_path, code: str, case):
    """The case judged whole and streamed, the candidate ``code``'s grad in one worker."""
    f = tmp_path / "g.py"
    f.write_text(code)
    with IsolatedCandidate(f"{f}:grad", None, "g") as cand:
        return run_case(case, cand, stream=False), run_case(case, cand, stream=True)


def _same(a, b) -> None:
    """The closed form's pair bitwise; every verdict; every max error to float64 rounding
    of the scale (JAX's per-block code may round the last bit differently)."""
    da, db = _numbers(a), _numbers(b)
    assert da["comparisons"][0] == db["comparisons"][0] or da["comparisons"][1:] == []
    assert da["invariants"] == db["invariants"] and da["fd"] == db["fd"]
    for x, y in zip(a.comparisons, b.comparisons):
        assert x.passed == y.passed and x.pair == y.pair
        assert abs(x.max_abs_error - y.max_abs_error) <= 8 * 2.0**-53 * a.scale


def _numbers(result) -> dict:
    d = result.to_dict()
    for k in ("seconds", "timing", "notes", "relations", "coverage", "diagnosis"):
        d.pop(k, None)
    return d


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(stream, "BLOCK_ELEMENTS", 3 * 500)     # 3 rows per block


@pytest.mark.parametrize("regime", ["normal", "confident", "wrong", "masked", "target-prob",
                                    "below-cap"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_blocked_inputs_are_the_same_numbers(monkeypatch, regime, dtype, reduction):
    """Seed scheme 2: each drawing block has its own generator, so the threads of the
    streamed draw and the whole draw give the same bytes; ``ready`` follows in row order."""
    from softcheck.suite import inputs as drawing

    monkeypatch.setattr(drawing, "DRAW_ELEMENTS", 2100)          # 3 rows a block: 4 blocks
    case = Case(700, 11, dtype, regime, 3, LossSpec(ignore_index=2, reduction=reduction))
    a = make_inputs(case, upstream="random")
    seen = []
    b = make_inputs_into(case, np.empty((11, 700), numpy_dtype(dtype)), upstream="random",
                         ready=lambda inp, r0, r1: seen.append(r1))
    assert a.logits.tobytes() == b.logits.tobytes()
    assert np.array_equal(a.target, b.target) and np.array_equal(a.grad_output, b.grad_output)
    assert seen == [3, 6, 9, 11]
    monkeypatch.setattr(drawing, "DRAW_ELEMENTS", 1 << 20)       # one block: other numbers
    assert make_inputs(case, upstream="random").logits.tobytes() != a.logits.tobytes()


@pytest.mark.parametrize("regime,ii", [("normal", None), ("confident", 1), ("masked", None)])
def test_streamed_equals_whole_array(tmp_path, small_blocks, regime, ii):
    """Max errors, ratios, worst entries, target_error, invariants and FD info: bitwise the
    same over 4 blocks (many sampled columns, so the column choice is exercised)."""
    case = Case(500, 11, "float32", regime, 0, LossSpec(ignore_index=ii), fd_budget=5e3,
                probes=1)          # what the budget pays for at this size (probe_count)
    a, b = both_paths(tmp_path, GRAD, case)
    assert any("streamed in 4 blocks" in n for n in b.notes)
    _same(a, b)
    assert b.fd.columns < 500                     # sampled columns, as the whole-array path


def test_streamed_catches_one_wrong_entry(tmp_path, small_blocks):
    a, b = both_paths(tmp_path, BUG, Case(500, 11, "float32", "normal", 0, LossSpec()))
    assert not b.passed
    _same(a, b)
    worst = b.comparisons[0].worst[0]
    assert (worst.row, worst.cls) == (0, 5)


RAISES = '''
def grad(logits, target, ignore_index=-100):
    print("about to fail")
    raise ValueError("no gradient today")
'''


def test_a_failed_call_is_reported_alike_whole_and_streamed(tmp_path, small_blocks):
    """One skeleton (engine/skeleton.Frame): the call's error, its output and the case's
    identity, scale and κ, the same whether the case is judged whole or streamed."""
    case = Case(500, 8, "float32", "normal", 3, LossSpec())
    a, b = both_paths(tmp_path, RAISES, case)
    for r in (a, b):
        assert not r.passed and "no gradient today" in r.error
        assert "about to fail" in r.output and r.comparisons == () and r.seconds > 0
    assert (a.name, a.params, a.target, a.kappa) == (b.name, b.params, b.target, b.kappa)
    assert a.scale == pytest.approx(b.scale, rel=1e-12)


def test_streamed_bfloat16_gradient_reaches_the_sink_as_bfloat16(tmp_path, small_blocks):
    """Caught by the 4096×131072 bfloat16 benchmark (5.15 GiB against a 3.67 GiB bound):
    ``to_array`` turned the candidate's bfloat16 gradient into a full float32 copy before the
    sink kept it.  The sink now gets it as returned; a streamed bfloat16 case through the
    worker still gives the whole path's numbers."""
    import ml_dtypes

    from softcheck.candidate.call import invoke

    class Sink:
        def store(self, arr):
            self.dtype = arr.dtype
            return []

        def diff(self, arr):
            return None

    z = np.ones((3, 5), ml_dtypes.bfloat16)
    sink = Sink()
    grad, error, _, _ = invoke(lambda x, y: x * 2, lambda: ((z.copy(), np.zeros(3, int)), {}),
                               (3, 5), z.dtype, repeat=2, sink=sink)
    assert error is None and grad is None and sink.dtype == z.dtype

    a, b = both_paths(tmp_path, GRAD, Case(500, 11, "bfloat16", "normal", 0, LossSpec()))
    assert b.passed and not any("kept rounded" in n for n in b.notes), b.notes
    _same(a, b)


def test_reference_only_streamed_equals_whole_array(small_blocks):
    case = Case(500, 7, "bfloat16", "normal", 0, LossSpec(ignore_index=3))
    _same(run_case(case, stream=False), run_case(case, stream=True))


def test_memory_model_streamed_is_per_dtype():
    big = Case(131072, 4096, "float32", "normal", 0, LossSpec())
    bf = Case(131072, 4096, "bfloat16", "normal", 0, LossSpec())
    n = 4096 * 131072
    assert stream.should_stream(big)
    assert pool.estimate_bytes(big) < 32 * n            # not ~300 bytes per logit
    assert pool.estimate_bytes(bf) < pool.estimate_bytes(big)
    huge = Case(262144, 65536, "float32", "normal", 0, LossSpec())   # 2^34 logits
    with pytest.raises(Exception, match="needs about .* GiB.*streamed"):
        pool.check_memory([huge])


def test_memory_model_asks_whether_the_candidate_streams(monkeypatch):
    """Found reading the model: it assumed any large case streams, but a --convention loss
    kernel was judged whole (~300 bytes a logit), so 4096×131072 with torch's cross_entropy
    was let through to allocate ~150 GiB.  The candidate now decides: a convention kernel in
    its worker streams (issue 30), counted with more arrays of its own than a plain gradient
    function; one called --in-process does not, and the refusal says why."""
    from types import SimpleNamespace

    case = Case(131072, 4096, "float32", "normal", 0, LossSpec())

    def kernel(convention, isolated=True, autograd=False):
        return SimpleNamespace(settings=SimpleNamespace(convention=convention, autograd=autograd,
                                                        tensor_parallel=1), isolated=isolated)

    monkeypatch.setattr(pool, "available_bytes", lambda: 20 * 2**30)
    pool.check_memory([case], 1, [kernel("grad")])          # streams: ~7 GiB
    pool.check_memory([case], 1, [kernel("loss")])          # streams: ~11 GiB
    assert pool.estimate_bytes(case, kernel("loss")) > pool.estimate_bytes(case, kernel("grad"))
    # a plain in-place kernel's gradient is its logits' pages, moved to the output file as
    # copied: counted with one array of its own (a nondeterministic kernel's extra call), not
    # as a loss kernel; an autograd.Function (which may save its softmax) as a loss kernel;
    # never below the 4.84 GiB an in-place kernel measured at this size
    est = {k: pool.estimate_bytes(case, kernel("inplace" if k == "autograd" else k,
                                               autograd=k == "autograd"))
           for k in ("inplace", "autograd", "loss")}
    assert est["inplace"] < est["autograd"] == est["loss"]
    assert 4.84 * 2**30 < est["inplace"] < 1.5 * 4.84 * 2**30
    assert stream.should_stream(case, kernel("inplace"))
    with pytest.raises(Exception, match="not streamed: a --convention .* own worker process"):
        pool.check_memory([case], 1, [kernel("loss", isolated=False)])
    ranks = SimpleNamespace(settings=SimpleNamespace(convention="loss", tensor_parallel=2),
                            isolated=True)
    assert not stream.should_stream(case, ranks)


@pytest.mark.slow
@pytest.mark.parametrize("n,c", [(8, 262144), (64, 32768)])
def test_streamed_equals_whole_array_at_issue_sizes(tmp_path, n, c):
    a, b = both_paths(tmp_path, GRAD, Case(c, n, "float32", "normal", 0, LossSpec()))
    assert _numbers(a) == _numbers(b)


def test_cli_refuses_beyond_the_machine():
    import subprocess

    r = subprocess.run([sys.executable, "-m", "softcheck", "run", "--batch", "262144",
                        "--classes", "65536", "--dtype", "float32", "--regime", "normal",
                        "--targets", "index", "--reduction", "mean"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "streamed" in r.stderr and "Traceback" not in r.stderr


def test_first_pass_takes_each_block_once_under_two_threads(monkeypatch, small_blocks):
    """Caught by a flaky reference-only bfloat16 run: two threads waiting for the draw could
    take the same block (the index was claimed after the wait), leaving another block's row
    statistics at zero and its finite differences at π·10¹⁹.  Each block is now claimed
    before waiting; slow blocks make the two threads overlap."""
    import time

    seen = []
    original = blocks.FirstPass.block

    def slow(self, r0, r1):
        seen.append(r0)
        time.sleep(0.02)
        return original(self, r0, r1)

    monkeypatch.setattr(blocks.FirstPass, "block", slow)
    case = Case(500, 13, "bfloat16", "normal", 0, LossSpec(ignore_index=3))
    for _ in range(3):
        seen.clear()
        result = run_case(case, stream=True)
        step = stream.block_rows(500, "bfloat16")         # a 16-bit case: smaller blocks
        assert sorted(seen) == list(range(0, 13, step)) and result.passed


def test_a_comparison_taken_a_few_rows_at_a_time_is_the_same_as_at_once(monkeypatch):
    """StreamedComparison compares SUB_ELEMENTS entries at a time in kept scratch arrays (in
    cache): every number, the worst entries and their order, the same as one pass over the
    block, with a target column, a band per row and per entry, and an entry out of bounds."""
    from softcheck.judge import streaming

    rng = np.random.default_rng(7)
    n, c = 13, 40
    ref = rng.standard_normal((n, c))
    x = ref + 1e-7 * rng.standard_normal((n, c))
    x[4, 9] += 1e-3                                            # the one bad entry
    target = rng.integers(-1, c, n)
    valid = target >= 0
    band = np.abs(rng.standard_normal(n)) * 1e-9
    extra = np.abs(rng.standard_normal((n, c))) * 1e-9

    def result(sub, cols=None):
        monkeypatch.setattr(streaming, "SUB_ELEMENTS", sub)
        acc = streaming.StreamedComparison(("candidate", "analytic"), dtype="float32",
                                           kappa=5.0, scale=1.0, classes=c)
        xs, rs = (x, ref) if cols is None else (x[:, cols], ref[:, cols])
        acc.update(0, xs[:7], rs[:7], target=target[:7], valid=valid[:7], band=band[:7],
                   cols=cols, extra=None if cols is not None else extra[:7])
        acc.update(7, xs[7:], rs[7:], target=target[7:], valid=valid[7:], band=band[7:],
                   cols=cols, extra=None if cols is not None else extra[7:])
        return acc.result(np.where(valid, target, -1))

    for cols in (None, np.array([9, 3, 30, 1])):
        whole = result(2**18, cols)
        assert not whole.passed and (whole.worst[0].row, whole.worst[0].cls) == (4, 9)
        for sub in (1, 2 * c, 3 * c):
            assert result(sub, cols) == whole


def test_kept_heap_sets_glibc_back_and_leaves_it_alone_when_refused(monkeypatch):
    """KeptHeap (engine/blocks.py) keeps block temporaries in the heap during a streamed
    case: its settings are undone at the end, even when the case raises; where glibc refuses
    the mmap threshold (older versions cap it) the trim threshold is not touched either (it
    would switch off the dynamic threshold for nothing)."""
    calls = []

    class Lib:
        def __init__(self, ok):
            self.ok = ok

        def mallopt(self, k, v):
            calls.append((k, v))
            return 1 if self.ok or k != blocks.M_MMAP_THRESHOLD else 0

        def malloc_trim(self, pad):
            calls.append(("trim", pad))
            return 1

    monkeypatch.setitem(blocks._LIBC, "libc", Lib(True))
    with pytest.raises(ZeroDivisionError):
        with blocks.KeptHeap():
            assert calls == [(blocks.M_MMAP_THRESHOLD, blocks.KEPT_MMAP),
                             (blocks.M_TRIM_THRESHOLD, blocks.KEPT_TRIM)]
            1 / 0
    assert calls[2:] == [(blocks.M_MMAP_THRESHOLD, blocks.DEFAULT_MMAP),
                         (blocks.M_TRIM_THRESHOLD, blocks.DEFAULT_TRIM), ("trim", 0)]
    assert blocks.KEPT_MMAP <= 32 * 2**20                 # what every glibc accepts
    calls.clear()
    monkeypatch.setitem(blocks._LIBC, "libc", Lib(False))
    with blocks.KeptHeap():
        pass
    assert calls == [(blocks.M_MMAP_THRESHOLD, blocks.KEPT_MMAP), ("trim", 0)]
    monkeypatch.setitem(blocks._LIBC, "libc", None)      # not glibc: nothing to do
    with blocks.KeptHeap():
        pass


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 40), st.integers(1, 30),
       st.sampled_from(["none", "scalar", "rows", "entries"]), st.booleans(), st.floats(0, 3))
def test_rows_skipped_by_their_bound_change_no_number(seed, n, c, band_kind, subset, spread):
    """StreamedComparison skips the ratios of a row whose bound max err / (atol + band) is
    at most the others' largest ratio, the k-th worst and 1: the result (maxima, counts, the
    worst entries and their order) is the one of every ratio computed, with ties, zeros,
    large rows late, target columns, sampled columns and a band per entry (the 16-bit
    STORED term: a row's least band is its floor); where most rows could, entry by entry
    (``_spots``: fails if its threshold is raised)."""
    from softcheck.judge import streaming

    rng = np.random.default_rng(seed)
    ref = rng.standard_normal((n, c)) * 10.0 ** rng.uniform(-spread, spread, (n, 1))
    err = rng.choice([0.0, 1e-8, 2e-8], (n, c)) + 1e-8 * rng.random((n, c)) * (rng.random((n, 1)) < 0.5)
    x = ref + err * np.where(rng.random((n, c)) < 0.5, 1, -1) * 10.0 ** rng.uniform(0, spread, (n, 1))
    if rng.random() < 0.5:                     # one outlier early: later rows rank below it
        x[0, rng.integers(c)] += 10.0 ** rng.uniform(-8, -4)
    scale = rng.choice([1e-6, 1e-2, 1.0])           # failing, or passing: the bound decides
    target = rng.integers(-1, c, n)
    valid = target >= 0
    if rng.random() < 0.5:                     # the target entries worst: the others' max apart
        x[np.flatnonzero(valid), target[valid]] += 10.0 ** rng.uniform(-7, -5)
    band = {"none": 0.0, "scalar": 1e-9, "rows": np.abs(rng.standard_normal(n)) * 1e-9,
            "entries": np.abs(rng.standard_normal(n)) * 1e-9}[band_kind]
    extra = None
    if band_kind == "entries":                 # as large as the atol: the floor matters
        atol = streaming.StreamedComparison(("candidate", "analytic"), dtype="float32",
                                            kappa=3.0, scale=scale, classes=c).atol
        extra = np.abs(rng.standard_normal((n, c))) * 10.0 ** rng.uniform(-2, 1, (n, c)) * atol
    cols = np.sort(rng.choice(c, max(1, c // 2), replace=False)) if subset else None
    cuts = sorted(set(rng.integers(1, n, 3).tolist()) | {0, n}) if n > 1 else [0, n]

    def result(skip):
        streaming.SKIP_ROWS = skip
        try:
            acc = streaming.StreamedComparison(("candidate", "analytic"), dtype="float32",
                                               kappa=3.0, scale=scale, classes=c)
            for r0, r1 in zip(cuts, cuts[1:]):
                xs, rs = x[r0:r1], ref[r0:r1]
                if cols is not None:
                    xs, rs = xs[:, cols], rs[:, cols]
                b = band[r0:r1] if np.ndim(band) else band
                e = None
                if extra is not None:
                    e = extra[r0:r1] if cols is None else extra[r0:r1][:, cols]
                acc.update(r0, xs, rs, target=target[r0:r1], valid=valid[r0:r1], band=b,
                           cols=cols, extra=e)
            return acc.result(np.where(valid, target, -1))
        finally:
            streaming.SKIP_ROWS = True

    assert result(True) == result(False)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=64),
       st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), max_size=64))
def test_bfloat16_rounding_of_the_draw_is_astype(bits, values):
    """The draw rounds float64 to bfloat16 through float32 rounded to odd: every bit pattern
    (subnormals, the edge of float32's range, ±inf, ±0, values a hair off a tie, where a
    plain float32 first rounds wrong) rounds as ml_dtypes' astype does, NaN stays NaN."""
    import ml_dtypes

    from softcheck.suite.inputs import rounded_into

    # just above and below halfway between two bfloat16 neighbours, by less than float32
    # resolves: a float32 first would round them onto the tie, and the tie to the even one
    b = (np.array(bits, np.uint64) >> np.uint64(48)).astype(np.uint16).view(ml_dtypes.bfloat16)
    b = b.astype(np.float64)
    b = b[np.isfinite(b) & (np.abs(b) < 1e38)]
    ulp = np.spacing(b.astype(ml_dtypes.bfloat16)).astype(np.float64)
    near = np.concatenate([b + ulp / 2 * (1 + 2.0**-30), b + ulp / 2 * (1 - 2.0**-30)])
    x = np.concatenate([np.array(bits, np.uint64).view(np.float64), np.array(values, np.float64),
                        near, [3.3895313892515355e38, 3.4e38, 3.4028235e38, 3.5e38, -1e-45,
                               5e-324]])
    with np.errstate(over="ignore", invalid="ignore"):
        want = x.astype(ml_dtypes.bfloat16)
    got = np.empty(x.shape, ml_dtypes.bfloat16)
    rounded_into(got, x)
    nan = np.isnan(want.astype(np.float32))
    assert np.array_equal(nan, np.isnan(got.astype(np.float32)))
    assert np.array_equal(want.view(np.uint16)[~nan], got.view(np.uint16)[~nan])


def _held_repeat(monkeypatch):
    """The repeat call's comparison held until the lane begun beside it has judged every
    block (so the test does not depend on how fast either is): the Beside seen."""
    import time

    from softcheck.candidate import shared
    from softcheck.engine import lanes

    seen: dict = {}
    call, compared = lanes.Beside.__call__, shared.repeat_compared

    def beside(self, grad):
        seen["beside"] = self
        call(self, grad)

    def held(*a, **k):
        judging = seen["beside"].made().judging
        deadline = time.monotonic() + 120
        while judging.taken() < len(judging.blocks) and time.monotonic() < deadline:
            time.sleep(0.01)
        seen["taken_before_the_repeat"] = judging.taken()
        return compared(*a, **k)

    monkeypatch.setattr(lanes.Beside, "__call__", beside)
    monkeypatch.setattr(shared, "repeat_compared", held)
    return seen


def test_judging_begun_beside_the_repeat_call_gives_the_same_numbers(tmp_path, small_blocks,
                                                                     monkeypatch):
    """A plain function's repeat call runs while one lane judges the main call's sealed
    gradient (engine/lanes.py): every block judged before the repeat came back, and the
    numbers, verdicts and the measured repeat the same as the whole-array path's."""
    seen = _held_repeat(monkeypatch)
    case = Case(500, 11, "float32", "masked", 0, LossSpec(), fd_budget=5e3, probes=1)
    a, b = both_paths(tmp_path, GRAD, case)
    assert seen["taken_before_the_repeat"] == 4          # 11 rows, 3 a block
    _same(a, b)
    assert b.passed and [i.name for i in b.invariants][-1] == "deterministic"


SECOND_FAILS = GRAD + '''
CALLS = []
_grad = grad
def grad(logits, target, ignore_index=-100):
    CALLS.append(1)
    if len(CALLS) % 2 == 0:
        raise ValueError("the second call fails")
    return _grad(logits, target, ignore_index)
'''


def test_a_repeat_that_fails_after_judging_began_is_a_failed_case(tmp_path, small_blocks,
                                                                 monkeypatch):
    """The lane begun beside the repeat is stopped and joined; the case reports the repeat's
    error, as the whole-array path does."""
    seen = _held_repeat(monkeypatch)
    a, b = both_paths(tmp_path, SECOND_FAILS, Case(500, 11, "float32", "normal", 0, LossSpec()))
    assert seen["beside"].thread is not None and not seen["beside"].thread.is_alive()
    for r in (a, b):
        assert not r.passed and "the second call fails" in r.error and "call 2" in r.error
