"""One tensor-parallel rank (``python -m softcheck.candidate.rank_main``): a worker process that
joins a torch.distributed group and calls the TARGET on its shard with ``group=``."""

from __future__ import annotations

import dataclasses
import functools

from . import rank_setup
from .worker_main import serve_call, serve_forever, start


def _join(hello: dict):
    """``init_process_group`` on the loopback rendezvous the parent picked: the group."""
    import torch
    import torch.distributed as dist

    if hello["backend"] == "nccl":                # one GPU per rank (wrapping if fewer)
        torch.cuda.set_device(hello["rank"] % max(1, torch.cuda.device_count()))
    dist.init_process_group(hello["backend"], rank=hello["rank"],
                            world_size=hello["world"], init_method=hello["init"])
    return dist.group.WORLD


def main() -> None:
    # ready before joining: the parent starts every rank, then the group forms on the first call
    sock, shm, hello, cand = start(hvp=False)
    state: dict = {"cand": None, "error": None}

    def handle(req: dict) -> dict:
        if state["cand"] is None and state["error"] is None:
            try:
                group = _join(hello)
                st = cand.settings
                rank_setup.run(st.rank_setup, hello["rank"], hello["world"], group)
                name = st.kernel_name("group")          # --rename group=process_group
                fn = functools.partial(cand.fn, **{name: group}) \
                    if rank_setup.takes_group(cand.fn, name) else cand.fn
                state["cand"] = dataclasses.replace(cand, fn=fn)
            except Exception as e:  # noqa: BLE001
                state["error"] = (f"joining the process group (or --rank-setup) failed: "
                                  f"{type(e).__name__}: {e}")
        if state["error"]:
            return {"error": state["error"]}
        return serve_call(state["cand"], shm, req)

    serve_forever(sock, shm, handle)


if __name__ == "__main__":
    main()
