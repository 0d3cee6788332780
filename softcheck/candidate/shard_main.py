"""The JAX tensor-parallel worker (``python -m softcheck.candidate.shard_main``): ONE process
hosting all W XLA host devices (its parent set ``XLA_FLAGS`` before JAX started), calling the
TARGET inside ``jax.shard_map`` (``sharding.py``); it dies or hangs as a whole."""

from __future__ import annotations

import dataclasses
import functools

from ..spec import SoftcheckError
from . import sharding
from .worker_main import serve_call, serve_convention, serve_forever, start


def main() -> None:
    sock, shm, hello, cand = start(hvp=False)
    st = cand.settings
    state: dict = {}

    def handle(req: dict) -> dict:
        if "mesh" not in state:
            try:
                state["mesh"] = sharding.mesh(st.tensor_parallel)
            except SoftcheckError as e:
                return {"error": str(e)}
        mesh = state["mesh"]
        if req["op"] == "convention":
            return serve_convention(cand, shm, req,
                                    runner=functools.partial(sharding.run, mesh=mesh))
        if req["op"] == "call":       # grad: each device's columns (the judge knows them)
            fn = sharding.grad_fn(cand.fn, st, mesh)
            return serve_call(dataclasses.replace(cand, fn=fn), shm, req)
        return {"error": "--tensor-parallel checks first-order gradients only"}

    serve_forever(sock, shm, handle)


if __name__ == "__main__":
    main()
