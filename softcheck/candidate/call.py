"""Call the user's gradient function on one case: one guarded call on fresh inputs.

The gradient convention: ``fn(logits, target, **kw)``; ``logits`` a fresh writable numpy
copy (N, C) in the case dtype, ``target`` int64 (N,) or float (N, C); ``kw`` holds those of
:data:`OPTION_NAMES` the function declares (all of them if it takes ``**kwargs``).  It returns
∂L/∂logits as anything array-like (numpy, JAX, torch, also requiring grad or on a GPU).

:func:`call_once` (and :func:`convention_once` for the other conventions) is one call as
the candidate made it: what a worker process runs per request (``worker_main``) and, with
``--in-process``, :meth:`Candidate.call` here.  The judge repeats, compares, checks and
converts (record.py).  :func:`invoke` is a large streamed case's loop (shared.py's sink).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..spec import OPTION_NAMES, Inputs, SoftcheckError
from .conventions import CallFailed, Settings, plain_keywords
from .conventions import run as run_convention

from .arrays import (CandidateError, layout_note, max_difference, padded,  # noqa: F401
                     same_values, to_array)
from .errors import format_exception
from .record import (OUTPUT_LIMIT, CallResult, clip_output, judged,  # noqa: F401
                     repeated, x64_off)

#: seconds one call may take unless --timeout says otherwise (0: no limit)
DEFAULT_TIMEOUT = 600.0


@dataclass(frozen=True)
class CallPolicy:
    """How the candidate is called: where, for how long, how many times per case."""

    timeout: float | None = DEFAULT_TIMEOUT   # per call; None or 0: no limit
    repeat: int = 2                  # calls per case on identical inputs (determinism)
    nondet_tol: float | None = None  # allowed difference between them (None: the case's atol)
    isolate: bool = True             # a worker process (False: --in-process)
    memory_limit: int | None = None  # the worker's, bytes (None: the default; 0: none)

    def __post_init__(self):
        if self.repeat < 1:
            raise SoftcheckError(f"--repeat must be >= 1, got {self.repeat!r}")
        if self.timeout is not None and not self.timeout >= 0:
            raise SoftcheckError(f"--timeout must be >= 0 seconds (0: no limit), got "
                                 f"{self.timeout!r}")
        if self.nondet_tol is not None and not self.nondet_tol >= 0:
            raise SoftcheckError(f"--nondet-tol must be >= 0, got {self.nondet_tol!r}")

    @property
    def limit(self) -> float | None:
        """The per-call limit in seconds, or None for none."""
        return self.timeout or None


@dataclass
class Candidate:
    """A gradient function called in this process (``--in-process``, lambdas, closures)."""

    fn: object
    label: str
    hvp: object = None
    source: str | None = None       # TARGET with an absolute path: a worker process reloads it
    hvp_source: str | None = None
    settings: Settings = Settings()   # how it is called (--convention)
    backward: object = None         # split: the backward kernel
    probe: object = None            # the worker that described it (load.isolated reuses it)

    isolated = False                # the CandidateProtocol (protocol.py): in this process
    x64 = None
    sandbox = None

    def with_hvp(self, h: Candidate) -> Candidate:
        """This gradient with ``h``'s function as its Hessian-vector product (--order 2)."""
        return dataclasses.replace(self, hvp=h.fn, hvp_source=h.source)

    @classmethod
    def from_callable(cls, fn, hvp=None, label: str | None = None) -> Candidate:
        if not callable(fn):
            raise SoftcheckError(f"{fn!r} is not callable")
        return cls(fn, label or getattr(fn, "__qualname__", repr(fn)), hvp)

    @property
    def _params(self):
        return signature_of(self.fn)[0]

    def takes(self, name: str) -> bool:
        params, varkw = signature_of(self.fn)
        return name in params or varkw

    def kwargs(self, inputs: Inputs) -> dict:
        return kwargs_for(inputs, self.takes, self.settings)

    def call(self, inputs: Inputs, *, timeout: float | None = None, repeat: int = 1,
             variants: bool = True, upstream: bool = False, beside=None) -> CallResult:
        """The gradient (``repeat`` calls); under a loss convention also the gradients for the
        other upstream gradients unless ``variants`` is False (a relation's call);
        ``upstream``: the logits an upstream op's saved output (conventions.run); ``beside``
        is never called (the repeats are made in this process, before it returns)."""
        if self.settings.convention != "grad":
            r = _in_process_convention(self, inputs, timeout, repeat, variants, upstream)
        else:
            args = [inputs.logits, inputs.target]
            r = _in_process(self.fn, args, self.kwargs(inputs), inputs, timeout, repeat)
        return with_layout_note(r, inputs, self.settings)

    def call_hvp(self, inputs: Inputs, direction: np.ndarray, *, timeout=None) -> CallResult:
        args = [inputs.logits, inputs.target, np.asarray(direction)]
        return _in_process(self.hvp, args, self.kwargs(inputs), inputs, timeout, 1)

    def call_fused(self, fi, *, timeout=None, repeat: int = 1):
        """Fused linear cross-entropy in this process: ``fused_once`` on fresh copies,
        ``repeat`` times (the judge's loop, ``fused_repeated``)."""
        from .fused import fused_once, fused_repeated

        def one(i):
            return fused_once(self.fn, self.settings, dataclasses.replace(
                fi, x=fi.x.copy(), lm_weight=fi.lm_weight.copy(),
                bias=None if fi.bias is None else fi.bias.copy()))

        return fused_repeated(one, repeat)

    def shared_logits(self, shape, dtype, pad: int = 0) -> None:
        """None: a large case's logits are drawn in this process's memory."""
        return None

    def close(self) -> None:
        """The function runs in this process; the worker that described it (if it still
        lives: one left unserved, or a run that stopped before its first case) ends."""
        if self.probe is not None:
            self.probe.close()


