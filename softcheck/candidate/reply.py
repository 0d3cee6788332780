"""A worker's reply, checked field by field: the one place the judge reads what a candidate's
process sent (issue #26).  That process runs the candidate's code, so its reply is data to
check, never a value to trust: every field must have its type, length and shape, no field
may be missing or extra, and anything else is a :class:`ReplyError` whose message becomes the
case's reason (a failed case, never softcheck's own error).

The replies (``worker_main``, ``fused.serve_fused``, ``rank_main``, ``shard_main``): always
``seq`` (the request's number), ``error`` (None or text) and ``notes`` (a list of text); a
successful call adds what its request asked for — see the ``*_FIELDS`` tables.
"""

from __future__ import annotations

import math

import numpy as np

#: the dtypes a returned array may have in shared memory (the judge converts it to float64)
NUMERIC = frozenset({"float16", "float32", "float64", "int8", "int16", "int32", "int64",
                     "uint8", "uint16", "uint32", "uint64"})
#: characters of one text field, and notes in one reply
MAX_TEXT = 1 << 16
MAX_NOTES = 64
#: what every reply carries (``fds``: the memory files that came with it, added by the channel)
BASE = ("seq", "error", "notes", "fds")


class ReplyError(Exception):
    """A reply that is not what the request asked for; the message says which field."""


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def text(v, what: str) -> str:
    if not isinstance(v, str):
        raise ReplyError(f"{what} is {show(v)}, not text")
    if len(v) > MAX_TEXT:
        raise ReplyError(f"{what} is {len(v)} characters long (at most {MAX_TEXT})")
    return v


def texts(v, what: str = "notes") -> tuple[str, ...]:
    if not isinstance(v, (list, tuple)):
        raise ReplyError(f"{what} is {show(v)}, not a list of text")
    if len(v) > MAX_NOTES:
        raise ReplyError(f"{what} has {len(v)} entries (at most {MAX_NOTES})")
    return tuple(text(x, f"{what}[{i}]") for i, x in enumerate(v))


def flag(v, what: str) -> bool:
    if not isinstance(v, bool):
        raise ReplyError(f"{what} is {show(v)}, not true/false")
    return v


def integer(v, what: str, lo: int, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ReplyError(f"{what} is {show(v)}, not a whole number in [{lo}, {hi}]")
    return v


def dtype_name(v, what: str = "dtype") -> np.dtype:
    """A returned array's dtype, one of :data:`NUMERIC` (by name)."""
    if not isinstance(v, str) or v not in NUMERIC:
        raise ReplyError(f"{what} is {show(v)}, not one of {', '.join(sorted(NUMERIC))}")
    return np.dtype(v)


def values(v, what: str, n: int) -> np.ndarray | None:
    """The forward's values: None, a number, or a flat list of 1 or ``n`` numbers → float64
    (NaN and inf are values the judge then judges, not malformed)."""
    if v is None:
        return None
    if _is_number(v):
        return np.asarray(float(v))
    if not isinstance(v, (list, tuple)) or len(v) not in (1, n):
        raise ReplyError(f"{what} is {show(v)}, not a number or a list of {n}")
    if not all(_is_number(x) for x in v):
        raise ReplyError(f"{what} holds something other than numbers")
    return np.asarray([float(x) for x in v], np.float64)


def checked(reply, fields: dict, seq: int | None = None) -> dict:
    """``reply`` with its base fields and ``fields`` (name → check(value, name)) checked:
    exactly those keys on success; with an error only the base ones (``notes`` optional).
    ``seq``: the request's number (None: the channel checked it already)."""
    if not isinstance(reply, dict):
        raise ReplyError(f"the reply is {show(reply)}, not a mapping")
    got = reply.get("seq")
    if not isinstance(got, int) or isinstance(got, bool) or (seq is not None and got != seq):
        raise ReplyError(f"the reply answers request {show(got)}, not {seq}")
    err = reply.get("error")
    if err is not None:
        if not text(err, "error"):
            raise ReplyError("error is empty text")
    extra = set(reply) - set(BASE) - (set() if err is not None else set(fields))
    missing = ({"error"} | (set() if err is not None else {"notes", *fields})) - set(reply)
    if extra:
        raise ReplyError("the reply has unexpected field(s) "
                         + ", ".join(sorted(map(show, extra))))
    if missing:
        raise ReplyError(f"the reply lacks field(s) {', '.join(sorted(missing))}")
    out = {"error": err, "notes": texts(reply.get("notes", ()))}
    if err is None:
        out.update({k: check(reply[k], k) for k, check in fields.items()})
    return out


def show(v) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def finite(v, what: str) -> float:
    if not _is_number(v) or not math.isfinite(float(v)):
        raise ReplyError(f"{what} is {show(v)}, not a finite number")
    return float(v)
