"""Processes a run started: make softcheck their subreaper, find every descendant, kill them."""

from __future__ import annotations

import ctypes
import os
import signal


def _set_subreaper() -> None:
    try:                                                   # PR_SET_CHILD_SUBREAPER
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _proc_table() -> dict[int, tuple[int, bytes]]:
    """pid → (ppid, state) for every process in /proc."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    data = f.read()
            except OSError:
                continue
            rest = data[data.rindex(b")") + 2:].split()
            table[int(name)] = (int(rest[1]), rest[0])
    return table


def _descendants(table, root: int) -> set[int]:
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    found, stack = set(), [root]
    while stack:
        for c in kids.get(stack.pop(), ()):
            if c not in found:
                found.add(c)
                stack.append(c)
    return found


def _tagged(pid: int, tag: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return tag in f.read()
    except OSError:
        return False


def _kill(pid: int, sig=signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
