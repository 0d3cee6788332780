"""One tensor-parallel rank (``python -m softcheck.candidate.rank_main``): a worker process that
joins a torch.distributed group and calls the TARGET on its shard with ``group=``."""

from __future__ import annotations

import dataclasses
import faulthandler
import functools
import os
import signal
import socket
import sys

from .call import signature_of
from .load import load
from .worker_main import _flush, _prctl, _recv, _send, _Shm, serve_call


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
    ctl_fd, shm_fd, parent = (int(x) for x in os.environ["SOFTCHECK_WORKER_FDS"].split(","))
    _prctl(1, signal.SIGKILL)                     # PR_SET_PDEATHSIG: die with the parent
    if os.getppid() != parent:
        os._exit(3)
    faulthandler.enable()
    try:
        sys.stdout.reconfigure(line_buffering=True)
    except (AttributeError, ValueError):
        pass
    sock = socket.socket(fileno=ctl_fd)
    shm = _Shm(shm_fd)
    hello = _recv(sock)
    if hello is None:
        os._exit(0)
    try:
        cand = load(hello["source"], label=hello["label"], settings=hello.get("settings"))
    except BaseException as e:  # noqa: BLE001
        msg = str(e) if isinstance(e, ValueError) else \
            f"importing TARGET {hello['source']} raised {type(e).__name__}"
        _flush()
        _send(sock, {"load_error": msg})
        os._exit(0)
    params, varkw = signature_of(cand.fn)
    _flush()
    # ready before joining: the parent starts every rank, then the group forms
    _send(sock, {"ready": True, "params": [str(p) for p in params], "varkw": bool(varkw)})
    group, join_error = None, None
    while True:
        req = _recv(sock)
        if req is None:
            os._exit(0)
        _flush()
        os.ftruncate(1, 0)
        os.lseek(1, 0, os.SEEK_SET)
        try:
            if group is None and join_error is None:
                try:
                    group = _join(hello)
                    cand = dataclasses.replace(cand, fn=functools.partial(cand.fn, group=group))
                except Exception as e:  # noqa: BLE001
                    join_error = f"joining the process group failed: {type(e).__name__}: {e}"
            if join_error:
                reply = {"error": join_error}
            else:
                shm.ensure(req["shm_size"])
                reply = serve_call(cand, shm, req)
        except (KeyboardInterrupt, SystemExit) as e:
            reply = {"error": f"raised {type(e).__name__}"}
        except BaseException as e:  # noqa: BLE001
            reply = {"error": f"judging its result failed: {type(e).__name__}"}
        _flush()
        reply["seq"] = req["seq"]
        _send(sock, reply)


if __name__ == "__main__":
    main()
