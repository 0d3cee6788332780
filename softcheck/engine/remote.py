"""The judge in a process of its own, for a Python caller (``softcheck.check(fn)``).

The caller's process holds whatever the caller imported, the candidate's module included: a
verdict made there could be changed by that module.  So ``softcheck.check`` hands the judge a
request (the TARGET by module and name, never the function itself) and the judge runs in a
fresh interpreter (``python -P -m softcheck.engine.remote``: the working folder is not put on
its path), which starts the candidate's sandboxed worker as ``softcheck check`` does and sends
back the finished :class:`Report` (pickled: it is softcheck's own object, made by softcheck's
own process).  The caller never unpickles anything the candidate's process wrote."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

from ..spec import SoftcheckError

_BUG = "softcheck's judging process failed (a softcheck bug, please report):\n"


def judge(request: dict):
    """The Report of ``request`` (``source``, ``hvp_source``, ``call`` settings, ``options``,
    ``policy``, ``fail_fast``), judged in a fresh process; its SoftcheckError raised here."""
    r, w = os.pipe()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(   # this softcheck, not another install
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    try:
        proc = subprocess.Popen([sys.executable, "-P", "-m", "softcheck.engine.remote",
                                 str(w)], stdin=subprocess.PIPE, pass_fds=(w,), env=env,
                                stdout=subprocess.DEVNULL, close_fds=True)
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as back:
        try:
            proc.stdin.write(pickle.dumps(request))
            proc.stdin.close()
        except BrokenPipeError:
            pass
        data = back.read()
    code = proc.wait()
    try:
        kind, value = pickle.loads(data)
    except Exception:  # noqa: BLE001 - nothing came back: the process died
        raise RuntimeError(f"{_BUG}it ended with status {code} and no report") from None
    if kind == "error":
        raise SoftcheckError(value)
    if kind == "bug":
        raise RuntimeError(_BUG + value)
    return value


def _serve(fd: int) -> None:
    request = pickle.loads(sys.stdin.buffer.read())
    try:
        out = ("report", _judge_here(request))
    except SoftcheckError as e:
        out = ("error", str(e))
    except BaseException:  # noqa: BLE001 - reported to the caller as softcheck's bug
        import traceback

        out = ("bug", traceback.format_exc())
    with os.fdopen(fd, "wb") as f:
        f.write(pickle.dumps(out))


def _judge_here(req: dict):
    from ..candidate import load
    from ..candidate.conventions import settings
    from ..suite.config import config
    from .suites import check_candidate

    # what the caller could import, the worker can (the judge itself does not import from it)
    os.environ["SOFTCHECK_WORKER_PATH"] = os.pathsep.join(req.get("path", ()))
    cand = load(req["source"], hvp=req.get("hvp_source"), label=req.get("label"),
                settings=settings(**req["call"],
                                  fused=req["options"].get("hidden") is not None,
                                  shape=req["options"].get("shape"),
                                  shift=req["options"].get("shift")))
    return check_candidate(cand, config(**req["options"]), policy=req["policy"],
                           fail_fast=req["fail_fast"])


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
