"""A large case's arrays in the shared file without copies (engine/stream.py).

Parent side (``logits_in``, ``call_shared``): the logits are drawn straight into the shared
file at offset 0 and sent as they are; the gradient comes back after them, page-aligned, in
its own precision (4 bytes a logit, 8 for float64) and is read in place.  Worker side
(``private``, ``pristine``, ``Sink``): the candidate gets a copy-on-write private mapping of
the logits (an in-place kernel writes only its own pages; the pages it does not touch are
never copied), the untouched original is the shared pages themselves, and the gradient is
kept in shared memory: a repeated call (the determinism check) is compared with it block by
block and dropped.
"""

from __future__ import annotations

import mmap
import os
import sys

import numpy as np

from .arrays import max_difference, row_blocks, same_bits
from .call import CallResult

#: room after the logits and the gradient for the target and the keyword arrays
EXTRA_BYTES = 1 << 24


def dtype_named(name: str) -> np.dtype:
    """A dtype by name, ml_dtypes' (bfloat16) included."""
    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))


def page(n: int) -> int:
    return -(-n // mmap.PAGESIZE) * mmap.PAGESIZE


def room(dtype) -> int:
    """Bytes per entry kept for the gradient: float32 precision, float64 for a float64 case."""
    return 8 if np.dtype(dtype).itemsize >= 8 else 4


def _grow(wc, size: int) -> None:
    if size > wc._size:
        os.ftruncate(wc._shm_fd, size)
        old = wc._mm
        wc._mm, wc._size = mmap.mmap(wc._shm_fd, size), size
        if old is not None:
            try:
                old.close()
            except BufferError:          # views of it live on (the same file's pages)
                pass


def logits_in(wc, shape: tuple[int, int], dtype, pad: int = 0) -> np.ndarray:
    """An (N, C) array of ``dtype`` at offset 0 of ``wc``'s shared file, room after it;
    ``pad`` > 0 (--layout strided): the view [:, :C] of (N, C + pad), the padding NaN.

    The logits' pages and the gradient's (in the case dtype's size: a float32 kept for a
    16-bit case faults in its second half when it comes) are populated in one call: a
    first write would fault them in page by page, seconds for gigabytes."""
    dt = np.dtype(dtype)
    n, c = (int(s) for s in shape)
    count = n * c
    _grow(wc, page(n * (c + pad) * dt.itemsize) + page(count * room(dt)) + EXTRA_BYTES)
    _populate(wc._mm, 0, page(n * (c + pad) * dt.itemsize)
              + page(count * min(room(dt), dt.itemsize)))
    buf = np.frombuffer(wc._mm, dt, n * (c + pad), 0).reshape(n, c + pad)
    if pad:
        buf[:, c:] = np.nan
    return buf[:, :c]


#: madvise(MADV_POPULATE_WRITE) (Linux ≥ 5.14; elsewhere the pages fault in as written)
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)


def _populate(mm, start: int, length: int) -> None:
    if not hasattr(mm, "madvise") or not sys.platform.startswith("linux"):
        return
    try:
        mm.madvise(MADV_POPULATE_WRITE, start, length)
    except (OSError, ValueError):
        pass


