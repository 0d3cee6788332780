"""A candidate's exception in words: the reason line and the innermost frames of its own code."""

from __future__ import annotations

import os
import traceback

class CallFailed(Exception):
    """The kernel misbehaved on this case (turned into the case's error by the caller)."""


#: frames of the candidate's own code shown, innermost last
FRAMES = 3
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def format_exception(exc: BaseException) -> str:
    """``raised ValueError: boom`` then ``  at file.py:12 in fn`` for the innermost
    :data:`FRAMES` frames outside softcheck (the candidate's own code, or the library it
    called); softcheck's frames (the call guard, the worker) are left out.  Pure: reads only
    the exception and its traceback.  Runs where the exception was raised (the worker):
    ``str(exc)`` is the candidate's code and may itself raise, even SystemExit."""
    name = type(exc).__name__
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return f"raised {name}"
    try:
        msg = str(exc).strip()
    except (KeyboardInterrupt, SystemExit) as inner:
        return f"raised {name} (and its message raised {type(inner).__name__})"
    except BaseException:  # noqa: BLE001
        msg = "<its message could not be formatted>"
    first = msg.splitlines()[0] if msg else ""
    line = f"raised {name}" + (f": {first[:200]}" if first else "")
    if "bfloat16" in first and "numpy" in first.lower() or "ml_dtypes" in first:
        line += (" (logits arrive as numpy bfloat16 from ml_dtypes: convert with "
                 "softcheck.as_torch(logits) or jnp.asarray(logits))")
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not os.path.abspath(f.filename).startswith(_PACKAGE + os.sep)]
    where = [f"  at {f.filename}:{f.lineno} in {f.name}" for f in frames[-FRAMES:]]
    return "\n".join([line, *where])
