"""A candidate that attacks the memory files it shares with the judge, as $ATTACK says
(tests/test_sealed_memory.py).  Every attack is tried with everything at hand and its
failures swallowed: the gradient it returns is wrong unless the attack worked.

- ``roll_logits``: rolls the logits one column in every memory file of this process that
  holds them (a writable shared mmap of the fd, else ``pwrite`` through /proc/self/fd) and
  returns the gradient of the rolled logits: right only if the judge reads the rolled ones.
- ``truncate``: truncates every memory file it holds to 0 bytes, returns twice the gradient.
- ``unsealed_output`` / ``short_output``: patches the worker's own code (it runs in the same
  process) so its output file goes back unsealed / shorter than its gradient; the gradient
  itself is correct.
- ``hide_repeat``: patches the worker's own comparison of a streamed case's repeated call to
  say "the same" (``shared.Sink.diff``), then returns twice the gradient on the second call.
"""

import mmap
import os
import sys

import numpy as np

_FIRST: list = []


def _correct(logits, target):
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    p[np.arange(len(target)), target] -= 1
    return p / len(target)


def _memfds() -> list[int]:
    fds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("/memfd:"):
                fds.append(int(name))
        except OSError:
            pass
    return fds


def _roll_in_place(logits) -> None:
    z = np.ascontiguousarray(logits)
    want = z.tobytes()[:4096]
    rolled = np.roll(z, 1, axis=1)
    for fd in _memfds():
        size = os.fstat(fd).st_size
        if size < z.nbytes:
            continue
        try:
            head = os.pread(fd, len(want), 0)
        except OSError:
            continue
        if head != want:                  # not the file holding the logits at offset 0
            continue
        try:
            mm = mmap.mmap(fd, z.nbytes)  # MAP_SHARED, writable
            np.frombuffer(mm, z.dtype, z.size).reshape(z.shape)[:] = rolled
            mm.close()
            continue
        except (OSError, ValueError):
            pass
        try:
            rw = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
            try:
                os.pwrite(rw, rolled.tobytes(), 0)
            finally:
                os.close(rw)
        except OSError:
            pass


def _truncate() -> None:
    for fd in _memfds():
        for how in (lambda: os.ftruncate(fd, 0),
                    lambda: os.truncate(f"/proc/self/fd/{fd}", 0)):
            try:
                how()
            except OSError:
                pass


def _patch_outputs(short: bool) -> None:
    arena = sys.modules.get("softcheck.candidate.arena")
    if arena is None or getattr(arena, "_patched", False):
        return
    arena._patched = True
    seal = arena.OutputArena.seal

    def unsealed(self):
        return self.fd

    def shorter(self):
        os.ftruncate(self.fd, self.nbytes // 2)
        return seal(self)

    arena.OutputArena.seal = shorter if short else unsealed


def attack(logits, target):
    how = os.environ["ATTACK"]
    if how == "roll_logits":
        if _FIRST:                            # the repeat: what the first call returned
            return _FIRST[0].copy()
        g = _correct(np.roll(np.asarray(logits), 1, axis=1), target).astype(logits.dtype)
        _roll_in_place(logits)
        _FIRST.append(g)
        return g
    if how == "hide_repeat":
        shared = sys.modules.get("softcheck.candidate.shared")
        if shared is not None and hasattr(shared, "Sink"):
            shared.Sink.diff = lambda self, arr: None
        _FIRST.append(1)
        return len(_FIRST) * _correct(logits, target).astype(logits.dtype)
    if how == "truncate":
        _truncate()
        return 2 * _correct(logits, target)
    _patch_outputs(how == "short_output")
    return _correct(logits, target)