def call_shared(wc, inputs, timeout, repeat) -> CallResult:
    """``IsolatedCandidate._call`` for logits made by ``logits_in``: nothing full-size is
    copied; the returned gradient is a view of the shared file in the precision it was kept."""
    kw = wc.kwargs(inputs)
    names = [k for k, v in kw.items() if isinstance(v, np.ndarray)]
    z = inputs.logits
    shape, count = tuple(int(s) for s in z.shape), int(z.size)
    pad = int(inputs.pad)                     # --layout strided: rows of C + pad elements
    out = page(shape[0] * (shape[1] + pad) * z.dtype.itemsize)
    pos = page(out + room(z.dtype) * count)
    descs = []
    for a in [inputs.target] + [kw[k] for k in names]:
        a = np.ascontiguousarray(a).reshape(np.shape(a))
        _grow(wc, pos + a.nbytes)
        np.frombuffer(wc._mm, np.uint8, a.nbytes, pos)[:] = a.reshape(-1).view(np.uint8)
        descs.append(("arr", pos, tuple(int(s) for s in a.shape), a.dtype.name))
        pos += -(-a.nbytes // 64) * 64
    kw.update(zip(names, descs[1:]))
    reply, error, output = wc.exchange(
        {"op": "call", "args": [("arr", 0, shape, z.dtype.name, pad), descs[0]], "kw": kw,
         "shape": shape, "case_dtype": z.dtype.name, "out": out, "repeat": max(1, int(repeat)),
         "spec": None, "stream": True, "out_itemsize": room(z.dtype)}, timeout)
    if error is not None:
        return CallResult(None, error, output=output)
    grad = np.frombuffer(wc._mm, dtype_named(reply["out_dtype"]), count, out).reshape(shape)
    return CallResult(grad, None, tuple(str(n) for n in reply.get("notes", ())),
                      output=output, nondet=float(reply.get("nondet", 0.0)))


# -- worker side ------------------------------------------------------------------------
def _rows_of(buffer, desc) -> np.ndarray:
    """The (N, C) array of ("arr", offset, shape, dtype[, pad]) in ``buffer`` (rows of
    C + pad elements: a non-contiguous view when pad > 0)."""
    _, off, shape, dt, *pad = desc
    n, c = (int(s) for s in shape)
    width = c + (int(pad[0]) if pad else 0)
    return np.frombuffer(buffer, dtype_named(dt), n * width, off).reshape(n, width)[:, :c]


def _view(shm, desc, writeable: bool = False):
    view = _rows_of(shm.mm, desc)
    view.flags.writeable = writeable
    return view


def private(shm, desc) -> np.ndarray:
    """A writable copy-on-write mapping of the page-aligned logits: the candidate may write
    into it; the shared pages stay as they were."""
    _, off, shape, dt, *pad = desc
    size = int(shape[0]) * (int(shape[1]) + (int(pad[0]) if pad else 0)) * \
        dtype_named(dt).itemsize
    mm = mmap.mmap(shm.fd, max(1, size), flags=mmap.MAP_PRIVATE,
                   prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=off)
    return _rows_of(mm, ("arr", 0, *desc[2:]))


def pristine(shm, descs) -> list:
    """The arguments' untouched originals: the logits' shared pages themselves (read-only)."""
    return [_view(shm, d) if i == 0 else shm.fresh(d) for i, d in enumerate(descs)]


def _rows(arr, test=None, out=None) -> bool:
    """Copy ``arr`` into ``out`` a block of rows at a time, or check ``test`` on every block."""
    for r in row_blocks(arr.shape):
        if out is not None:
            out[r] = arr[r]
        elif not test(np.asarray(arr[r])):
            return False
    return True


class Sink:
    """The gradient kept in shared memory in its own precision (the case dtype when its
    values are exactly that, else float32, or float64 for a float64 case), and a repeated
    call's compared with it block by block (``call.invoke``'s sink)."""

    def __init__(self, shm, req: dict):
        self.shm, self.req, self.view, self.dtype = shm, req, None, None

    def store(self, arr) -> list[str]:
        case, space = dtype_named(self.req["case_dtype"]), int(self.req["out_itemsize"])
        dt = np.dtype(np.float64) if space >= 8 else np.dtype(np.float32)
        if arr.dtype.itemsize <= space and arr.dtype in (np.float64, np.float32, np.float16):
            dt = arr.dtype
        if case.itemsize < dt.itemsize and _rows(arr, lambda b: np.array_equal(
                b.astype(case).astype(b.dtype), b, equal_nan=True)):
            dt = case                                   # 16-bit values returned as float32
        self.view = np.frombuffer(self.shm.mm, dt, arr.size, self.req["out"]).reshape(arr.shape)
        _rows(arr, None, self.view)
        self.dtype = dt.name
        return ([f"returned {arr.dtype}; kept rounded to {dt.name} (large case)"]
                if np.dtype(arr.dtype).itemsize > dt.itemsize else [])

    def diff(self, arr) -> float | None:
        """None if bitwise equal to the kept gradient (as kept), else max |difference|."""
        worst, differs = 0.0, False
        for r in row_blocks(arr.shape):
            kept, got = self.view[r], np.asarray(arr[r]).astype(self.view.dtype, copy=False)
            if same_bits(kept, got):
                continue
            b, a = np.asarray(kept, np.float64), np.asarray(got, np.float64)
            if a.tobytes() != b.tobytes():
                differs, worst = True, max(worst, max_difference(b, a))
        return worst if differs else None
