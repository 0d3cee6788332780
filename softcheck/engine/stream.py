"""Judge one large case a block of rows at a time: float64 exists one block at a time."""

from __future__ import annotations

import math
import threading
import time

import numpy as np

from ..candidate import CallPolicy
from ..judge import tolerances
from ..judge.streaming import StreamedComparison, StreamedInvariants
from ..reference import analytic, autodiff
from ..reference import finite_difference as references
from ..reference.finite_difference import COMPLEX_STEP, U64, Probe, probe_rng
from ..reference.loss import features, params, rows_of
from ..spec import Inputs
from ..suite.cases import Case
from ..suite.config import numpy_dtype
from ..suite.inputs import STREAM_REGIMES, make_inputs_into
from .results import CaseResult, Coverage, FDInfo

#: from this many logits on, a case streams (below it the whole-array path runs: the
#: numbers are the same, see tests/test_stream.py, the whole-array path is faster when small)
STREAM_ELEMENTS = 2**23
#: float64 elements per block of rows (16 MB per array; ~30 arrays live at once)
BLOCK_ELEMENTS = 2**21
RELATIONS_NOTE = ("metamorphic relations and the diagnosis are not run on streamed cases "
                  "(each would call the candidate on another full-size input)")


def streamable(case: Case, candidate=None) -> bool:
    """Index targets, first order, a regime drawn block by block, no user arrays, a plain
    gradient function (not a loss convention, not tensor-parallel ranks, not --hidden)."""
    settings = getattr(candidate, "settings", None)
    return (case.order == 1 and case.spec.hard and case.regime in STREAM_REGIMES
            and case.hidden is None and getattr(case, "inputs", None) is None
            and (settings is None or (settings.convention == "grad"
                                      and getattr(settings, "tensor_parallel", 1) <= 1)))


def should_stream(case: Case, candidate=None) -> bool:
    return case.batch * case.classes >= STREAM_ELEMENTS and streamable(case, candidate)


#: element evaluations of one directional probe per entry (finite_difference.fd_work)
PROBE_EVALS = 8


