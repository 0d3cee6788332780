"""Load a TARGET (``path/to/file.py:fn`` or ``package.module:fn``) into a :class:`Candidate`."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import os
import sys
import zlib
from collections.abc import Callable

from ..spec import SoftcheckError
from .call import Candidate
from .conventions import Settings, resolve
from .described import describe
from .settings import RANK_SETUPS
from .sharding import check as check_sharded


def load(target: str, *, hvp: str | None = None, label: str | None = None,
         settings: Settings | None = None, base: str | None = None,
         in_process: bool = False, meanwhile: Callable[[], object] | None = None
         ) -> Candidate:
    """``path/to/file.py:function`` or ``package.module:function`` → a Candidate (exit 2 if
    not); ``hvp`` another TARGET for its Hessian-vector product; ``label`` its report name;
    ``settings`` how it is called (validated against it here: exit 2 if it cannot be);
    ``base`` the folder a file ``settings.backward`` is relative to.

    The TARGET is imported in a worker process, never here: the worker replies what the
    validation needs as plain data (``described.Described``), and the Candidate holds that
    description in place of the function.  Only ``in_process=True`` (``--in-process``, an
    explicit choice) imports it into this process.  ``meanwhile`` runs in this process while
    that worker starts (the CLI imports JAX there)."""
    st = settings or Settings()
    if st.backward:
        b = relative_to(st.backward, base) if base else st.backward
        st = dataclasses.replace(st, backward=located(b))   # absolute: a worker reloads it
    if st.rank_setup and st.rank_setup not in RANK_SETUPS:  # (each rank loads it)
        r = relative_to(st.rank_setup, base) if base else st.rank_setup
        st = dataclasses.replace(st, rank_setup=located(r))
    source = located(target)
    hvp_source = located(hvp) if hvp else None
    probe = None
    if in_process:
        fn = _load(source, target)
        h = _load(hvp_source, hvp) if hvp_source else None
        bwd = _load(st.backward, st.backward) if st.backward else None
    else:
        probe = describing_worker(source, hvp_source, label or target, st, meanwhile)
        fn, h, bwd = probe.described, probe.described_hvp, probe.described_backward
    try:
        if st.tensor_parallel > 1 and (st.framework or describe(fn).framework) == "jax":
            check_sharded(fn, st)            # (before resolve's --device check)
        st = resolve(fn, st, bwd=bwd)
    except SoftcheckError as e:
        if probe is not None:
            probe.close()
        raise SoftcheckError(f"TARGET {target}: {e}") from None
    return Candidate(fn, label or target, hvp=h, source=source, hvp_source=hvp_source,
                     settings=st, backward=bwd, probe=probe)


def describing_worker(source: str, hvp_source: str | None, label: str, st: Settings,
                      meanwhile: Callable[[], object] | None = None):
    """A worker process that imported the TARGET (and its hvp and backward) and described
    them (``.described``, ``.described_hvp``, ``.described_backward``: ``Described`` or None);
    it goes on to serve the TARGET's calls when they need no other start (``isolated``).  A
    TARGET that cannot be imported, or whose process dies or lies while loading, is one line."""
    from .worker import IsolatedCandidate

    return IsolatedCandidate(source, hvp_source, label, x64=True, settings=st,
                             meanwhile=meanwhile)


def located(target: str) -> str:
    """The TARGET checked without importing it (the colon, the file's existence) and made
    absolute (a file TARGET's path): what a worker process loads."""
    if ":" not in target:
        raise SoftcheckError(f"TARGET {target!r} has no colon: write path/to/file.py:function "
                             "or package.module:function")
    where, name = target.rsplit(":", 1)
    if not where or not name:
        raise SoftcheckError(f"TARGET {target!r}: both the module and the function name are needed")
    if not _is_path(where):
        return target
    if not os.path.isfile(os.path.abspath(where)):
        raise SoftcheckError(f"TARGET file {where} does not exist")
    return f"{os.path.abspath(where)}:{name}"


def load_in_worker(hello: dict, *, hvp: bool = True) -> Candidate:
    """The worker's side (``worker_main.start``): the TARGET, its hvp and backward imported
    in this process, with the settings the judge resolved (nothing is resolved here)."""
    st = hello.get("settings") or Settings()
    fn = _load(hello["source"], hello.get("label") or hello["source"])
    h = _load(hello["hvp_source"], hello["hvp_source"]) if hvp and hello.get("hvp_source") \
        else None
    bwd = _load(st.backward, st.backward) if st.backward else None
    return Candidate(fn, hello.get("label") or hello["source"], hvp=h, source=hello["source"],
                     hvp_source=hello.get("hvp_source"), settings=st, backward=bwd)


def _load(target: str, shown: str):
    """Import ``target`` (checked by ``located``) in this process: its function."""
    where, name = located(target).rsplit(":", 1)
    with contextlib.redirect_stdout(sys.stderr):
        module = _import_file(where) if _is_path(where) else _import_module(where)
    fn = getattr(module, name, None)
    if fn is None:
        raise SoftcheckError(f"TARGET {shown}: {where} has no function named {name!r}")
    if not callable(fn) and not hasattr(fn, "apply"):
        raise SoftcheckError(f"TARGET {shown}: {name!r} is a {type(fn).__name__}, not callable")
    return fn


def relative_to(target: str, base: str) -> str:
    """A file TARGET relative to folder ``base`` (module TARGETs and absolute paths as given)."""
    where = target.rsplit(":", 1)[0]
    if ":" in target and _is_path(where) and not os.path.isabs(target):
        return os.path.join(base, target)
    return target


def _is_path(where: str) -> bool:
    return where.endswith(".py") or "/" in where or os.sep in where


def _import_file(where: str):
    path = os.path.abspath(where)
    if not os.path.isfile(path):
        raise SoftcheckError(f"TARGET file {where} does not exist")
    modname = f"_softcheck_candidate_{zlib.crc32(path.encode())}"
    known = sys.modules.get(modname)
    if known is not None and getattr(known, "__file__", None) == path:
        return known        # one module per file (the TARGET, its backward, --rank-setup)
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise SoftcheckError(f"TARGET file {where} cannot be imported (not a Python file?)")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(path))
    try:
        sys.modules[modname] = module
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise SoftcheckError(f"TARGET file {where} has a syntax error at line {e.lineno}: {e.msg}") from e
    except Exception as e:  # noqa: BLE001
        raise SoftcheckError(f"importing TARGET file {where} failed: {type(e).__name__}: {e}") from e
    finally:
        sys.path.remove(os.path.dirname(path))
    return module


def _import_module(where: str):
    """As ``python -m`` would: the current directory first on the path while importing."""
    added = os.getcwd() not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as e:
        raise SoftcheckError(f"TARGET module {where} cannot be imported: {e}") from e
    except SyntaxError as e:
        raise SoftcheckError(f"TARGET module {where} has a syntax error at line {e.lineno}: {e.msg}") from e
    except Exception as e:  # noqa: BLE001
        raise SoftcheckError(f"importing TARGET module {where} failed: {type(e).__name__}: {e}") from e
    finally:
        if added:
            sys.path.remove(os.getcwd())


def source_of(fn) -> str | None:
    """A TARGET that re-imports ``fn`` in another process (``module:name`` or
    ``path.py:name``), or None for what cannot be (a lambda, a closure, a method, a function
    of the ``__main__`` script, which re-importing would run again)."""
    name, module = getattr(fn, "__qualname__", None), getattr(fn, "__module__", None)
    if not module or module == "__main__":
        return None
    mod = sys.modules.get(module)
    if mod is None:
        return None
    if not (name and name.isidentifier() and getattr(mod, name, None) is fn):
        # a wrapped function bound at module level under another name (jax.custom_vjp of a
        # closure, a decorated function): the module's own name for it
        name = next((k for k, v in list(vars(mod).items()) if v is fn and k.isidentifier()),
                    None)
        if name is None:
            return None
    path = getattr(mod, "__file__", None)
    if _importable_by_name(module, path):
        return f"{module}:{name}"
    return f"{os.path.abspath(path)}:{name}" if path and path.endswith(".py") else None


def _importable_by_name(module: str, path: str | None) -> bool:
    """Whether a fresh process (with this one's sys.path) imports ``module`` from ``path``:
    found by the path finder, not just in ``sys.modules`` (a module loaded from a file
    under a made-up name is not)."""
    import importlib.machinery

    top = module.split(".")[0]
    try:
        spec = importlib.machinery.PathFinder.find_spec(top, sys.path)
    except (ImportError, ValueError):
        return False
    if spec is None or not path:
        return False
    if top != module:
        return True                   # a package on the path: its submodule resolves inside
    try:
        return bool(spec.origin) and os.path.samefile(spec.origin, path)
    except OSError:
        return False


def isolated(cand: Candidate, *, x64: bool, memory_limit: int | None = None):
    """``cand`` in its own worker process when it can be reloaded there; else ``cand`` itself
    (with ``in_process`` telling why)."""
    from .worker import IsolatedCandidate

    if cand.source is None or (cand.hvp is not None and cand.hvp_source is None):
        return None
    if cand.backward is not None and not cand.settings.backward:
        return None
    probe = cand.probe
    if probe is not None:              # the worker that described it, if it can serve
        if probe.serve_as(cand.source, cand.hvp_source, cand.settings, x64=x64,
                          memory_limit=memory_limit):
            return probe
        probe.close()
    return IsolatedCandidate(cand.source, cand.hvp_source, cand.label, x64=x64,
                             settings=cand.settings, memory_limit=memory_limit)
