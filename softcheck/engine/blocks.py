"""One block of rows of a streamed case (engine/stream.py): the first pass beside the draw and
the candidate's calls, and the judging of the block once the candidate has returned."""

from __future__ import annotations

import threading

import numpy as np

from ..judge import tolerances
from ..judge.compare import stored_of
from ..reference import analytic, autodiff
from ..reference import finite_difference as references
from ..reference.loss import reduced, value_rows
from ..spec import Inputs


def block_of(inputs: Inputs, r0: int, r1: int, f64: bool = True) -> Inputs:
    z = inputs.logits[r0:r1]
    go = np.asarray(inputs.grad_output)
    return Inputs(np.asarray(z, np.float64) if f64 else np.asarray(z), inputs.target[r0:r1],
                  inputs.weight64 if f64 else inputs.weight,
                  go[r0:r1] if go.ndim else go, inputs.spec)


class Abandoned(Exception):
    """The draw or the candidate's call failed: the first pass stops waiting for rows."""


class FirstPass:
    """Beside the draw and the candidate's calls: each row's statistics (``row_stats``), the
    largest |z|, the native band, and the probes' reference values (their directions need no
    candidate).  Blocks are taken as the draw finishes their rows (``ready``), by the thread
    started for it and, once the candidate has returned, by the caller's too (``work``)."""

    def __init__(self, blocks, ticker, n_probes, seed, native_wanted, dt, loss=False):
        n = blocks[-1][1]
        self.blocks, self.ticker, self.seed, self.dt = blocks, ticker, seed, dt
        self.native_wanted = native_wanted
        # the reference loss values' rows (a convention kernel returns its loss): value_rows
        self.loss_rows = [np.zeros(n) for _ in range(5)] if loss else None
        self.denom = 0.0
        self.rows = {k: np.zeros(n) for k in ("a", "b", "lse", "vmax", "s", "top")}
        self.rows["plain"] = np.zeros(n, bool)
        self.zmax = self.native = 0.0
        self.probes = [(np.zeros(n), np.zeros(n), np.zeros(n)) for _ in range(n_probes)]
        self.error: BaseException | None = None
        self.quick = False             # the case failed already: the row statistics only
        self.cond = threading.Condition()
        self.inputs, self.tot64, self.upto, self.next, self.finished = None, None, 0, 0, 0

    def ready(self, inputs, r0: int, r1: int) -> None:
        """The draw has finished rows ..r1 (make_inputs_into's ``ready``)."""
        with self.cond:
            if self.inputs is None:
                self.inputs = inputs
                self.tot64 = analytic.mean_totals(inputs, np.float64)
            self.upto = max(self.upto, r1)
            self.cond.notify_all()

    def work(self) -> None:
        """Judge blocks until none is left (returns at once if the draw failed); the heap
        trimmed after."""
        try:
            self._work()
        finally:
            trim()

    def _work(self) -> None:
        while True:
            with self.cond:
                if self.next >= len(self.blocks) or self.error is not None:
                    return
                r0, r1 = self.blocks[self.next]
                self.next += 1                 # this block is ours (before waiting for it)
                while self.upto < r1 and self.error is None:
                    self.cond.wait()
                if self.error is not None:
                    return
            try:
                self.block(r0, r1)
            except BaseException as e:  # noqa: BLE001 - raised in the caller's thread
                with self.cond:
                    self.error = e
                    self.cond.notify_all()
                return
            with self.cond:
                self.finished += 1
                self.cond.notify_all()
            self.ticker.tick()

    def wait(self) -> None:
        """Until every block taken is finished (or one failed: raised here)."""
        with self.cond:
            while self.finished < self.next and self.error is None:
                self.cond.wait()
        if self.error is not None and not isinstance(self.error, Abandoned):
            raise self.error

    def abandon(self) -> None:
        """The draw or the call failed: the waiting thread stops."""
        with self.cond:
            if self.error is None:
                self.error = Abandoned()
            self.cond.notify_all()

    def block(self, r0: int, r1: int) -> None:
        inputs = self.inputs
        b = block_of(inputs, r0, r1)
        st = references.row_stats(b, self.tot64)
        for key, arr in self.rows.items():
            arr[r0:r1] = getattr(st, key)
        z = b.logits
        fin = np.isfinite(z)
        zmax = float(np.max(np.abs(z if fin.all() else z[fin]), initial=0.0))
        native = 0.0
        if self.native_wanted:
            with np.errstate(invalid="ignore", over="ignore"):
                ref = analytic.gradient(b, totals=self.tot64)
                nat = analytic.gradient(block_of(inputs, r0, r1, False), native=True,
                                        totals=analytic.mean_totals(inputs, self.dt.type)
                                        ).astype(np.float64)
                err = np.abs(nat - ref)
            native = float(np.max(err[np.isfinite(err)], initial=0.0))
        if self.loss_rows is not None:
            *rows, denom = value_rows(b, self.tot64, (st.top, st.s))
            for arr, part in zip(self.loss_rows, rows):
                arr[r0:r1] = part
            self.denom = denom                 # the batch's, the same for every block
        with self.cond:
            self.zmax, self.native = max(self.zmax, zmax), max(self.native, native)
        if self.probes and not self.quick:
            prep = references.Prepared(b, self.tot64, st)
            for k, (val, band, l1) in enumerate(self.probes):
                pr = references.probe(prep, st, k, self.seed, {}, r0)
                val[r0:r1], band[r0:r1], l1[r0:r1] = pr.value, pr.band, pr.l1

    def loss_values(self, spec):
        """The reference's loss, z-loss and lse (``reference.loss.values`` of the batch)."""
        return reduced(spec, *self.loss_rows, self.denom)

    def stats(self, spec, c: int) -> references.RowStats:
        r = self.rows
        return references.RowStats(r["a"], r["b"], r["lse"], r["vmax"], spec.divisor,
                                   spec.softcap, c, r["s"], r["top"], r["plain"])


