"""Import JAX lazily (``softcheck --help`` must not pay for it), in float64, with a disk cache."""

from __future__ import annotations

import contextlib
import functools
import os
import sys


def configure(devices: int | None) -> None:
    """Ask for ``devices`` XLA host (CPU) devices (``--devices``).  Must happen before JAX
    starts; a GPU/TPU backend ignores it."""
    if not devices:
        return

    flag = f"--xla_force_host_platform_device_count={int(devices)}"
    if "jax" in sys.modules and _import.cache_info().currsize:
        import jax

        have = len(jax.devices())
        if have != devices and jax.default_backend() == "cpu":
            from ..spec import SoftcheckError

            raise SoftcheckError(f"--devices {devices}: JAX already started with {have} "
                                 f"device(s) in this process; set XLA_FLAGS={flag} before "
                                 "importing JAX")
        return
    os.environ["XLA_FLAGS"] = host_devices(devices, os.environ.get("XLA_FLAGS", ""))


def warm(devices: int | None) -> None:
    """Set the devices up and import JAX now (``check`` does it while the TARGET's worker
    starts: ~0.3 s that were spent waiting)."""
    configure(devices)
    _import()


def host_devices(devices: int, xla_flags: str = "") -> str:
    """``xla_flags`` (an ``XLA_FLAGS`` value) asking for ``devices`` XLA host devices instead
    of any count it already names (here, and for the worker of ``--tensor-parallel`` JAX)."""
    flags = [f for f in xla_flags.split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    return " ".join(flags + [f"--xla_force_host_platform_device_count={int(devices)}"])


def load():
    """Return ``(jax, jax.numpy)`` with x64 on (every time: a caller may have restored it,
    see ``x64_restored``) and JAX's persistent compilation cache set."""
    jax, jnp = _import()
    if not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    return jax, jnp


@functools.cache
def _import():
    """Import JAX once, with x64 on and JAX's persistent compilation cache set.

    The cache (``$SOFTCHECK_CACHE_DIR`` or ``~/.cache/softcheck/jax``) makes a second run skip
    XLA compilation entirely; set ``SOFTCHECK_CACHE_DIR=''`` to turn it off.
    """
    import jax

    jax.config.update("jax_enable_x64", True)
    cache = os.environ.get("SOFTCHECK_CACHE_DIR", os.path.expanduser("~/.cache/softcheck/jax"))
    if cache:
        try:
            os.makedirs(cache, exist_ok=True)
            jax.config.update("jax_compilation_cache_dir", cache)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        except OSError:
            pass
    import jax.numpy as jnp

    return jax, jnp


def backend_info() -> dict:
    jax, _ = load()
    devs = jax.devices()
    return {"jax": jax.__version__, "backend": jax.default_backend(), "devices": len(devs),
            "device_kind": devs[0].device_kind if devs else None}


@contextlib.contextmanager
def x64_restored():
    """Leave JAX's float64 flag as the caller had it (softcheck turns it on for its float64
    references): a ``softcheck.check`` inside a pytest session must not change later tests."""
    jax = sys.modules.get("jax")
    if jax is not None:
        before = bool(jax.config.jax_enable_x64)
    else:                                   # JAX's default when it is imported later
        before = os.environ.get("JAX_ENABLE_X64", "").lower() in ("1", "true", "yes", "on")
    try:
        yield
    finally:
        jax = sys.modules.get("jax")
        if jax is not None and bool(jax.config.jax_enable_x64) != bool(before):
            jax.config.update("jax_enable_x64", bool(before))
