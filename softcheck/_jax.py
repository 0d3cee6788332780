"""Import JAX lazily (``softcheck --help`` must not pay for it), in float64, with a disk cache."""

from __future__ import annotations

import functools
import os


@functools.cache
def load():
    """Return ``(jax, jax.numpy)`` with x64 on and JAX's persistent compilation cache set.

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