class Judge:
    """One block of rows judged: the references, the comparisons, the invariants, the FD band
    and step, and each probe's projections (rows written by one thread each)."""

    def __init__(self, inputs, tot64, st, grad, cols, method, case, native, n_probes, dt):
        n = inputs.logits.shape[0]
        self.inputs, self.tot64, self.st, self.grad = inputs, tot64, st, grad
        self.cols, self.method, self.case, self.native = cols, method, case, native
        self.dt, self.has_candidate = dt, grad is not None
        self.fd_band, self.fd_step = np.zeros(n), np.zeros(n)
        self.n_probes = n_probes
        self.proj: list[dict] = [{} for _ in range(n_probes)]
        self.kept = None          # repeats.Kept: what the repeats are compared with
        self.lock = threading.Lock()

    def probes(self, first: FirstPass) -> tuple:
        """The directional probes: the first pass's values, bands and |d|₁ with this judge's
        projections of every method on them."""
        return tuple(references.Probe(v, b, l1, self.proj[k])
                     for k, (v, b, l1) in enumerate(first.probes))

    def _stored(self, b64, stb):
        """The block's STORED term (judge/tolerances.py), or None where the mode has none."""
        dtype = self.case.dtype
        if not tolerances.stores_logp(dtype, self.case.tolerance):
            return None
        return stored_of(b64, stb, dtype)

    def block(self, r0, r1, accs, inv, targets, valid, checked) -> None:
        inputs, tot64, st, cols = self.inputs, self.tot64, self.st, self.cols
        b64 = block_of(inputs, r0, r1)
        stb = st.rows(r0, r1)
        g = {}
        if self.has_candidate:
            g["candidate"] = np.asarray(self.grad[r0:r1], np.float64)
            g["analytic"] = analytic.gradient(b64, totals=tot64)
        else:
            g["analytic"] = analytic.gradient(
                block_of(inputs, r0, r1, False),
                totals=analytic.mean_totals(inputs, analytic.compute_dtype(self.dt))
            ).astype(np.float64)
        if self.kept is not None:
            raw = self.grad.buffer if isinstance(self.grad, Scaled) else self.grad
            self.kept.record(r0, raw[r0:r1], g["candidate"], g["analytic"])
        g["autodiff"] = autodiff.autodiff(b64, tot64)
        h, band = references.fd_plan(stb, self.method)
        self.fd_band[r0:r1], self.fd_step[r0:r1] = band, h
        prep = references.Prepared(b64, tot64, stb)
        c = inputs.logits.shape[1]
        g["finite_difference"] = references.sweep_columns(
            prep, np.arange(c) if cols is None else cols, h, self.method)
        tb = targets[r0:r1]
        subset = {}
        # the STORED term of every pair judged in a 16-bit dtype (as compare() adds it)
        stored = self._stored(b64, stb)
        for (a, bname), acc in accs.items():
            extra = self.native if a == "candidate" else 0.0
            ent = stored if acc.dtype in tolerances.LOW_PRECISION else None
            if "finite_difference" in (a, bname):
                def side(name):
                    if name == "finite_difference" or cols is None:
                        return g[name]
                    if name not in subset:
                        subset[name] = np.take(g[name], cols, axis=1)
                    return subset[name]
                acc.update(r0, side(a), side(bname), target=tb, valid=valid[r0:r1],
                           band=band + extra, cols=cols,
                           extra=ent if ent is None or cols is None else np.take(ent, cols, axis=1))
            else:
                acc.update(r0, g[a], g[bname], target=tb, valid=valid[r0:r1], band=extra,
                           extra=ent)
        inv.update(r0, g[checked])
        refs = {k: v for k, v in g.items() if k != "finite_difference"}
        for k in range(self.n_probes):
            d = references.probe_directions(self.case.seed, k, r0, b64.logits, stb.plain)
            got = references.project_on(d, refs)
            with self.lock:
                for name, p in got.items():
                    self.proj[k].setdefault(name, np.zeros(inputs.logits.shape[0]))[r0:r1] = p