def probe_count(case: Case) -> int:
    """Directional probes a streamed case runs: as many of ``case.probes`` as the FD budget
    pays for, at least one (the count is reported in the case's notes and FD info)."""
    each = PROBE_EVALS * case.batch * case.classes
    return max(1, min(case.probes, int(case.fd_budget // each))) if case.probes else 0


def block_rows(classes: int) -> int:
    return max(1, BLOCK_ELEMENTS // classes)


def _block(inputs: Inputs, r0: int, r1: int, f64: bool = True) -> Inputs:
    z = inputs.logits[r0:r1]
    go = np.asarray(inputs.grad_output)
    return Inputs(np.asarray(z, np.float64) if f64 else np.asarray(z), inputs.target[r0:r1],
                  inputs.weight64 if f64 else inputs.weight,
                  go[r0:r1] if go.ndim else go, inputs.spec)


def run_streamed(case: Case, candidate=None, *, policy: CallPolicy = CallPolicy(),
                 progress=None) -> CaseResult:
    """``run_case`` for a large case: the same comparisons, invariants and FD coverage,
    computed over blocks of rows (``progress.block(done, total)`` after each)."""
    t0 = time.perf_counter()
    n, c = case.batch, case.classes
    upstream = "auto"
    if candidate is not None:
        upstream = "random" if candidate.takes("grad_output") else "one"
    dt = numpy_dtype(case.dtype)
    shared = getattr(candidate, "shared_logits", None)
    out = shared((n, c), dt, case.pad) if shared is not None else np.empty((n, c), dt)
    inputs = make_inputs_into(case, out, upstream=upstream)
    nb = block_rows(c)
    blocks = [(r, min(n, r + nb)) for r in range(0, n, nb)]
    total_steps = 2 * len(blocks)
    done = [0]

    def tick():
        done[0] += 1
        if progress is not None and hasattr(progress, "block"):
            progress.block(done[0], total_steps)

    tot64 = analytic.mean_totals(inputs, np.float64)      # the whole batch's (D, n)
    valid = inputs.valid
    targets = np.where(valid, inputs.target, -1)
    native_wanted = (candidate is not None and case.tolerance == "native"
                     and case.dtype in tolerances.LOW_PRECISION)
    # pass 1 (beside the candidate's call, on the other core): row stats, |z| max, native band
    pre = {"a": np.zeros(n), "b": np.zeros(n), "lse": np.zeros(n), "vmax": np.zeros(n),
           "zmax": 0.0, "native": 0.0}

    def first_pass():
        for r0, r1 in blocks:
            b = _block(inputs, r0, r1)
            st = references.row_stats(b, tot64)
            for key in ("a", "b", "lse", "vmax"):
                pre[key][r0:r1] = getattr(st, key)
            z = b.logits[np.isfinite(b.logits)]
            pre["zmax"] = max(pre["zmax"], float(np.max(np.abs(z), initial=0.0)))
            if native_wanted:
                with np.errstate(invalid="ignore", over="ignore"):
                    ref = analytic.gradient(b, totals=tot64)
                    nat = analytic.gradient(_block(inputs, r0, r1, False), native=True,
                                            totals=analytic.mean_totals(inputs, dt.type)
                                            ).astype(np.float64)
                    err = np.abs(nat - ref)
                pre["native"] = max(pre["native"], float(np.max(err[np.isfinite(err)],
                                                                initial=0.0)))
            tick()

    notes: list[str] = []
    call = None
    worker = threading.Thread(target=first_pass)
    worker.start()
    if candidate is not None:
        call = candidate.call(inputs, timeout=policy.limit, repeat=policy.repeat)
    worker.join()
    spec = case.spec
    st = references.RowStats(pre["a"], pre["b"], pre["lse"], pre["vmax"], spec.divisor,
                             spec.softcap, c)
    scale = st.scale
    kappa = tolerances.condition_of(pre["zmax"], c, spec.divisor, spec.softcap)
    base = dict(name=case.name, params=case.params(), group=case.group, scale=scale,
                kappa=kappa, target=candidate.label if candidate is not None else None)
    if call is not None:
        notes.extend(call.notes)
        base["output"] = call.output or None
        if call.error:
            return CaseResult(passed=False, error=call.error, notes=tuple(notes),
                              seconds=time.perf_counter() - t0, **base)
    native = tolerances.K_NATIVE * pre["native"] if native_wanted else 0.0
    if native_wanted:
        notes.append(f"--tolerance native: candidate entries also allowed "
                     f"{tolerances.K_NATIVE:g} × {pre['native']:.2g}, the largest "
                     f"error of the closed form computed in {case.dtype} arithmetic")
    grad = call.grad if call is not None else None
    if grad is None:             # the columns of the largest entries of the closed form
        tot = analytic.mean_totals(inputs, analytic.compute_dtype(dt))

        def priority(r0, r1):
            return analytic.gradient(_block(inputs, r0, r1, False), totals=tot)
    else:
        def priority(r0, r1):
            return grad[r0:r1]
    method = case.fd or references.default_fd_method(n, c, case.fd_budget)
    cols = None
    if references.EVALS[method] * n * c > case.fd_budget:
        cols = _columns(inputs, priority, int(case.fd_budget // (references.EVALS[method] * n)),
                        case.seed, nb)
    from .case import CANDIDATE_PAIRS, REFERENCE_PAIRS, _fold_probes, _user_tolerance

    pairs = (CANDIDATE_PAIRS + REFERENCE_PAIRS) if candidate is not None else REFERENCE_PAIRS
    dtypes = {"analytic": "float64" if candidate is not None else case.dtype,
              "autodiff": "float64", "finite_difference": "float64", "candidate": case.dtype}
    accs = {}
    for a, b in pairs:
        accs[(a, b)] = StreamedComparison(
            (a, b), dtype=tolerances.coarser(dtypes[a], dtypes[b]), kappa=kappa, scale=scale,
            classes=c, user=_user_tolerance(case, a, candidate))
    checked = "candidate" if candidate is not None else "analytic"
    inv = StreamedInvariants(n)
    fd_band, fd_step = np.zeros(n), np.zeros(n)
    n_probes = probe_count(case) if cols is not None else 0
    if n_probes < case.probes and cols is not None:
        notes.append(f"{n_probes} directional probe{'s' if n_probes != 1 else ''} of the "
                     f"{case.probes} asked (each a complex evaluation of all {n * c} entries, "
                     f"{PROBE_EVALS}·N·C element evaluations; scaled to --fd-budget "
                     f"{case.fd_budget:g}, at least 1)")
    probe_rows = _ProbeRows(n, c, n_probes, case.seed, st)
    for r0, r1 in blocks:
        b64 = _block(inputs, r0, r1)
        g = {}
        if candidate is not None:
            g["candidate"] = np.asarray(grad[r0:r1], np.float64)
            g["analytic"] = analytic.gradient(b64, totals=tot64)
        else:
            g["analytic"] = analytic.gradient(
                _block(inputs, r0, r1, False),
                totals=analytic.mean_totals(inputs, analytic.compute_dtype(dt))
            ).astype(np.float64)
        g["autodiff"] = autodiff.autodiff(b64, tot64)
        fd = references.finite_difference(
            b64, method, columns=cols, probes=0, seed=case.seed, totals=tot64,
            stats=references.RowStats(st.a[r0:r1], st.b[r0:r1], st.lse[r0:r1], st.vmax[r0:r1],
                                      st.temperature, st.softcap, st.classes))
        fd_band[r0:r1], fd_step[r0:r1] = fd.band, fd.step
        sel = slice(None) if cols is None else cols
        g["finite_difference"] = fd.grad[:, sel]
        tb = targets[r0:r1]
        for (a, bname), acc in accs.items():
            extra = native if a == "candidate" else 0.0
            if "finite_difference" in (a, bname):
                xa = g[a] if a == "finite_difference" else g[a][:, sel]
                xb = g[bname] if bname == "finite_difference" else g[bname][:, sel]
                acc.update(r0, xa, xb, target=tb, valid=valid[r0:r1], band=fd.band + extra,
                           cols=cols)
            else:
                acc.update(r0, g[a], g[bname], target=tb, valid=valid[r0:r1], band=extra)
        inv.update(r0, g[checked])
        probe_rows.run(b64, r0, tot64, {k: v for k, v in g.items()
                                        if k != "finite_difference"})
        tick()
    fdr = _FD(method, fd_band, fd_step, cols, c, probe_rows.probes())
    comparisons = []
    for (a, b), acc in accs.items():
        cmp = acc.result(targets)
        if fdr.probes and "finite_difference" in (a, b):
            cmp = _fold_probes(cmp, a if b == "finite_difference" else b, fdr)
        comparisons.append(cmp)
    invs = inv.result(checked, spec, valid, c, dtype=dtypes[checked], kappa=kappa, scale=scale,
                      band=native)
    if candidate is not None and policy.repeat > 1:
        from .case import _determinism

        invs.append(_determinism(call.nondet, policy, comparisons[0]))
    passed = all(x.passed for x in comparisons) and all(i.passed for i in invs)
    notes.append(f"streamed in {len(blocks)} blocks of {nb} rows; " + RELATIONS_NOTE)
    info = FDInfo(method, float(np.max(fd_band, initial=0.0)), float(np.median(fd_step)),
                  fdr.coverage, fdr.columns, len(fdr.probes))
    coverage = Coverage(tuple(dict.fromkeys(m for p in pairs for m in p if m != "candidate")),
                        (), len(fdr.probes), fdr.coverage)
    return CaseResult(passed=passed, comparisons=tuple(comparisons), invariants=tuple(invs),
                      coverage=coverage, fd=info, notes=tuple(notes),
                      seconds=time.perf_counter() - t0, **base)


class _FD:
    """What ``_fold_probes`` and the report read of an FDResult."""

    def __init__(self, method, band, step, cols, classes, probes):
        self.method, self.band, self.step, self.probes = method, band, step, probes
        self.columns = classes if cols is None else len(cols)
        self.coverage = ("every coordinate" if cols is None else
                         f"{len(cols)} of {classes} columns (every target column, the largest "
                         f"|g| entries, random columns) + {len(probes)} directional probes "
                         "over every coordinate")


def _columns(inputs: Inputs, priority, count: int, seed: int, nb: int) -> np.ndarray:
    """``finite_difference._choose_columns`` with the largest |priority| entries found a
    block at a time (the first 4·count by (−|g|, flat index), as its stable sort)."""
    n, c = inputs.logits.shape
    count = max(1, min(c, count))
    chosen = list(dict.fromkeys(int(j) for j in inputs.target[inputs.valid]))
    k = 4 * count
    keep_v, keep_f = np.zeros(0), np.zeros(0, np.int64)
    for r0 in range(0, n, nb):
        a = np.abs(np.nan_to_num(np.asarray(priority(r0, min(n, r0 + nb)),
                                            np.float64))).ravel()
        if len(keep_v) >= k:            # only entries that can enter the first k
            idx = np.flatnonzero(a >= keep_v[k - 1])
        elif a.size > k:
            kth = np.partition(a, a.size - k)[a.size - k]
            idx = np.flatnonzero(a >= kth)
        else:
            idx = np.arange(a.size)
        if idx.size:
            v = np.concatenate([keep_v, a[idx]])
            f = np.concatenate([keep_f, r0 * c + idx.astype(np.int64)])
            order = np.lexsort((f, -v))[:k]
            keep_v, keep_f = v[order], f[order]
    chosen += [int(j) for j in dict.fromkeys((keep_f % c).tolist())]
    rng = np.random.default_rng([seed, 3])
    chosen += [int(j) for j in rng.permutation(c)]
    return np.array(list(dict.fromkeys(chosen))[:count])


class _ProbeRows:
    """Directional probes (``finite_difference._probes``) a block of rows at a time: probe k
    draws its direction from its own generator, block after block."""

    def __init__(self, n, c, count, seed, st):
        self.rngs = [probe_rng(seed, k) for k in range(count)]
        self.n, self.c, self.st = n, c, st
        self.val = [np.zeros(n) for _ in range(count)]
        self.band = [np.zeros(n) for _ in range(count)]
        self.l1 = [np.zeros(n) for _ in range(count)]
        self.proj = [{} for _ in range(count)]

    def run(self, b64: Inputs, r0: int, totals, grads: dict) -> None:
        if not self.rngs:
            return
        z = b64.logits
        r1 = r0 + z.shape[0]
        prm = params(b64, totals)
        # evaluated as finite_difference's probes are: only the features in use (no complex
        # tanh without a softcap), the unperturbed rows' max as the shift, the target gathered
        feats = features(prm)
        tt, shift, index = references.sweep_terms(np, z, b64.target64, prm, True, feats,
                                                  references.sparse_targets(b64, prm))
        finite = np.isfinite(z)
        st = self.st
        gamma = 8 + math.log2(max(self.c, 2))
        f1 = (st.a + st.b * st.lse)[r0:r1]
        lse = st.lse[r0:r1]
        vmax = st.vmax[r0:r1]
        for k, rng in enumerate(self.rngs):
            d = rng.standard_normal(z.shape)
            d = np.where(finite, d, 0.0)
            d -= np.where(finite, np.sum(d, -1, keepdims=True)
                          / np.maximum(finite.sum(-1, keepdims=True), 1), 0)
            with np.errstate(over="ignore", invalid="ignore", under="ignore"):
                zc = z.astype(np.complex128) + 1j * COMPLEX_STEP * d
                self.val[k][r0:r1] = np.imag(rows_of(np, zc, tt, prm, feats=feats, shift=shift,
                                                     index=index)) / COMPLEX_STEP
            l1 = np.sum(np.abs(d), -1)
            self.band[k][r0:r1] = gamma * U64 * (1 + lse + vmax) * f1 * l1 / st.temperature
            self.l1[k][r0:r1] = l1
            for name, g in grads.items():
                with np.errstate(invalid="ignore"):
                    p = np.sum(np.where(d != 0, g * d, 0.0), -1)
                self.proj[k].setdefault(name, np.zeros(self.n))[r0:r1] = p

    def probes(self) -> tuple[Probe, ...]:
        return tuple(Probe(v, b, l, p) for v, b, l, p in
                     zip(self.val, self.band, self.l1, self.proj))
