"""A streamed case's blocks judged by lanes (engine/stream.py): each lane a thread with its own
accumulators, taking the next block not yet taken, the lanes merged at the end (the numbers do
not depend on which lane took which block: maxima, counts, each row written by one lane).

A plain gradient function's repeat call (``--repeat``) runs in its worker while the judge has
the main call's gradient already, in a file the worker sealed: ``Beside`` starts one lane on
it then (the worker's call uses one core of two; the judge's first pass is done by then), and
the others join once the candidate has returned."""

from __future__ import annotations

import threading

import numpy as np

from ..judge import tolerances
from ..judge.pairs import user_tolerance
from ..judge.streaming import StreamedComparison, StreamedInvariants
from .blocks import trim


class Judging:
    """Every block of ``blocks`` judged by ``judge`` in whichever lane takes it first."""

    def __init__(self, case, candidate, judge, pairs, blocks, ticker, kappa):
        self.case, self.judge, self.pairs, self.blocks = case, judge, pairs, blocks
        self.ticker, self.kappa = ticker, kappa
        inputs = judge.inputs
        self.valid = inputs.valid
        self.targets = np.where(self.valid, inputs.target, -1)
        self.dtypes = {"analytic": "float64" if candidate is not None else case.dtype,
                       "autodiff": "float64", "finite_difference": "float64",
                       "candidate": case.dtype}
        self.checked = "candidate" if candidate is not None else "analytic"
        self.users = {a: user_tolerance(case, a, candidate) for a, _ in pairs}
        self.lock = threading.Lock()
        self.lanes: list = []
        self.next, self.stopped = 0, False

    def _accumulators(self) -> dict:
        st, case, d = self.judge.st, self.case, self.dtypes
        return {(a, b): StreamedComparison(
            (a, b), dtype=tolerances.coarser(d[a], d[b]), kappa=self.kappa, scale=st.scale,
            classes=case.classes, user=self.users[a], mode=case.tolerance)
            for a, b in self.pairs}

    def lane(self) -> None:
        """Judge blocks, in this thread with accumulators of its own, until none is left
        (or ``stop``)."""
        accs, inv = self._accumulators(), StreamedInvariants(len(self.valid))
        with self.lock:
            self.lanes.append((accs, inv))
        while True:
            with self.lock:
                if self.stopped or self.next >= len(self.blocks):
                    return
                r0, r1 = self.blocks[self.next]
                self.next += 1
            self.judge.block(r0, r1, accs, inv, self.targets, self.valid, self.checked)
            self.ticker.tick()

    def stop(self) -> None:
        with self.lock:
            self.stopped = True

    def taken(self) -> int:
        with self.lock:
            return self.next

    def result(self):
        """``(comparisons, invariants)`` of every lane's blocks (the probes not folded in)."""
        accs, inv = self.lanes[0]
        for other, oinv in self.lanes[1:]:
            for key, acc in accs.items():
                acc.merge(other[key])
            inv.merge(oinv)
        st, case = self.judge.st, self.case
        invs = inv.result(self.checked, case.spec, self.valid, case.classes,
                          dtype=self.dtypes[self.checked], kappa=self.kappa, scale=st.scale,
                          band=self.judge.native)
        return [acc.result(self.targets) for acc in accs.values()], invs


class Beside:
    """The ``beside`` of a candidate's call (candidate/protocol.py): given the main call's
    gradient while the repeat runs, ``setup(grad)`` (it waits for the first pass, chooses the
    FD columns and makes the ``Judging``) in a thread of its own, which then judges as one
    lane.  ``made()`` (after the call): what ``setup`` returned, or None if it never began."""

    def __init__(self, setup):
        self.setup = setup
        self.thread: threading.Thread | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.value = None
        self.cancelled = False

    def __call__(self, grad) -> None:
        if self.thread is None and not self.cancelled:
            self.thread = threading.Thread(target=self._run, args=(grad,), daemon=True)
            self.thread.start()

    def _run(self, grad) -> None:
        try:
            try:
                if not self.cancelled:
                    self.value = self.setup(grad)
            finally:
                self.ready.set()
            if self.value is not None and not self.cancelled:
                self.value.judging.lane()
        except BaseException as e:  # noqa: BLE001 - raised in the caller's thread (made/join)
            self.error = e
        finally:
            trim()

    def made(self):
        """``setup``'s value once it is made (None if the call never gave a gradient)."""
        if self.thread is None:
            return None
        self.ready.wait()
        if self.error is not None:
            raise self.error
        return self.value

    def join(self) -> None:
        """Its lane done; its error raised here."""
        if self.thread is not None:
            self.thread.join()
        if self.error is not None:
            raise self.error

    def cancel(self) -> None:
        """The call failed (or was abandoned): its lane stops after its block."""
        self.cancelled = True
        if self.value is not None:
            self.value.judging.stop()
        if self.thread is not None:
            self.thread.join()
