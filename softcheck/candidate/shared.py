"""A large case's arrays in sealed memory files without copies (engine/stream.py).

Judge side (``logits_in``, ``call_shared``): the logits are drawn straight into a memory file
(``arena.Arena.reserve``), sealed before the worker ever sees it; the target and the keyword
arrays go in a second, small one.  The gradient comes back in a file the worker sealed, in
its own precision (4 bytes a logit, 8 for float64), read in place.  Each repetition of the
determinism check is its own request: the worker keeps the repeat's gradient (the
candidate's own array) and sends it back a block of rows at a time, each block in its own
sealed file, compared here with the first gradient (``repeat_compared``): nothing
full-size is copied, and the difference is computed by the judge.  A convention kernel's
repeats are the engine's instead (engine/repeats.py: each back whole once the main call is
judged and dropped, compared by digest): its in-place gradient lives in the logits' own
pages, which a kept repeat would double.

Worker side (``private``, ``pristine``, ``Sink``, ``Keep``, ``block``): the candidate gets a
copy-on-write private mapping of the sealed logits (an in-place kernel writes only its own
pages; the pages it does not touch are never copied), the untouched original is the sealed
pages themselves.  A convention kernel's streamed calls (loss, inplace, split,
autograd.Function) build on these: streamed.py.
"""

from __future__ import annotations

import hashlib
import mmap

import numpy as np

from .arena import ArenaError, Arena, close_all, dtype_named, outputs, place, populate
from .arrays import max_difference, row_blocks, same_bits
from .call import CallResult

#: elements of a repeat's gradient sent back per block (64 MiB of float32)
REPEAT_BLOCK = 2**24


def room(dtype) -> int:
    """Bytes per entry kept for the gradient: float32 precision, float64 for a float64 case."""
    return 8 if np.dtype(dtype).itemsize >= 8 else 4


def logits_in(wc, shape: tuple[int, int], dtype, pad: int = 0) -> np.ndarray:
    """An (N, C) array of ``dtype`` in a new memory file of ``wc``'s (``wc._logits``), its
    pages populated in one call (a first write would fault them in page by page, seconds
    for gigabytes); ``pad`` > 0 (--layout strided): the view [:, :C] of (N, C + pad), the
    padding NaN.  Sealed by the first call that sends it."""
    dt = np.dtype(dtype)
    n, c = (int(s) for s in shape)
    if wc._logits is not None:
        wc._logits.close()                 # its pages live while the last case's views do
    wc._logits = Arena("softcheck-logits")
    _, mm = wc._logits.reserve(n * (c + pad) * dt.itemsize)
    populate(mm, 0, n * (c + pad) * dt.itemsize)
    buf = np.frombuffer(mm, dt, n * (c + pad), 0).reshape(n, c + pad)
    if pad:
        buf[:, c:] = np.nan
    return buf[:, :c]


def call_shared(wc, inputs, timeout, repeat, beside=None) -> CallResult:
    """``IsolatedCandidate._call`` for logits made by ``logits_in``: nothing full-size is
    copied; the returned gradient is a view of the worker's sealed file in the precision it
    was kept; ``repeat`` > 1: each further call its own request, compared here, after
    ``beside(gradient)`` (the engine's judging begins on the sealed gradient meanwhile)."""
    kw = wc.kwargs(inputs)
    names = [k for k, v in kw.items() if isinstance(v, np.ndarray)]
    z = inputs.logits
    shape = tuple(int(s) for s in z.shape)
    logits_fd = wc._logits.seal()
    small, descs = place([inputs.target] + [kw[k] for k in names])
    kw.update(zip(names, descs[1:]))
    req = {"op": "call", "args": [("arr", 0, shape, z.dtype.name, int(inputs.pad)), descs[0]],
           "kw": kw, "shape": shape, "case_dtype": z.dtype.name, "repeat": 1, "spec": None,
           "stream": True, "out_itemsize": room(z.dtype)}
    try:
        reply, error, output, outs = wc.take(
            *wc.exchange(req, timeout, fds=[logits_fd, small.fd]), [shape])
        if error is not None:
            return CallResult(None, error, output=output)
        grad, notes, nondet = outs[0], [str(n) for n in reply.get("notes", ())], None
        if beside is not None and int(repeat) > 1:
            beside(grad)
        for i in range(1, max(1, int(repeat))):
            d, error, more = repeat_compared(wc, {**req, "keep": True}, [logits_fd, small.fd], grad,
                                     timeout)
            output += more
            if error is not None:
                return CallResult(None, f"{error} (on call {i + 1} of {repeat} on identical "
                                  "inputs)", tuple(notes), output=output)
            if d is not None:
                nondet = max(nondet or 0.0, d)
    finally:
        small.close()
    if nondet is not None:
        notes.append(f"nondeterministic: two calls on identical inputs differ by up to "
                     f"{nondet:.3g} (max abs)")
    return CallResult(grad, None, tuple(notes), output=output, nondet=nondet or 0.0)


