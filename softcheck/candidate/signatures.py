"""Whether a TARGET can be called as softcheck will call it, decided from plain data.

A signature is described once (:func:`describe`: a tuple of ``(name, kind, has_default)``,
picklable, so a worker process can send it) and judged here without the live function: every
parameter softcheck supplies (the leading arrays, the options it passes by keyword, ``--kwarg``
constants) is accepted, required or not; a required parameter it cannot supply is refused by
name.  ``.apply``'s positional order (an ``autograd.Function``) is derived the same way.
"""

from __future__ import annotations

import inspect

from ..spec import OPTION_NAMES, SoftcheckError
from .frameworks import is_autograd_function

#: the kinds of a described parameter (inspect's, in words)
POSITIONAL_ONLY, POSITIONAL, KEYWORD_ONLY, VAR_POSITIONAL, VAR_KEYWORD = (
    "positional_only", "positional", "keyword_only", "var_positional", "var_keyword")
_KINDS = {inspect.Parameter.POSITIONAL_ONLY: POSITIONAL_ONLY,
          inspect.Parameter.POSITIONAL_OR_KEYWORD: POSITIONAL,
          inspect.Parameter.KEYWORD_ONLY: KEYWORD_ONLY,
          inspect.Parameter.VAR_POSITIONAL: VAR_POSITIONAL,
          inspect.Parameter.VAR_KEYWORD: VAR_KEYWORD}
#: the options a kernel may take besides logits and target (grad_output is softcheck's to apply)
KERNEL_OPTIONS = tuple(o for o in OPTION_NAMES if o != "grad_output")
#: what each calling shape's leading positional arguments are (n -> words)
SHAPES = {2: "(logits, target, **kw)", 3: "(x, weight, target, **kw)",
          4: "(logits, target, dloss, lse, **kw)"}


def describe(fn, *, skip: int = 0) -> tuple | None:
    """``fn``'s parameters as ``((name, kind, has_default), ...)`` (``skip`` leading ones
    dropped: ``self``, ``ctx``), or None when Python cannot say (a builtin)."""
    try:
        ps = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    return tuple((p.name, _KINDS[p.kind], p.default is not p.empty) for p in ps[skip:])


def names(params: tuple | None) -> tuple[tuple[str, ...], bool]:
    """The parameter names and whether ``**kwargs`` is among them."""
    if params is None:
        return (), False
    return (tuple(n for n, k, _ in params if k not in (VAR_POSITIONAL, VAR_KEYWORD)),
            any(k == VAR_KEYWORD for _, k, _ in params))


def check_params(params: tuple | None, n: int, supplied, *, label: str, conv: str,
                 what: str = "") -> None:
    """Refuse (exit 2, one line) a function that cannot take ``n`` leading positional arrays
    plus the keywords softcheck ``supplied`` (names): too few positional parameters, or a
    required one softcheck does not pass (named, with how to pass it)."""
    if params is None or any(k == VAR_POSITIONAL for _, k, _ in params):
        return
    pos = [p for p in params if p[1] in (POSITIONAL_ONLY, POSITIONAL)]
    shape = SHAPES.get(n, SHAPES[2])
    head = f"{what}{' ' if what else ''}{label}({', '.join(p[0] for p in params)})"
    if len(pos) < n:
        raise SoftcheckError(f"{head} cannot be called as {shape} under --convention {conv}")
    missing = [name for i, (name, kind, default) in enumerate(params)
               if i >= n and not default and kind != VAR_KEYWORD
               and (name not in supplied or kind == POSITIONAL_ONLY)]
    if missing:
        raise SoftcheckError(
            f"{head} cannot be called as {shape} under --convention {conv}: softcheck passes "
            f"no {', '.join(repr(m) for m in missing)} (give it a default, pass a constant with "
            f"--kwarg {missing[0]}=VALUE, or map a softcheck option onto it with --rename)")


def _forward_order(params: tuple, lead: tuple[str, ...], known: dict, *, label: str) -> tuple:
    """``.apply``'s positional order from ``forward``'s parameters after ``ctx``: the ``lead``
    arrays, then each parameter softcheck knows (``known``: kernel name -> softcheck name) up
    to the first it does not, which must have a default (the rest keep theirs)."""
    order = list(lead)
    for name, _, default in params[len(lead):]:
        if name in known:
            order.append(known[name])
        elif not default:
            raise SoftcheckError(f"TARGET {label}.forward takes {name!r}, which is no softcheck "
                                 "option: name .apply's arguments in order with --args "
                                 f"{','.join(lead)},OPTION,...,name=value (or map it with "
                                 "--rename, or give it with --kwarg)")
        else:
            break
    return tuple(order)


