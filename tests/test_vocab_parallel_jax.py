"""#20: JAX vocab-parallel cross-entropy checked inside jax.shard_map over W host devices.

Each test runs `softcheck check --tensor-parallel W --framework jax` in a real subprocess on the
Megatron-style JAX example (scripts/examples/jax_vocab_parallel_ce.py), asserts the verdict, the
rank and the pattern named, the report valid against the schema, and that no process outlives
the run.  torch is not needed (one test hides it)."""

import os
import subprocess
import sys
import time
import uuid

import pytest
from reports import leftover_processes, load_report

EXAMPLE = "scripts/examples/jax_vocab_parallel_ce.py"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--batch", "6", "--dtype", "float32", "--regime", "normal", "--repeat", "1"]


def softcheck(*args, pythonpath=(), run_id=None):
    env = {**os.environ, "VPJ_RUN": run_id or uuid.uuid4().hex,
           "PYTHONPATH": os.pathsep.join([*pythonpath, ROOT])}
    return subprocess.run([sys.executable, "-m", "softcheck", "check", *args],
                          capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)


def check(tmp_path, fn, *extra, target=None, convention="loss", pythonpath=()):
    """softcheck check TARGET --framework jax --convention loss ...: (returncode, report, r)."""
    run_id = uuid.uuid4().hex
    out = tmp_path / "out.json"
    r = softcheck(target or f"{EXAMPLE}:{fn}", "--framework", "jax", "--convention", convention,
                  *SMALL, "--json", str(out), *extra, pythonpath=pythonpath, run_id=run_id)
    assert "Traceback" not in r.stderr, r.stderr
    time.sleep(0.2)
    assert leftover_processes(f"VPJ_RUN={run_id}") == [], "the worker outlived the run"
    return r.returncode, load_report(out.read_text()), r


def rank_errors(case) -> dict:
    return {c["pair"][0]: c for c in case["comparisons"] if "[rank" in c["pair"][0]}


def agreement(case) -> dict:
    return [i for i in case["invariants"] if i["name"] == "ranks_agree_on_loss"][0]


@pytest.mark.slow  # 11 s measured (2 cores, load ~1): CI runs the rest
def test_correct_example_passes_on_2_devices_uneven_with_every_option(tmp_path):
    code, rep, r = check(tmp_path, "vocab_parallel_ce", "--tensor-parallel", "2", "--split",
                         "uneven", "--classes", "37", "--label-smoothing", "0.1",
                         "--smoothing-convention", "others", "--ignore-index", "3",
                         "--weight", "random", "--reduction", "mean,none")
    assert code == 0, r.stdout + r.stderr
    assert len(rep["cases"]) == 2
    for case in rep["cases"]:
        assert case["passed"]
        assert set(rank_errors(case)) == {"candidate[rank 0]", "candidate[rank 1]"}
        assert agreement(case)["passed"]
    proc = list(rep["environment"]["candidate_process"].values())[0]
    assert (proc["tensor_parallel"], proc["backend"], proc["split"]) == (2, "shard_map", "uneven")


@pytest.mark.slow  # 8 s measured (2 cores, load ~1): CI runs the rest
def test_smoothing_with_the_shards_vocabulary_fails_naming_the_pattern_and_ranks(tmp_path):
    code, rep, r = check(tmp_path, "smoothing_shard_v", "--tensor-parallel", "2",
                         "--classes", "64", "--label-smoothing", "0.2")
    assert code == 1
    case = rep["cases"][0]
    assert all(not c["passed"] for c in rank_errors(case).values())
    assert agreement(case)["passed"]              # the bug is the same on every device
    assert any("shard's vocabulary size on ranks 0, 1" in h and "#737" in h
               for h in case["diagnosis"]), case["diagnosis"]


@pytest.mark.slow  # 8 s measured (2 cores, load ~1): CI runs the rest
def test_max_not_all_reduced_fails_with_the_devices_disagreeing_on_the_loss(tmp_path):
    code, rep, r = check(tmp_path, "local_max", "--tensor-parallel", "2", "--classes", "64")
    assert code == 1
    agree = agreement(rep["cases"][0])
    assert not agree["passed"] and "rank 1 differs from rank 0" in agree["detail"]
    assert any("not all-reduced" in h for h in rep["cases"][0]["diagnosis"])


