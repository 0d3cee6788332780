"""#26 family 4, sealed memory: the candidate can never change a byte the judge treats as
input, nor its outputs once the judge reads them, and resizing a memory file never kills the
judge.  Real `softcheck check` runs on tests/candidates/memory_attacks.py (each attack's
gradient is wrong unless the attack works), then arena.py's checks one by one."""

import json
import mmap
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from reports import load_report

from softcheck.candidate import arena
from softcheck.candidate.arena import ArenaError

HERE = os.path.dirname(os.path.abspath(__file__))
SMALL = ["--classes", "5", "--batch", "3", "--dtype", "float64", "--regime", "normal"]
#: the smallest case that streams (engine/stream.STREAM_ELEMENTS logits): the logits are
#: drawn into a memory file the worker gets
STREAMED = ["--classes", "131072", "--batch", "64", "--dtype", "float32", "--regime",
            "normal"]


def _check(tmp_path, attack: str, size):
    out = tmp_path / "out.json"
    r = subprocess.run([sys.executable, "-m", "softcheck", "check",
                        os.path.join(HERE, "candidates", "memory_attacks.py") + ":attack",
                        *size, "--json", str(out)], capture_output=True, text=True,
                       env={**os.environ, "ATTACK": attack}, timeout=300, cwd=tmp_path)
    assert r.returncode == 1, (r.returncode, r.stdout + r.stderr)
    report = load_report(out.read_text())
    (case,) = report["cases"]
    assert not report["passed"] and not case["passed"]
    return case


def test_rolling_the_shared_logits_does_not_move_the_judges_reference(tmp_path):
    """The streamed logits were drawn into a memfd the worker mapped read-write: a candidate
    that rolled them one column (and returned the rolled logits' gradient) passed with exit 0.
    The file is sealed before the worker sees it: the write fails, the gradient is wrong."""
    case = _check(tmp_path, "roll_logits", STREAMED)
    assert case["error"] is None
    assert not case["comparisons"][0]["passed"]


def test_truncating_the_memory_files_is_a_failed_case_not_a_dead_judge(tmp_path):
    """Truncating the shared memfd killed softcheck itself with SIGBUS (exit 135, no report)
    while its first pass read the streamed logits."""
    case = _check(tmp_path, "truncate", STREAMED)
    assert not case["comparisons"][0]["passed"]          # twice the gradient, judged


def test_a_repeat_the_worker_calls_the_same_is_compared_by_the_judge(tmp_path):
    """A streamed case's repeat was compared with the first call in the worker: a candidate
    patching that comparison returned twice the gradient the second time and was found
    deterministic.  Each call is now its own request and the judge compares them."""
    case = _check(tmp_path, "hide_repeat", STREAMED)
    (det,) = [i for i in case["invariants"] if i["name"] == "deterministic"]
    assert not det["passed"]
    assert any("nondeterministic" in n for n in case["notes"]), case["notes"]


@pytest.mark.parametrize("attack,why", [
    ("unsealed_output", "not sealed against writes and resizing"),
    ("short_output", "bytes, not the")])
def test_an_output_file_that_is_not_sealed_or_short_is_a_failed_case(tmp_path, attack, why):
    """A worker (its candidate patching its code) sending its gradient in a file it can still
    write or that is shorter than the gradient: a failed case with the reason, never read."""
    case = _check(tmp_path, attack, SMALL)
    assert why in case["error"], case["error"]
    if attack == "short_output":            # half the file the judge asked for
        held, want = (int(w) for w in re.findall(r"(\d+) bytes", case["error"])[:1] +
                      re.findall(r"the (\d+) expected", case["error"]))
        assert 2 * held == want, case["error"]


# -- arena.py -----------------------------------------------------------------------------
def test_placed_inputs_are_sealed_against_writes_and_resizing():
    a, (d,) = arena.place([np.arange(10.0)])
    try:
        assert arena.seals_of(a.fd) & arena.SEALED == arena.SEALED
        with pytest.raises(PermissionError):
            os.pwrite(a.fd, b"x", 0)
        with pytest.raises(PermissionError):
            os.ftruncate(a.fd, 0)
        with pytest.raises(PermissionError):
            mmap.mmap(a.fd, 80)                       # a writable shared mapping
        with pytest.raises(ArenaError, match="sealed"):
            a.put(np.zeros(1))
        got = arena.SealedInputs(os.dup(a.fd))
        assert np.array_equal(got.fresh(d), np.arange(10.0))
    finally:
        a.close()