def with_layout_note(r: CallResult, inputs: Inputs, st: Settings) -> CallResult:
    """The call's result with the note of --layout strided first (none when contiguous)."""
    fw = st.framework if st.convention != "grad" else None
    note = layout_note(inputs.pad, inputs.logits.shape[-1], fw, inputs.transposed)
    return dataclasses.replace(r, notes=(*note, *r.notes)) if note else r


def signature_of(fn) -> tuple[tuple[str, ...], bool]:
    """The parameter names of ``fn`` and whether it takes ``**kwargs``."""
    try:
        ps = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return (), False
    return tuple(ps), any(p.kind is p.VAR_KEYWORD for p in ps.values())


def kwargs_for(inputs: Inputs, takes: Callable[[str], bool], st: Settings | None = None
               ) -> dict:
    """The keyword options a plain gradient function declares, with their values for this
    case (by their --rename'd names, --off-value in place of an off option, the --kwarg
    constants beside them: conventions.plain_keywords)."""
    return plain_keywords(inputs, takes, st or Settings())


def invoke(fn, fresh: Callable[[], tuple[tuple, dict]], shape: tuple[int, ...], case_dtype,
           repeat: int = 1, *, pristine: Callable[[], list] | None = None, sink=None
           ) -> tuple[np.ndarray | None, str | None, list[str], float]:
    """A large streamed case only (shared.py, in the worker): call ``fn(*args, **kw)``
    ``repeat`` times on identical fresh inputs (``fresh()``): ``(grad float64, error, notes,
    nondet)``.  Everything the candidate's
    objects do (``__array__``, ``.detach()``, ``str(e)``) happens inside this call.

    Large cases (shared.py): ``pristine()`` gives the arguments' untouched originals instead
    of copies; ``sink.store(arr)`` keeps the first gradient without a float64 copy and
    ``sink.diff(arr)`` compares a repeated call's with it block by block (grad is then None:
    it lives where the sink put it)."""
    case_dtype = np.dtype(case_dtype)
    notes: list[str] = []
    first = first_out = first_arr = None
    nondet, differs, same_buffer = 0.0, False, False
    for i in range(max(1, repeat)):
        args, kw = fresh()
        originals = pristine() if pristine else [np.array(a, copy=True) for a in args]
        kw_originals = {k: np.array(v, copy=True) for k, v in kw.items()
                        if isinstance(v, np.ndarray)}
        where = f" (on call {i + 1} of {repeat} on identical inputs)" if i else ""
        try:
            out = fn(*args, **kw)
            arr = to_array(out, shape) if sink is None else to_array(out, shape, low=True)
            grad = np.array(arr, np.float64, copy=True) if sink is None else None
        except CandidateError as e:
            return None, str(e) + where, notes, 0.0
        except BaseException as e:  # noqa: BLE001 - any failure is the candidate's
            return None, format_exception(e) + where, notes, 0.0
        if i == 0:
            if not same_values(args[0], originals[0]):
                notes.append("wrote into its logits argument (allowed: each call gets a fresh copy)")
            for name, a, o in zip(("target", "direction"), args[1:], originals[1:]):
                if not np.array_equal(a, o, equal_nan=True):
                    return None, f"modified its {name} argument in place", notes, 0.0
            for k, o in kw_originals.items():
                if not np.array_equal(kw[k], o, equal_nan=True):
                    return None, f"modified its {k} argument in place", notes, 0.0
            if arr.dtype.itemsize < case_dtype.itemsize:
                note = f"returned {arr.dtype} for a {case_dtype.name} case"
                jax = sys.modules.get("jax")
                if jax is not None and not bool(jax.config.jax_enable_x64):
                    note += " (JAX x64 is off in the candidate's process?)"
                notes.append(note)
            first, first_out, first_arr = grad, out, arr
            if sink is not None:              # kept in shared memory: drop the candidate's
                notes.extend(sink.store(arr))
                first_out = first_arr = None
        elif sink is not None:
            d = sink.diff(arr)
            if d is not None:
                differs, nondet = True, max(nondet, d)
        else:
            if (out is first_out or np.shares_memory(arr, first_arr)
                    or np.array(first_arr, np.float64).tobytes() != first.tobytes()):
                same_buffer = True
            if grad.tobytes() != first.tobytes():
                differs = True
                nondet = max(nondet, max_difference(first, grad))
        if sink is not None:
            out = arr = args = kw = originals = None   # a repeat runs with only the kept one
    if same_buffer:
        notes.append("returned the same buffer on two calls")
    if differs:
        notes.append(f"nondeterministic: two calls on identical inputs differ by up to "
                     f"{nondet:.3g} (max abs)")
    return first, None, notes, nondet