def _libc():
    if "libc" not in _LIBC:
        try:
            import ctypes

            lib = ctypes.CDLL(None)
            _LIBC["libc"] = lib if hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim") \
                else None
        except (OSError, AttributeError, TypeError):      # not glibc (macOS, musl, Windows)
            _LIBC["libc"] = None
    return _LIBC["libc"]


_LIBC: dict = {}
#: glibc's mallopt parameters, and their defaults (restored after a streamed case)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
DEFAULT_TRIM, DEFAULT_MMAP = 128 * 1024, 128 * 1024
KEPT_MMAP, KEPT_TRIM = 1 << 25, 1 << 30


class KeptHeap:
    """While a streamed case runs, freed block temporaries stay in the heap for the next
    block (glibc: allocations below 32 MiB from the heap, freed memory not trimmed): a block's
    arrays otherwise come as fresh pages every time, and faulting and zeroing them cost
    the judge more than its arithmetic (a quarter of the run as system time at 4096×131072).
    The heap is trimmed once at the end (``malloc_trim``) and glibc's default values set
    again: fixed ones, so its dynamic mmap threshold stays off for the rest of the process
    (large arrays are then always mapped and unmapped: memory handed back at once)."""

    def __enter__(self):
        lib = _libc()
        # 32 MiB: the largest M_MMAP_THRESHOLD every glibc accepts; the 8 MiB block arrays
        # are below it.  Refused (0): the trim threshold is left alone too.
        self.kept = lib is not None and lib.mallopt(M_MMAP_THRESHOLD, KEPT_MMAP) == 1
        if self.kept:
            lib.mallopt(M_TRIM_THRESHOLD, KEPT_TRIM)
        return self

    def __exit__(self, *exc):
        lib = _libc()
        if self.kept:
            lib.mallopt(M_MMAP_THRESHOLD, DEFAULT_MMAP)
            lib.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM)
        trim()
        return False


def trim() -> None:
    """The heap's free pages handed back (glibc ``malloc_trim``: every thread's arena), once
    a stage's threads are done with their blocks."""
    lib = _libc()
    if lib is not None:
        lib.malloc_trim(0)


class Scaled:
    """A plain in-place kernel's buffer (its gradient for g = 1) read a block of rows at a
    time as float64 times the case's g, as the whole-array path multiplies it."""

    def __init__(self, buffer, times):
        self.buffer, self.times = buffer, np.asarray(times, np.float64)

    def __getitem__(self, rows: slice) -> np.ndarray:
        t = self.times
        return np.asarray(self.buffer[rows], np.float64) * (t if t.ndim == 0 else t[rows, None])


def in_threads(fn, count: int) -> None:
    """``fn(t)`` for t < count, each in its own thread; the first error is raised here."""
    errors: list[BaseException] = []

    def run(t):
        try:
            fn(t)
        except BaseException as e:  # noqa: BLE001 - raised below, in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(count)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    trim()                               # their temporaries, kept for the next block
    if errors:
        raise errors[0]