def test_a_reserved_region_keeps_its_values_once_sealed_and_writes_stay_private():
    a = arena.Arena()
    off, mm = a.reserve(4 * 1000)
    view = np.frombuffer(mm, np.float32, 1000, 0)
    view[:] = np.arange(1000)
    a.seal()                                   # the writer's mapping made read-only in place
    assert np.array_equal(view, np.arange(1000))
    inputs = arena.SealedInputs(os.dup(a.fd))
    cow = mmap.mmap(inputs.fd, 4000, flags=mmap.MAP_PRIVATE,
                    prot=mmap.PROT_READ | mmap.PROT_WRITE)
    np.frombuffer(cow, np.float32)[:] = -1             # the worker's own pages
    assert np.array_equal(np.frombuffer(os.pread(a.fd, 4000, 0), np.float32), np.arange(1000))
    a.close()


def test_read_sealed_checks_the_seals_the_size_and_the_kind_of_file():
    fd = arena.memfd("t")
    os.ftruncate(fd, 16)
    with pytest.raises(ArenaError, match="not sealed"):
        arena.read_sealed(fd, 16)                  # closes fd
    fd = arena.memfd("t")
    os.ftruncate(fd, 16)
    arena.seal(fd)
    with pytest.raises(ArenaError, match="holds 16 bytes, not the 24"):
        arena.read_sealed(fd, 24)
    with tempfile.TemporaryFile() as f:
        with pytest.raises(ArenaError, match="not a sealable memory file"):
            arena.read_sealed(os.dup(f.fileno()), 0)
    with pytest.raises(ArenaError, match="not sealed"):
        arena.SealedInputs(arena.memfd("t"))


def test_outputs_round_trip_in_their_own_dtypes():
    import ml_dtypes

    g32 = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    g16 = g32.astype(ml_dtypes.bfloat16)
    reply = arena.outputs([g32, g16])
    assert reply["out_dtypes"] == ["float32", "bfloat16"]
    a, b = arena.take_outputs(reply, [(3, 4), (3, 4)])
    assert a.dtype == np.float32 and np.array_equal(a, g32)
    assert b.dtype == g16.dtype and np.array_equal(b, g16)
    assert not a.flags.writeable


@pytest.mark.parametrize("forge,why", [
    (lambda r: {**r, "out_dtypes": ["object"]}, "output dtypes"),
    (lambda r: {**r, "out_dtypes": "float32"}, "output dtypes"),
    (lambda r: {**r, "fds": r["fds"] + [os.dup(r["fds"][0])]}, "2 memory files"),
    (lambda r: {**r, "fds": []}, "0 memory files")])
def test_take_outputs_refuses_a_forged_reply(forge, why):
    reply = forge(arena.outputs([np.zeros((2, 3), np.float32)]))
    with pytest.raises(ArenaError, match=why):
        arena.take_outputs(reply, [(2, 3)])


def test_take_outputs_refuses_a_file_sized_for_other_shapes():
    reply = arena.outputs([np.zeros((2, 3))])
    with pytest.raises(ArenaError, match="holds 48 bytes, not the 64"):
        arena.take_outputs(reply, [(2, 4)])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="memfd, MADV_POPULATE_WRITE")
def test_populate_split_between_threads_faults_in_every_page(monkeypatch):
    """A large range is populated by two threads, each a part: a part left out would be
    faulted in page by page later (the cost populate exists to avoid); shmem counts its
    allocated pages in st_blocks."""
    monkeypatch.setattr(arena, "POPULATE_SPLIT", 4 * mmap.PAGESIZE)
    size = 37 * mmap.PAGESIZE + 123                   # not a whole number of pages or parts
    fd = os.memfd_create("t")
    try:
        os.ftruncate(fd, size)
        mm = mmap.mmap(fd, size)
        assert os.fstat(fd).st_blocks == 0
        arena.populate(mm, 0, size)
        assert os.fstat(fd).st_blocks * 512 >= 37 * mmap.PAGESIZE
        assert not np.frombuffer(mm, np.uint8).any()      # populated, not written
        mm.close()
    finally:
        os.close(fd)