#: the names of a gradient function's array arguments after the logits, in order
ARGUMENT_NAMES = ("target", "direction")


def call_once(fn, args: tuple, kw: dict, shape: tuple[int, ...], last: dict | None = None
              ) -> CallResult:
    """One call ``fn(*args, **kw)`` as the candidate made it, for the judge (``judged``): the
    gradient as an array in the dtype it came in (``to_array``), the other array arguments as
    they are after the call (``after``), and notes: it wrote into its logits; it returned the
    buffer of the previous call (``last``: kept between the calls of one case).  Everything
    the candidate's objects do (``__array__``, ``.detach()``, ``str(e)``) happens in here."""
    logits = np.array(args[0], copy=True)
    try:
        out = fn(*args, **kw)
        arr = to_array(out, shape)
    except CandidateError as e:
        return CallResult(None, str(e))
    except BaseException as e:  # noqa: BLE001 - any failure is the candidate's
        return CallResult(None, format_exception(e))
    notes = []
    if not same_values(args[0], logits):
        notes.append("wrote into its logits argument (allowed: each call gets a fresh copy)")
    if last is not None:
        prev = last.get("out")
        if prev is not None and (out is prev[0] or np.shares_memory(arr, prev[1])
                                 or prev[1].tobytes() != prev[2]):
            notes.append("returned the same buffer on two calls")
        last["out"] = (out, arr, arr.tobytes())
    after = tuple(zip(ARGUMENT_NAMES, args[1:])) + tuple(
        (k, v) for k, v in kw.items() if isinstance(v, np.ndarray))
    return CallResult(arr, None, tuple(notes), after=after)


def convention_once(fn, st: Settings, inputs: Inputs, *, bwd=None, lse64=None,
                    runner=run_convention, variants: bool = True, streamed=None,
                    upstream: bool = False) -> CallResult:
    """One ``conventions.run`` (loss, inplace, split, autograd.Function; or ``runner``, the
    same contract: ``sharding.run``) for the judge (``judged``): the gradients as arrays in
    the dtype they came in, the forward's values as float64; ``streamed``
    (``conventions.Streamed``): a large case's one call, its gradient in its own precision."""
    shape = inputs.logits.shape
    try:
        out = runner(fn, st, inputs, bwd=bwd, lse64=lse64, variants=variants,
                     **({} if streamed is None else {"streamed": streamed}),
                     **({"upstream": True} if upstream else {}))
        grad = to_array(out.grad, shape, low=streamed is not None)
        others = tuple((str(lab), np.asarray(g, np.float64), to_array(x, shape))
                       for lab, g, x in out.variants)
        values = [None if v is None else np.array(v, np.float64, copy=True)
                  for v in (out.loss, out.z_loss, out.lse)]
        notes = tuple(str(n) for n in out.notes)
    except (CallFailed, CandidateError) as e:
        return CallResult(None, str(e))
    except BaseException as e:  # noqa: BLE001 - any failure is the candidate's
        return CallResult(None, format_exception(e))
    times = None if out.times is None else np.asarray(out.times, np.float64)
    return CallResult(grad, None, notes, "", 0.0, *values, others, out.ranks, times=times)


