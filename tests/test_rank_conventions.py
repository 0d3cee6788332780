"""Issue 27, ranks: the group's keyword renamed (--rename group=process_group, flash-attn),
and --rank-setup FILE.py:fn run once in each rank before the first call (a kernel with no
group keyword, megatron-core's shape, reads what the setup prepared).  Real gloo ranks."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")

R = "tests/candidates/rank_kernels.py"
RANKS = ("--convention", "loss", "--batch", "6", "--dtype", "float32", "--regime", "normal",
         "--repeat", "1", "--tensor-parallel", "2")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "softcheck", "check", *args],
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=os.getcwd()))


@pytest.mark.slow  # 15 s measured (2 cores, load ~1): CI runs the rest
def test_group_keyword_renamed_reaches_the_kernel():
    ok = cli(f"{R}:flash_style", *RANKS, "--rename", "group=process_group")
    assert ok.returncode == 0, ok.stdout[-1500:] + ok.stderr[-1500:]
    unnamed = cli(f"{R}:flash_style", *RANKS)           # the group under softcheck's name
    assert unnamed.returncode == 1 and "process_group is None" in unnamed.stdout


@pytest.mark.slow  # 15 s measured (2 cores, load ~1): CI runs the rest
def test_rank_setup_runs_in_each_rank_before_the_first_call():
    ok = cli(f"{R}:megatron_style", *RANKS, "--rank-setup", f"{R}:setup",
             "--label-smoothing", "0.1")
    assert ok.returncode == 0, ok.stdout[-1500:] + ok.stderr[-1500:]
    bad = cli(f"{R}:megatron_style_shard_smoothing", *RANKS, "--rank-setup", f"{R}:setup",
              "--label-smoothing", "0.1")
    assert bad.returncode == 1, bad.stdout[-1500:] + bad.stderr[-1500:]


def test_rank_setup_needs_ranks_one_line():
    r = cli(f"{R}:megatron_style", "--convention", "loss", "--rank-setup", f"{R}:setup")
    assert r.returncode == 2 and "--rank-setup runs in each" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0
