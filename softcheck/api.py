"""The Python API: the same behaviour as the CLI, as functions."""

from __future__ import annotations

import functools
import re
import sys
import textwrap
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

import numpy as np

from .engine.results import Report
from .candidate.call import DEFAULT_TIMEOUT
from .spec import SoftcheckError
from .suite.config import AXES, CALL_KEYS, CONFIG_KEYS, Config, config

METHODS = ("analytic", "autodiff", "finite_difference")
#: the call options ``check`` takes (backward is a callable here): the CLI's, one list
CALL_OPTIONS = tuple(k for k in CALL_KEYS if k != "backward")
POLICY_OPTIONS = ("timeout", "repeat", "nondet_tol", "in_process", "memory_limit",
                  "fail_fast", "hvp", "backward")
_KEYWORDS = frozenset(CONFIG_KEYS + CALL_OPTIONS + POLICY_OPTIONS)
_FLAG = re.compile(r"--([a-z][a-z0-9-]*)")


def in_api_words(message: str) -> str:
    """A message of the one validator (it names CLI flags) in the API's words: ``--dtype``
    is the keyword ``dtype``."""
    def word(m: re.Match) -> str:
        name = m.group(1).replace("-", "_")
        return name if name in _KEYWORDS else m.group(0)
    return _FLAG.sub(word, message)


F = TypeVar("F", bound=Callable[..., Any])