def exact_lse(st: Settings, inputs: Inputs) -> np.ndarray | None:
    """The float64 lse a ``split`` backward is given (no other convention takes it)."""
    from ..reference.loss import values

    return np.asarray(values(inputs.float64()).lse) if st.convention == "split" else None


def _in_process_convention(cand: Candidate, inputs: Inputs, timeout, repeat,
                           variants: bool = True, upstream: bool = False) -> CallResult:
    """``convention_once`` in this process, ``repeat`` times, output captured, as
    ``_in_process``."""
    lse64 = exact_lse(cand.settings, inputs)

    def once(i):
        fresh = dataclasses.replace(
            inputs, logits=padded(inputs.logits, inputs.pad),
            target=np.array(inputs.target, copy=True),
            weight=None if inputs.weight is None else np.array(inputs.weight, copy=True))
        return judged(convention_once(cand.fn, cand.settings, fresh, bwd=cand.backward,
                                      lse64=lse64, variants=variants, upstream=upstream), {},
                      inputs.logits.dtype, x64_off())

    return _threaded(lambda: repeated(once, repeat), timeout)


def _threaded(work: Callable[[], CallResult], timeout) -> CallResult:
    """``work()`` with its output captured and a timeout that stops waiting."""
    box: dict = {}

    def target():
        box["r"] = work()

    with _capture_output() as output:
        if timeout:
            th = threading.Thread(target=target, daemon=True)
            t0 = time.perf_counter()
            th.start()
            th.join(timeout)
            if th.is_alive():
                box["timeout"] = time.perf_counter() - t0
        else:
            target()
    if "timeout" in box:
        return CallResult(None, f"took longer than {timeout:g} s (--timeout); stopped waiting "
                                f"after {box['timeout']:.1f} s", output=output())
    return dataclasses.replace(box["r"], output=output())


def _in_process(fn, args, kw, inputs: Inputs, timeout, repeat) -> CallResult:
    """``call_once`` in this process ``repeat`` times, judged as a worker's replies are,
    with its output captured (file-descriptor level) and a timeout that stops waiting (a
    thread cannot be stopped: prefer the worker process)."""
    originals = dict(zip(ARGUMENT_NAMES, args[1:]))
    originals.update((k, v) for k, v in kw.items() if isinstance(v, np.ndarray))
    last: dict = {}

    def once(i):                     # the logits in the case's layout (--layout strided)
        a = tuple(padded(x, inputs.pad) if j == 0 else np.array(x, copy=True)
                  for j, x in enumerate(args))
        k = {n: np.array(v, copy=True) if isinstance(v, np.ndarray) else v
             for n, v in kw.items()}
        return judged(call_once(fn, a, k, inputs.logits.shape, last), originals,
                      inputs.logits.dtype, x64_off())

    return _threaded(lambda: repeated(once, repeat), timeout)


@contextlib.contextmanager
def _capture_output():
    """Route file descriptors 1 and 2 (and sys.stdout/err) to a temporary file: C-level
    printf and child processes are caught too.  Yields a function giving the text."""
    text = {"v": ""}
    streams = (sys.stdout, sys.stderr)
    try:
        for s in streams:
            s.flush()
        saved = (os.dup(1), os.dup(2))
    except (OSError, ValueError, AttributeError):
        yield lambda: ""
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        sink = open(tmp.fileno(), "w", closefd=False, buffering=1)
        old = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = sink
        try:
            yield lambda: text["v"]
        finally:
            sys.stdout, sys.stderr = old
            for s in (sink, sys.__stdout__, sys.__stderr__):
                try:
                    s.flush()
                except (OSError, ValueError, AttributeError):
                    pass
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            size = os.fstat(tmp.fileno()).st_size
            data = os.pread(tmp.fileno(), OUTPUT_LIMIT, 0).decode("utf-8", "replace")
            text["v"] = clip_output(data, size)
