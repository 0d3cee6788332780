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
    sock, hello, cand = start(hvp=False)
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
            return serve_convention(cand, req,
                                    runner=functools.partial(sharding.run, mesh=mesh))
        if req["op"] == "call":                   # grad: each device's columns, no loss
            fn = sharding.grad_fn(cand.fn, st, mesh)
            reply = serve_call(dataclasses.replace(cand, fn=fn), req)
            cols, width = sharding.layout(req["shape"][1], st.tensor_parallel, st.split)
            return {**reply, "ranks": [(r, a, b, None, width) for r, (a, b) in enumerate(cols)]}
        return {"error": "--tensor-parallel checks first-order gradients only"}

    serve_forever(sock, handle)


if __name__ == "__main__":
    main()