def api_errors(fn: F) -> F:
    """``fn`` with every SoftcheckError in the API's words (:func:`in_api_words`)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except SoftcheckError as e:
            raise SoftcheckError(in_api_words(str(e))) from None
    return cast(F, wrapper)


def api_options(options: dict) -> dict:
    """The CLI's spellings accepted: an axis as a comma string (``dtype="float32,bfloat16"``,
    ``classes="10,100"``) as well as a list; validated (the errors name the keyword)."""
    out = dict(options)
    for k in AXES:
        v = out.get(k)
        if isinstance(v, str) and "," in v or k in ("classes", "batch") and isinstance(v, str):
            parts: list[str] = [p.strip() for p in v.split(",")]
            if k in ("classes", "batch"):
                try:
                    out[k] = [int(p) for p in parts]
                except ValueError:
                    raise SoftcheckError(f"{k} takes whole numbers (a list or a comma string), "
                                         f"got {v!r}") from None
            else:
                out[k] = parts
    config(**out)                                 # validated here, in the caller's words
    return out


@api_errors
def api_config(**options: Any) -> Config:
    """The suite options (the CLI's ``run`` options, underscored) as a validated Config."""
    return config(**api_options(options))


@api_errors
def run(*, fail_fast: bool = False, **options: Any) -> Report:
    """Check analytic vs autodiff vs finite differences over the suite (``softcheck run``)."""
    from .engine.suites import run as _run

    return _run(api_config(**options), fail_fast=fail_fast)


@api_errors
def check(fn: Callable[..., Any], *, timeout: float | None = DEFAULT_TIMEOUT, repeat: int = 2,
          nondet_tol: float | None = None, in_process: bool = False, fail_fast: bool = False,
          memory_limit: int | str | None = None,
          hvp: Callable[..., Any] | None = None, backward: Callable[..., Any] | None = None,
          **options: Any) -> Report:
    """Check a gradient function ``fn(logits, target, **kw)`` (``softcheck check``), or a
    kernel as written with ``convention="loss"|"inplace"|"split"`` (``backward=`` the split
    backward, a callable).

    The judge and ``fn`` both run outside this process: the judge in a fresh process of its
    own (engine/remote.py), ``fn`` in the sandboxed worker it starts, re-imported there by
    its module and name, so ``fn`` (and ``hvp``, ``backward``) must be module-level
    functions.  A lambda, a closure or a function of the ``__main__`` script is refused with
    the reason unless ``in_process=True``: then judge and candidate run here, and the report
    says "not isolated".  ``timeout`` seconds per call (0 or None: no limit); ``repeat``
    calls per case on identical inputs; ``nondet_tol`` the difference allowed between them;
    ``memory_limit`` the worker's (``"8G"``, bytes; 0: none; default 3/4 of the machine's
    memory)."""
    from .candidate import CallPolicy, source_of
    from .candidate.sandbox import parse_size

    call = {k: options.pop(k) for k in CALL_OPTIONS if k in options}
    options = api_options(options)
    policy = CallPolicy(timeout, repeat, nondet_tol, not in_process,
                        None if memory_limit is None else parse_size(memory_limit))
    if in_process:
        return _check_here(fn, hvp, backward, call, options, policy, fail_fast)
    sources = {what: (f, source_of(f)) for what, f in (("fn", fn), ("hvp", hvp),
                                                       ("backward", backward)) if f is not None}
    for what, (f, src) in sources.items():
        if src is None:
            name = getattr(f, "__qualname__", None) or repr(f)
            raise SoftcheckError(
                f"softcheck.check: {what} {name} is a lambda, a closure or a function of the "
                "__main__ script, which the candidate's worker process cannot re-import by "
                "module and name: define it at module level, or pass in_process=True (then "
                "it runs in this process, not isolated)")
    from .engine.remote import judge

    return judge({"source": sources["fn"][1],
                  "hvp_source": sources["hvp"][1] if "hvp" in sources else None,
                  "label": getattr(fn, "__qualname__", None),
                  "call": {**call, "backward": sources["backward"][1]
                           if "backward" in sources else None},
                  "options": options, "policy": policy, "fail_fast": fail_fast,
                  "path": [p for p in sys.path if p]})


def _check_here(fn: Callable[..., Any], hvp: Callable[..., Any] | None,
                backward: Callable[..., Any] | None, call: dict, options: dict, policy: Any,
                fail_fast: bool) -> Report:
    """``check(..., in_process=True)``: the judge and the candidate in this process."""
    import dataclasses

    from .candidate import Candidate
    from .candidate.conventions import resolve, settings
    from .engine.suites import check_candidate

    bname = None if backward is None else getattr(backward, "__qualname__", repr(backward))
    st = resolve(fn, settings(backward=bname, fused=options.get("hidden") is not None,
                              shape=options.get("shape"), shift=options.get("shift"), **call),
                 bwd=backward)
    cand = dataclasses.replace(Candidate.from_callable(fn, hvp=hvp), settings=st,
                               backward=backward)
    return check_candidate(cand, config(**options), policy=policy, fail_fast=fail_fast)


def _doc(title: str, words: Iterable[str]) -> str:
    return "\n\n" + textwrap.fill(f"{title}: {', '.join(words)}.", 88,
                                  initial_indent="    ", subsequent_indent="    ")


_SUITE_DOC = _doc("Suite keywords (softcheck run's options, underscored; an axis, "
                  f"{', '.join(AXES)}, takes one value, a list or a comma string)", CONFIG_KEYS)
run.__doc__ = (run.__doc__ or "") + _SUITE_DOC
check.__doc__ = (check.__doc__ or "") + _SUITE_DOC + _doc(
    "How fn is called (softcheck check's options)", CALL_OPTIONS)

def loss(logits: Any, target: Any, **options: Any) -> np.ndarray:
    """The loss with PyTorch ``F.cross_entropy`` semantics (float64; (N,) for none)."""
    from .reference.loss import loss as _loss

    return _loss(logits, target, **options)


def gradient(logits: Any, target: Any, method: str = "analytic", *, grad_output: Any = None,
             fd: str | None = None, **options: Any) -> np.ndarray:
    """∂loss/∂logits (times ``grad_output``) by one method, float64 (analytic: logits' dtype)."""
    from .reference import analytic, autodiff, finite_difference
    from .suite.inputs import make_inputs_from_arrays

    if method not in METHODS:
        raise SoftcheckError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    inputs = make_inputs_from_arrays(logits, target, grad_output=grad_output, **options)
    if method == "analytic":
        return analytic.gradient(inputs).copy()       # the memoized one is read-only
    if method == "autodiff":
        return autodiff.autodiff(inputs.float64())
    return finite_difference.finite_difference(inputs.float64(), fd).grad


def as_torch(array: Any, *, requires_grad: bool = False) -> Any:
    """A numpy array as a torch tensor of the same dtype, bfloat16 included (numpy has no
    bfloat16: softcheck passes ml_dtypes' bfloat16, which ``torch.from_numpy`` rejects).
    For a torch candidate: ``z = softcheck.as_torch(logits, requires_grad=True)``."""
    import torch

    a = np.asarray(array)
    if a.dtype.name == "bfloat16":
        t = torch.from_numpy(np.ascontiguousarray(a).view(np.uint16).copy()).view(torch.bfloat16)
    else:
        t = torch.from_numpy(np.array(a, copy=True))
    return t.requires_grad_(requires_grad) if requires_grad else t
