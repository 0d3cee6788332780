"""``--rank-setup``: what each tensor-parallel rank runs once, after joining its group and
before the TARGET's first call (in the rank's own process: the candidate's side).

``FILE.py:fn`` is called as ``fn(rank, world_size, group)``; the built-in ``megatron``
initialises megatron-core's ``parallel_state`` with tensor-parallel size W, so that
``vocab_parallel_cross_entropy`` (which takes no group) finds softcheck's W ranks as its
tensor-parallel group.  Whatever the setup raises fails the case with its reason.
"""

from __future__ import annotations


def run(spec: str | None, rank: int, world: int, group) -> None:
    if spec is None:
        return
    if spec == "megatron":
        from megatron.core import parallel_state

        parallel_state.initialize_model_parallel(tensor_model_parallel_size=world)
        return
    from .load import _load

    _load(spec, spec)(rank, world, group)


def takes_group(fn, name: str) -> bool:
    """Whether ``fn`` takes the group keyword ``name`` (declared, or ``**kwargs``); a kernel
    that takes none (megatron-core's) is not given it."""
    import inspect

    try:
        ps = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return name in ps or any(p.kind is p.VAR_KEYWORD for p in ps.values())