def test_release_knows_the_gradient_written_into_the_logits_pages():
    """An in-place kernel's gradient is its copy-on-write logits (candidate/streamed.py): the
    next call on them is populated at once; a gradient of its own is not (populating would
    copy every page for nothing)."""
    torch = pytest.importorskip("torch")
    from softcheck.candidate.streamed import Release

    mm = mmap.mmap(-1, 8 * 4096)
    z = np.frombuffer(mm, np.float32).reshape(8, 1024)
    rel = Release([mm])
    assert rel.holds(z) and rel.holds(z[2:5]) and rel.holds(torch.from_numpy(z))
    assert not rel.holds(np.zeros((8, 1024), np.float32))
    assert not rel.holds(torch.zeros(8, 1024)) and not rel.holds(z[:, ::2])
    assert not rel.holds(torch.zeros(8, 1024, dtype=torch.bfloat16))    # no numpy dtype
    # a split kernel's backward mapping (made anew each call) is not the logits' pages
    other = mmap.mmap(-1, 8 * 4096)
    w = np.frombuffer(other, np.float32).reshape(8, 1024)
    assert Release([mm, other]).holds(z) and not Release([mm, other]).holds(w)
    del z, w
    mm.close()
    other.close()


def _anonymous_pages(mm) -> int:
    """Pages of ``mm`` that are private copies (/proc/self/pagemap: present, not a file's)."""
    import ctypes
    import struct

    ref = ctypes.c_char.from_buffer(mm)
    base = ctypes.addressof(ref)
    del ref
    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        raw = os.pread(fd, 8 * (len(mm) // 4096), base // 4096 * 8)
    finally:
        os.close(fd)
    flags = struct.unpack(f"{len(raw) // 8}Q", raw)
    return sum(1 for v in flags if (v >> 63) & 1 and not (v >> 61) & 1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pagemap and madvise")
@pytest.mark.parametrize("writes", ["all", "none", "first"])
def test_ahead_populates_only_behind_the_kernels_writes(monkeypatch, writes):
    """A first call's copy-on-write logits are made private a chunk ahead of the kernel's
    writes (candidate/streamed.Ahead): all of them for a kernel writing them in order, none
    for one that only reads them, at most two chunks more than one writes; values untouched."""
    import time

    from softcheck.candidate.streamed import Ahead

    monkeypatch.setattr(Ahead, "CHUNK", 1 << 20)
    size = 16 << 20
    fd = os.memfd_create("logits")
    try:
        os.ftruncate(fd, size)
        sealed = mmap.mmap(fd, size)
        np.frombuffer(sealed, np.float32)[:] = np.arange(size // 4, dtype=np.float32)
        mm = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        z = np.frombuffer(mm, np.float32)
        with Ahead(mm, sealed, 0) as ahead:
            step = (1 << 20) // 4
            for i in range({"all": 16, "none": 16, "first": 1}[writes]):
                if writes != "none":
                    z[i * step:(i + 1) * step] *= -1.0
                else:
                    float(z[i * step:(i + 1) * step].sum())
                time.sleep(0.02)                 # the watcher keeps up (it polls each 1 ms)
            deadline = time.monotonic() + 10       # (or catches up, on a loaded machine)
            goal = {"all": size, "none": 0, "first": 2 << 20}[writes]
            while ahead.populated < goal and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.05)                       # (it would go on here if it went too far)
        chunks = _anonymous_pages(mm) * 4096 // (1 << 20)
        if writes == "all":
            assert ahead.populated == size and chunks == 16
            assert np.array_equal(z, -np.arange(size // 4, dtype=np.float32))
        elif writes == "none":
            assert ahead.populated == 0 and chunks == 0
        else:            # its chunk, and the next made private ahead of a write to come
            assert ahead.populated == 2 << 20 and chunks == 2
        assert np.array_equal(np.frombuffer(sealed, np.float32),
                              np.arange(size // 4, dtype=np.float32))
        del z
        mm.close()
        sealed.close()
    finally:
        os.close(fd)
