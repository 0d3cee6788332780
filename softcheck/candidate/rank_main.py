"""One tensor-parallel rank (``python -m softcheck.candidate.rank_main``): a worker process that
joins a torch.distributed group and calls the TARGET on its shard with ``group=``."""

from __future__ import annotations

import dataclasses
import functools

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
    sock, hello, cand = start(hvp=False)
    state: dict = {"cand": None, "error": None}

    def handle(req: dict) -> dict:
        if state["cand"] is None and state["error"] is None:
            try:
                group = _join(hello)
                state["cand"] = dataclasses.replace(cand, fn=functools.partial(cand.fn,
                                                                               group=group))
            except Exception as e:  # noqa: BLE001
                state["error"] = f"joining the process group failed: {type(e).__name__}: {e}"
        if state["error"]:
            return {"error": state["error"]}
        return serve_call(state["cand"], req)

    serve_forever(sock, handle)


if __name__ == "__main__":
    main()