@pytest.mark.slow  # 10 s measured (2 cores, load ~1): CI runs the rest
def test_grad_convention_each_device_returns_its_shards_gradient(tmp_path):
    code, rep, r = check(tmp_path, "vocab_parallel_grad", "--tensor-parallel", "2",
                         "--split", "uneven", "--classes", "21", "--ignore-index", "2",
                         "--reduction", "mean,none", convention="grad")
    assert code == 0, r.stdout + r.stderr
    for case in rep["cases"]:
        assert len(rank_errors(case)) == 2 and case["passed"]


@pytest.mark.slow  # 8 s measured (2 cores, load ~1): CI runs the rest
def test_without_torch_the_jax_path_still_runs(tmp_path):
    fake = tmp_path / "notorch"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text("raise ImportError('no torch here')\n")
    code, rep, r = check(tmp_path, "vocab_parallel_ce", "--tensor-parallel", "2",
                         "--classes", "8", pythonpath=[str(fake)])
    assert code == 0, r.stdout + r.stderr


@pytest.mark.slow  # 6 s measured (2 cores, load ~1): CI runs the rest
def test_the_worker_killed_mid_call_fails_the_case_and_leaves_no_process(tmp_path):
    code, rep, r = check(tmp_path, "crash", "--tensor-parallel", "2", "--classes", "8",
                         "--timeout", "60")
    assert code == 1
    err = rep["cases"][0]["error"]
    assert "shard_map worker (hosting all 2 devices)" in err and "SIGKILL" in err, err


@pytest.mark.parametrize("extra,words", [
    (["--device", "cuda"], "--device cuda cannot be combined with --tensor-parallel"),
    (["--backend", "nccl"], "--backend nccl cannot be combined with --tensor-parallel"),
    (["--split", "uneven", "--classes", "5", "--tensor-parallel", "4"],
     "device 3 would hold none of them"),
    (["--classes", "7"], "--split even needs the classes (7) divisible"),
    (["--convention", "inplace"], "--tensor-parallel checks --convention loss or grad"),
])
@pytest.mark.slow  # 13 s measured (2 cores, load ~1): CI runs the rest
def test_bad_combinations_exit_2_in_one_line(extra, words):
    r = softcheck(f"{EXAMPLE}:vocab_parallel_ce", "--framework", "jax", "--convention", "loss",
                  "--tensor-parallel", "2", "--classes", "8", *extra)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("softcheck: error:"), r.stderr
    assert words in lines[0]


def test_a_target_without_axis_name_exits_2(tmp_path):
    mod = tmp_path / "noaxis.py"
    mod.write_text("def ce(logits, target):\n    return logits.sum()\n")
    r = softcheck(f"{mod}:ce", "--framework", "jax", "--convention", "loss",
                  "--tensor-parallel", "2", "--classes", "8")
    assert r.returncode == 2
    assert "takes no axis_name" in r.stderr and "jax.shard_map" in r.stderr


def test_layout_even_and_padded_uneven():
    from softcheck.candidate.sharding import layout

    assert layout(8, 4) == ([(0, 2), (2, 4), (4, 6), (6, 8)], 2)
    assert layout(37, 4, "uneven") == ([(0, 10), (10, 20), (20, 30), (30, 37)], 10)
    for v in range(4, 40):
        try:
            cols, s = layout(v, 4, "uneven")
        except ValueError:
            assert 3 * -(-v // 4) >= v          # only when the last device would be empty
            continue
        assert cols[0][0] == 0 and cols[-1][1] == v and all(b - a <= s for a, b in cols)
        assert all(a == r * s for r, (a, _) in enumerate(cols))


@pytest.mark.slow
@pytest.mark.parametrize("fn,passes", [("vocab_parallel_ce", True), ("smoothing_shard_v", False),
                                       ("local_max", False)])
def test_four_devices_every_loss_option(tmp_path, fn, passes):
    code, rep, r = check(tmp_path, fn, "--tensor-parallel", "4", "--classes", "64",
                         "--label-smoothing", "0.1", "--smoothing-convention", "uniform",
                         "--ignore-index", "5", "--reduction", "mean,sum,none",
                         "--regime", "normal,all-ignored")
    assert (code == 0) == passes, r.stdout
    for case in rep["cases"]:
        assert len(rank_errors(case)) == 4
        if case["params"]["regime"] == "all-ignored":     # no row counts: nothing to get wrong
            assert case["passed"]
            continue
        assert case["passed"] == passes
        if not passes:
            named = " ".join(case["diagnosis"])
            assert ("#737" in named) if fn == "smoothing_shard_v" else ("not all-reduced" in named)