def literal(text: str):
    """A command-line value: a Python literal (``None``, ``0``, ``'mean'``, ``True``), else the
    text itself as a string (``torch_compile``)."""
    import ast

    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def pairs(value, flag: str) -> tuple[tuple[str, object], ...]:
    """``NAME=VALUE`` items (a string, a sequence of them, or a mapping, as batch files give
    them) as ``((name, value), ...)``; a string value is parsed by :func:`literal`."""
    if value is None:
        return ()
    if isinstance(value, dict):
        items = [(str(k), literal(v) if isinstance(v, str) else v) for k, v in value.items()]
    else:
        items = []
        for item in [value] if isinstance(value, str) else value:
            if isinstance(item, tuple) and len(item) == 2:
                items.append(item)
                continue
            name, sep, text = str(item).partition("=")
            if not sep:
                raise SoftcheckError(f"{flag} {item!r}: write NAME=VALUE (VALUE a Python "
                                     "literal such as None, 0, 'mean', or a bare word)")
            items.append((name.strip(), literal(text)))
    for name, _ in items:
        if not str(name).isidentifier():
            raise SoftcheckError(f"{flag} {name!r}: NAME must be a Python identifier")
    return tuple(items)


def label_of(fn) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def check_call(params, n: int, st, *, label: str, conv: str, what: str = "",
               free: tuple = (), options=None) -> None:
    """``params`` (signatures.describe's data) can take ``n`` leading arrays and what
    softcheck passes by keyword; every ``--kwarg`` is a keyword it declares."""
    given = st.supplied(*([options] if options else [])) | set(free)
    check_params(params, n, given, label=label, conv=conv, what=what)
    declared, varkw = names(params)
    for k, _ in st.kwargs:
        if params is not None and k not in declared and not varkw:
            raise SoftcheckError(f"--kwarg {k}: {what}{' ' if what else ''}{label} takes no "
                                 f"keyword {k!r}")


def check_module(fn, st) -> None:
    """``fn`` a Module described (``described.Described``): a class's ``__init__`` (its own
    signature) takes the options (none required but those softcheck passes) and its
    ``forward(self, logits, target)`` nothing else required; an instance's ``forward`` (its
    own signature) takes the arrays and the options."""
    label = label_of(fn)
    if fn.module == "class":
        check_call(describe(fn), 0, st, label=label, conv="loss")
        fwd = None if fn.forward is None else describe(fn.forward, skip=1)
        check_params(fwd, 2, set(), label=f"{label}.forward", conv="loss")
    else:
        check_call(describe(fn), 2, st, label=f"{label}.forward", conv="loss")


def apply_order(fn, st, lead: tuple) -> tuple[str, ...]:
    """``.apply``'s positional order: ``--args``, else ``forward``'s parameter names (after
    ctx: the ``lead`` arrays, then softcheck options, renamed ones and --kwarg constants
    included, up to the first other name, which must have a default)."""
    known = {st.kernel_name(o): o for o in KERNEL_OPTIONS}
    known.update({k: k for k, _ in st.kwargs})
    if st.fused:
        known.update(bias="bias", shift="shift")
    if st.args:
        if tuple(st.args[:len(lead)]) != lead:
            raise SoftcheckError(f"--args must begin with {','.join(lead)} (the arrays, in "
                                 f"that order); got {','.join(st.args)}")
        for a in st.args[len(lead):]:
            if "=" not in a and a not in known and a not in KERNEL_OPTIONS:
                raise SoftcheckError(f"--args: {a!r} is neither {', '.join(lead)}, a softcheck "
                                     f"option ({', '.join(KERNEL_OPTIONS)}), a --kwarg nor "
                                     "name=value")
        return tuple(known.get(a, a) for a in st.args)
    autograd = getattr(fn, "autograd", False) or is_autograd_function(fn)
    fwd = getattr(fn, "forward", None) if autograd else fn
    params = (describe(fwd, skip=1 if autograd else 0) if fwd is not None else None) or ()
    return _forward_order(params, lead, known, label=label_of(fn))
