"""What the judge knows of a TARGET without importing it: plain data its worker sends.

The worker imports the TARGET (never softcheck's own process) and replies, in its ready
message, :func:`describe` of each function as builtins (:meth:`Described.wire`).  The judge
rebuilds a :class:`Described` from that reply (:meth:`Described.from_wire`, every field
checked: the worker is the candidate's process) and resolves and validates the calling
convention on it: a ``Described`` answers ``inspect.signature`` with the function's own
signature (parameter names, kinds, which have defaults), ``__name__``, and (an
``autograd.Function``, a ``torch.nn.Module``) ``.forward``; it cannot be called.  A Module
class's own signature is its ``__init__``'s (its options) and its ``forward`` keeps ``self``;
a Module instance's is its bound ``forward``'s.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from ..spec import SoftcheckError
from ..suite.config import FRAMEWORKS

#: a default's stand-in (the value itself never crosses: only that there is one)
_DEFAULT = "<default>"
_P = inspect.Parameter
_KINDS = {int(k): k for k in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD, _P.VAR_POSITIONAL,
                              _P.KEYWORD_ONLY, _P.VAR_KEYWORD)}
#: what a Described's ``module`` may be ("": no torch.nn.Module)
MODULE_KINDS = ("", "class", "instance")
#: the longest name and the most parameters a description may carry
MAX_NAME, MAX_PARAMS = 200, 256


class BadDescription(Exception):
    """The worker's description of the TARGET is malformed (the candidate's process lied)."""


@dataclass(frozen=True)
class Described:
    """A function known by its description: name, signature, framework, kind."""

    name: str
    params: tuple[tuple[str, int, bool], ...] | None   # (name, kind, has default); None: unknown
    framework: str = "numpy"
    autograd: bool = False           # a torch.autograd.Function subclass (``.apply``)
    custom_vjp: bool = False         # a jax.custom_vjp / custom_jvp
    forward: Described | None = None  # the autograd.Function's forward(ctx, ...), a Module's
    module: str = ""                 # a torch.nn.Module: "class" or "instance"

    @property
    def __name__(self) -> str:       # type: ignore[override]
        return self.name

    @property
    def __signature__(self) -> inspect.Signature:
        if self.params is None:
            raise ValueError(f"{self.name} has no signature")
        return inspect.Signature([
            inspect.Parameter(n, _KINDS[k], default=_DEFAULT if d else inspect.Parameter.empty)
            for n, k, d in self.params])

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self.name} runs in its worker process, not in softcheck's")

    def wire(self) -> dict:
        """As builtins, for the worker's ready reply."""
        return {"name": self.name, "params": None if self.params is None else
                [list(p) for p in self.params], "framework": self.framework,
                "autograd": self.autograd, "custom_vjp": self.custom_vjp,
                "forward": None if self.forward is None else self.forward.wire(),
                "module": self.module}

    @classmethod
    def from_wire(cls, d, depth: int = 0) -> Described:
        """A description from a worker's reply, every field checked (``BadDescription``)."""
        if not isinstance(d, dict) or depth > 1:
            raise BadDescription("the description is not a mapping")
        name, params, fw = d.get("name"), d.get("params"), d.get("framework")
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
            raise BadDescription("the function's name is not a short string")
        if fw not in FRAMEWORKS:
            raise BadDescription(f"the framework is not one of {', '.join(FRAMEWORKS)}")
        flags = [d.get("autograd"), d.get("custom_vjp")]
        if not all(type(f) is bool for f in flags):
            raise BadDescription("the kind flags are not booleans")
        out = None
        if params is not None:
            if not isinstance(params, list) or len(params) > MAX_PARAMS:
                raise BadDescription("the parameters are not a short list")
            out = []
            for p in params:
                if not (isinstance(p, list) and len(p) == 3 and isinstance(p[0], str)
                        and p[0].isidentifier() and len(p[0]) <= MAX_NAME
                        and type(p[1]) is int and p[1] in _KINDS and type(p[2]) is bool):
                    raise BadDescription("a parameter is not (name, kind, has_default)")
                out.append((p[0], p[1], p[2]))
            try:
                inspect.Signature([inspect.Parameter(n, _KINDS[k], default=_DEFAULT if h
                                                     else inspect.Parameter.empty)
                                   for n, k, h in out])
            except (TypeError, ValueError) as e:
                raise BadDescription(f"the parameters are not a signature ({e})") from None
            out = tuple(out)
        fwd, module = d.get("forward"), d.get("module", "")
        if module not in MODULE_KINDS:
            raise BadDescription("the module kind is not one of class, instance or empty")
        forward = None if fwd is None else cls.from_wire(fwd, depth + 1)
        return cls(name, out, fw, flags[0], flags[1], forward, module)


def describe(fn) -> Described:
    """``fn`` described (run where ``fn`` lives: its worker, or the caller's process for an
    explicit ``in_process`` check)."""
    from .frameworks import detect, is_autograd_function, is_custom_vjp, is_module

    if isinstance(fn, Described):
        return fn
    autograd = is_autograd_function(fn)
    module = ("class" if isinstance(fn, type) else "instance") if is_module(fn) else ""
    forward = describe(fn.forward) if (autograd or module) and hasattr(fn, "forward") \
        else None
    name = str(getattr(fn, "__name__", None) or type(fn).__name__)[:MAX_NAME] or "fn"
    params = forward.params if module == "instance" and forward else _params(fn)
    return Described(name, params, detect(fn), autograd, is_custom_vjp(fn), forward, module)


def _params(fn):
    try:
        ps = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    return tuple((p.name, int(p.kind), p.default is not p.empty) for p in ps)[:MAX_PARAMS]


def load_error(msg) -> SoftcheckError:
    """A worker's report that the TARGET could not be loaded, as one line (exit 2)."""
    text = msg if isinstance(msg, str) else "the TARGET could not be loaded"
    line = (text.strip().splitlines() or ["the TARGET could not be loaded"])[0]
    return SoftcheckError(line[:500])
