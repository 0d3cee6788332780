"""Vocab-parallel kernels called as the shipped ones are (issue 27): the group under another
keyword (flash-attn's ``process_group``, TE's ``dist_process_group``), or no group at all but
state a per-rank setup prepared (megatron-core's ``parallel_state``)."""

import importlib.util
import os

import torch  # noqa: F401  (the framework: these kernels take torch tensors)

_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts",
                     "examples", "vocab_parallel_ce.py")
_spec = importlib.util.spec_from_file_location("_softcheck_vp_example", _path)
_vp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_vp)

#: what setup() recorded in this rank: (rank, world_size, group)
STATE = {}


def flash_style(logits, labels, process_group=None, label_smoothing=0.0, ignore_index=-100,
                reduction="mean"):
    """flash-attn's keyword: the group is ``process_group`` (required here: no default)."""
    if process_group is None:
        raise ValueError("process_group is None: the group was not passed under its name")
    return _vp.vocab_parallel_ce(logits, labels, group=process_group,
                                 label_smoothing=label_smoothing, ignore_index=ignore_index,
                                 reduction=reduction)


def setup(rank, world_size, group):
    """A --rank-setup: records the rank's group, as megatron's initialize_model_parallel."""
    STATE.update(rank=rank, world=world_size, group=group)


def megatron_style(logits, target, label_smoothing=0.0, reduction="mean"):
    """megatron-core's shape of call: no group keyword; the group comes from per-rank state."""
    if "group" not in STATE:
        raise RuntimeError("the tensor-parallel state is not initialised (no --rank-setup)")
    return _vp.vocab_parallel_ce(logits, target, group=STATE["group"],
                                 label_smoothing=label_smoothing, reduction=reduction)


def megatron_style_shard_smoothing(logits, target, label_smoothing=0.0, reduction="mean"):
    """Megatron-LM #737: smoothing over the shard's own vocabulary."""
    if "group" not in STATE:
        raise RuntimeError("the tensor-parallel state is not initialised (no --rank-setup)")
    return _vp.smoothing_shard_v(logits, target, group=STATE["group"],
                                 label_smoothing=label_smoothing, reduction=reduction)