def digest(a: np.ndarray) -> bytes:
    """A block's bits (dtype and shape included): SHA-256, for the repeat's comparison."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(a.reshape(-1).view(np.uint8)))
    return h.digest()


def repeat_compared(wc, req: dict, fds, kept: np.ndarray, timeout, limit=None, times=None):
    """One more call, its gradient brought back a block of rows at a time and compared with
    ``kept``: ``(max |difference| or None when bitwise equal, error, output)``; ``times``:
    the g both are multiplied by before their difference is measured (None: 1)."""
    reply, error, output = wc.exchange(req, timeout, fds=fds,
                                       **({} if limit is None else {"limit": limit}))
    close_all(list((reply or {}).get("fds") or ()))
    if error is not None:
        return None, error, output
    worst, differs = 0.0, False
    for r in row_blocks(kept.shape, REPEAT_BLOCK):
        r0, r1 = r.indices(kept.shape[0])[:2]
        reply, error, more, outs = wc.take(
            *wc.exchange({"op": "block", "rows": (r0, r1)}, timeout), [(r1 - r0, kept.shape[1])])
        output += more
        if error is not None:
            return None, error, output
        t = None if times is None or times.ndim == 0 else times[r0:r1, None]
        d = difference(kept[r0:r1], outs[0], times if t is None else t)
        if d is not None:
            differs, worst = True, max(worst, d)
    return (worst if differs else None), None, output


def difference(kept: np.ndarray, got: np.ndarray, times=None) -> float | None:
    """None if ``got`` (rounded to the kept precision) is bitwise ``kept``, else the max
    |difference| (of both times ``times``, when given)."""
    got = np.asarray(got).astype(kept.dtype, copy=False)
    if same_bits(kept, got):
        return None
    b, a = np.asarray(kept, np.float64), np.asarray(got, np.float64)
    if times is not None:
        b, a = b * times, a * times
    return max_difference(b, a) if a.tobytes() != b.tobytes() else None


# -- worker side ------------------------------------------------------------------------
def rows_of(buffer, desc) -> np.ndarray:
    """The (N, C) array of ("arr", offset, shape, dtype[, pad]) in ``buffer`` (rows of
    C + pad elements: a non-contiguous view when pad > 0)."""
    _, off, shape, dt, *pad = desc
    n, c = (int(s) for s in shape)
    width = c + (int(pad[0]) if pad else 0)
    return np.frombuffer(buffer, dtype_named(dt), n * width, off).reshape(n, width)[:, :c]


def private(logits, desc, maps: list | None = None) -> np.ndarray:
    """A writable copy-on-write mapping of the sealed logits: the candidate may write into
    it; the sealed pages stay as they were (``maps``: the mapping appended, for ``Release``)."""
    _, off, shape, dt, *pad = desc
    size = int(shape[0]) * (int(shape[1]) + (int(pad[0]) if pad else 0)) * \
        dtype_named(dt).itemsize
    mm = mmap.mmap(logits.fd, max(1, size), flags=mmap.MAP_PRIVATE,
                   prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=off)
    if maps is not None:
        maps.append(mm)
    return rows_of(mm, ("arr", 0, *desc[2:]))


def pristine(logits, shm, descs) -> list:
    """The arguments' untouched originals: the logits' sealed pages themselves (read-only)."""
    return [rows_of(logits.mm, d) if i == 0 else shm.fresh(d) for i, d in enumerate(descs)]


def _rows(arr, test) -> bool:
    return all(test(np.asarray(arr[r])) for r in row_blocks(arr.shape))


class Sink:
    """The gradient sent back in its own precision (the case dtype when its values are
    exactly that, else float32, or float64 for a float64 case): ``call.invoke``'s sink."""

    def __init__(self, req: dict):
        self.req, self.fields = req, {}

    def store(self, arr) -> list[str]:
        case, space = dtype_named(self.req["case_dtype"]), int(self.req["out_itemsize"])
        dt = np.dtype(np.float64) if space >= 8 else np.dtype(np.float32)
        if arr.dtype.itemsize <= space and arr.dtype in (np.float64, np.float32, np.float16):
            dt = arr.dtype
        if case.itemsize < dt.itemsize and _rows(arr, lambda b: np.array_equal(
                b.astype(case).astype(b.dtype), b, equal_nan=True)):
            dt = case                                   # 16-bit values returned as float32
        self.fields = outputs([arr], [dt])
        return ([f"returned {arr.dtype}; kept rounded to {dt.name} (large case)"]
                if np.dtype(arr.dtype).itemsize > dt.itemsize else [])

    def diff(self, arr):                  # one call per request: never a second one here
        raise AssertionError("a streamed call is repeated by the judge")


_KEPT: dict = {}


class Keep(Sink):
    """A repeat's gradient kept as the candidate returned it, for ``block`` to send back."""

    def __init__(self):
        self.fields = {}

    def store(self, arr) -> list[str]:
        _KEPT["arr"] = arr
        return []


def block(req: dict) -> dict:
    """Rows ``req["rows"]`` of the kept repeat in a sealed file (raw: the judge rounds them);
    the last block drops it."""
    arr = _KEPT.get("arr")
    if arr is None:
        raise ArenaError("no repeated call's gradient is kept")
    r0, r1 = (int(x) for x in req["rows"])
    fields = outputs([arr[r0:r1]])
    if r1 >= arr.shape[0]:
        drop()
    return {"error": None, **fields}


def drop() -> None:
    _KEPT.clear()
