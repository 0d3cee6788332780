"""A streamed case's convention kernel (loss, inplace, split, autograd.Function) in its worker
(engine/stream.py): the logits drawn into a sealed memory file as for a plain gradient
function (shared.py), each call its own request for one upstream gradient, the gradient back
in its own precision (float32 stays float32, bfloat16 16-bit) in a file the worker sealed,
the forward's values in the reply.

Judge side (``call_convention``): one call, its gradient brought back whole in its own
sealed file (an in-place kernel's own pages handed back as they are copied).  The repeats of
``--repeat`` are the engine's, each one such call made once the main call is judged and
dropped (engine/repeats.py), so no two full-size gradients are ever held at once.

Worker side (``serve_convention``, ``Release``): the kernel gets a copy-on-write mapping of
the sealed logits (``conventions.Streamed``); an in-place kernel's gradient, in the pages it
wrote, is copied to the output file a block of rows at a time and those pages are handed
back as they are copied.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading

import numpy as np

from .arena import (ArenaError, address_of, close_all, outputs, place, populate,
                    take_outputs)
from .call import CallResult
from .shared import drop, private, rows_of


def call_convention(wc, inputs, timeout, repeat, variants: bool = True) -> CallResult:
    """``call_shared`` for a convention kernel (loss, inplace, split, autograd.Function): one
    request, for the upstream gradient ``inputs.grad_output`` alone (``repeat`` must be 1:
    the engine makes the repeats, engine/repeats.py); the
    gradient comes back in its own precision (a view of the worker's sealed file), the
    forward's values in the reply.  The other upstream gradients are left to the engine
    (``variants``: (label, g, None) each, one more call apiece, judged and dropped in turn);
    a plain in-place kernel's buffer is the gradient for g = 1 (``times``: g, applied by the
    judge block by block, as the whole-array path multiplies it)."""
    import softcheck.candidate.reply as wire

    from .channel import _MAX_REPLY
    from .conventions import upstreams
    from ..reference.loss import lse_rows

    if int(repeat) != 1:
        raise ValueError("a streamed convention kernel is called once per request: its "
                         "repeats are the engine's (engine/repeats.py)")
    st = wc.settings
    z = inputs.logits
    shape, n = tuple(int(s) for s in z.shape), int(z.shape[0])
    arrays = {"weight": inputs.weight, "grad_output": np.asarray(inputs.grad_output),
              "lse64": lse_rows(inputs) if st.convention == "split" else None}
    kw = {k: np.asarray(v) for k, v in arrays.items() if v is not None}
    names = list(kw)
    logits_fd = wc._logits.seal()
    small, descs = place([inputs.target] + [kw[k] for k in names])
    kw.update(zip(names, descs[1:]))
    req = {"op": "convention", "args": [("arr", 0, shape, z.dtype.name, int(inputs.pad)),
                                        descs[0]],
           "kw": kw, "shape": shape, "case_dtype": z.dtype.name, "spec": inputs.spec,
           "stream": True}
    limit = max(_MAX_REPLY, 64 * 8 * n + (1 << 16))
    fields = {"out_dtypes": lambda v, what: v, "x64_off": wire.flag,
              **{k: (lambda v, what: wire.values(v, what, n)) for k in ("loss", "z_loss", "lse")}}
    fds, reply = [logits_fd, small.fd], None
    try:
        reply, error, output = wc.exchange(req, timeout, limit=limit, fds=fds)
        try:
            if error is not None:
                return CallResult(None, error, output=output)
            got = wire.checked(reply, fields)
            grad = take_outputs(reply, [shape])[0]
        except wire.ReplyError as e:
            return CallResult(None, f"the candidate's process sent an invalid reply ({e})",
                              output=output)
        except (ArenaError, OSError, ValueError, TypeError) as e:
            return CallResult(None, f"its outputs did not come back as they must: {e}",
                              output=output)
        finally:
            close_all(list((reply or {}).get("fds") or ()))
        applies = st.convention != "inplace" or bool(getattr(wc.described, "autograd", False))
        times = None if applies else np.asarray(inputs.grad_output, np.float64)
        notes = list(got["notes"])
        if grad.dtype.itemsize < z.dtype.itemsize:
            notes.append(f"returned {grad.dtype} for a {z.dtype.name} case"
                         + (" (JAX x64 is off in the candidate's process?)"
                            if got["x64_off"] else ""))
    finally:
        small.close()
    others = tuple((lab, g, None) for lab, g in upstreams(inputs)) if applies and variants \
        else ()
    return CallResult(grad, None, tuple(notes), output, 0.0, got["loss"],
                      got["z_loss"], got["lse"], others, times=times)


class Release:
    """``arena.outputs``' ``copied``: an in-place kernel's gradient lives in the pages it
    wrote of its copy-on-write logits (``private``); once rows are in the output file, their
    pages are handed back (MADV_DONTNEED: they read as the sealed logits again), so the
    gradient is never held twice.  A gradient elsewhere (a tensor of the kernel's) is left."""

    def __init__(self, maps: list):
        self.spans = [(mm, address_of(mm), len(mm)) for mm in maps]
        self.freed: dict = {}

    def span(self, a):
        """The mapping ``a``'s rows lie in, with its address and ``a``'s (None: elsewhere;
        only a numpy array or a CPU torch tensor is looked at: nothing is copied)."""
        if hasattr(a, "data_ptr") and getattr(getattr(a, "device", None), "type", "") == "cpu":
            try:
                a = a.detach().numpy()
            except (TypeError, RuntimeError):         # bfloat16 has no numpy dtype
                return None
        if not isinstance(a, np.ndarray) or a.ndim != 2 or not a.shape[0]:
            return None
        p = a.__array_interface__["data"][0]
        step, row = a.strides[0], a.shape[1] * a.itemsize
        if step <= 0 or a.strides[1] != a.itemsize:
            return None
        end = p + (a.shape[0] - 1) * step + row
        for mm, base, size in self.spans:
            if base <= p and end <= base + size:
                return mm, base, p, step
        return None

    def holds(self, a) -> bool:
        """Whether ``a`` is the kernel's logits pages themselves (the first mapping: the one
        it is called on; it wrote its gradient there).  A split kernel's backward writing
        into its own mapping (``Streamed.fresh``) is not: that one is made anew each call."""
        found = self.span(a)
        return found is not None and found[0] is self.spans[0][0]

    def __call__(self, a, r1: int) -> None:
        found = self.span(a)
        if found is None:
            return
        mm, base, p, step = found
        lo = self.freed.get(id(mm), p - base)
        hi = (p - base + r1 * step) // mmap.PAGESIZE * mmap.PAGESIZE
        lo = -(-lo // mmap.PAGESIZE) * mmap.PAGESIZE
        if hi > lo:
            mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            self.freed[id(mm)] = hi


class Ahead:
    """While a kernel's call runs on its copy-on-write logits (``private``), pages are made
    private a chunk ahead of where it writes, by one madvise per chunk, instead of one page fault
    per page (each fault costs microseconds in a VM: 2-6 s for 2 GiB, against 0.7 s in a
    single madvise).  A thread watches for the kernel's writes by comparing a few sampled words
    of the last chunk with the sealed logits. Only a chunk the kernel has entered makes the next
    one populated. A kernel that never writes into its logits therefore costs nothing, and one
    that writes part of them costs at most one chunk more.  It changes no value: a populated
    page holds the logits until the kernel writes it.  An in-place kernel's later calls are
    populated whole instead (``_WROTE``)."""

    CHUNK = 64 << 20
    SAMPLES = 8
    POLL = 0.001

    def __init__(self, mm, sealed, off: int):
        self.mm, self.sealed, self.off, self.size = mm, sealed, off, len(mm)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.populated = 0

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        return False

    def _written(self, start: int, end: int) -> bool:
        """Whether any sampled 8-byte word of [start, end) differs from the sealed logits."""
        step = max(8, (end - start) // self.SAMPLES // 8 * 8)
        for b in range(start, end - 7, step):
            if self.mm[b:b + 8] != self.sealed[self.off + b:self.off + b + 8]:
                return True
        return False

    def _run(self) -> None:
        pos, ch = 0, self.CHUNK
        while pos < self.size and not self.stop.wait(self.POLL):
            if not self._written(max(0, pos - ch), min(self.size, max(pos, ch))):
                continue
            n = min(ch, self.size - pos)
            populate(self.mm, pos, n)     # (the GIL let go: the kernel's Python goes on)
            pos += n
            self.populated = pos


#: which logits the last call wrote its gradient into (its copy-on-write pages): the next call
#: on them gets those pages populated at once
_WROTE: dict = {}


def serve_convention(cand, shm, req: dict) -> dict:
    """Worker side of ``call_convention``: one call by the kernel's convention on a
    copy-on-write mapping of the sealed logits (``conventions.Streamed``), for the one
    upstream gradient sent; its gradient in its own precision in a sealed file (``keep``: a
    repeat's, kept for ``block``), the forward's values in the reply."""
    from ..spec import Inputs
    from .call import convention_once
    from .conventions import Streamed
    from .record import x64_off

    if shm.logits is None:
        raise ArenaError("a streamed call came without its logits' memory file")
    drop()
    d, kw, maps = req["args"][0], req["kw"], []
    weight = shm.fresh(kw["weight"]) if "weight" in kw else None
    z = private(shm.logits, d, maps)
    info = os.fstat(shm.logits.fd)                   # the same memory file as last call's?
    key = (info.st_dev, info.st_ino, repr(d))
    whole = _WROTE.get("key") == key   # the last call's gradient was these pages: it writes
    if whole:                            # them all again (one madvise, not a fault each)
        populate(maps[0], 0, len(maps[0]))
    inputs = Inputs(z, shm.fresh(req["args"][1]), weight,
                    shm.fresh(kw["grad_output"]), req["spec"])
    lse64 = shm.fresh(kw["lse64"]) if "lse64" in kw else None
    streamed = Streamed(rows_of(shm.logits.mm, d), lambda: private(shm.logits, d, maps))
    ahead = contextlib.nullcontext() if whole else Ahead(maps[0], shm.logits.mm, int(d[1]))
    with ahead:                          # else populated a chunk ahead of its writes
        r = convention_once(cand.fn, cand.settings, inputs, bwd=cand.backward, lse64=lse64,
                            variants=False, streamed=streamed)
    inputs = streamed = None
    if r.error is not None:
        _WROTE.clear()
        return {"error": r.error, "notes": list(r.notes)}
    release = Release(maps)
    _WROTE["key"] = key if release.holds(r.grad) else None
    fields = outputs([r.grad], copied=release)

    def plain(v):
        return None if v is None else np.asarray(v, np.float64).tolist()

    return {"error": None, "notes": list(r.notes), "x64_off": x64_off(), "loss": plain(r.loss),
            "z_loss": plain(r.z_loss), "lse": plain(r.lse), **fields}
