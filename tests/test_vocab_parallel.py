"""#20: vocab-parallel cross-entropy checked on real torch.distributed ranks (gloo, CPU).

Each test runs `softcheck check --tensor-parallel W` in a real subprocess on the Megatron-style
example (scripts/examples/vocab_parallel_ce.py), asserts the verdict, the rank and the pattern
named, the report valid against the schema, and that no rank outlives the run."""

import os
import subprocess
import sys
import time
import uuid

import pytest
from reports import leftover_processes, load_report

pytest.importorskip("torch")

EXAMPLE = "scripts/examples/vocab_parallel_ce.py"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--batch", "6", "--dtype", "float32", "--regime", "normal", "--repeat", "1"]


def _leftovers(run_id: str) -> list[int]:
    """Processes still carrying this run's id in their environment (all its descendants)."""
    return leftover_processes(f"VP_RUN={run_id}")


def check(tmp_path, fn, *extra, target=None, env_extra=None, expect_report=True):
    """softcheck check TARGET --convention loss --tensor-parallel ...: (returncode, report, r)."""
    run_id = uuid.uuid4().hex
    out = tmp_path / "out.json"
    env = {**os.environ, "VP_RUN": run_id, **(env_extra or {})}
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in (env_extra or os.environ).get(
        "PYTHONPATH", "").split(os.pathsep) if p])
    r = subprocess.run([sys.executable, "-m", "softcheck", "check", target or f"{EXAMPLE}:{fn}",
                        "--convention", "loss", *SMALL, "--json", str(out), *extra],
                       capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert "Traceback" not in r.stderr, r.stderr
    time.sleep(0.2)
    assert _leftovers(run_id) == [], "a rank outlived the run"
    report = load_report(out.read_text()) if expect_report else None
    return r.returncode, report, r


def rank_errors(case) -> dict:
    return {c["pair"][0]: c for c in case["comparisons"] if "[rank" in c["pair"][0]}


@pytest.mark.slow  # 8 s measured (2 cores, load ~1): CI runs the rest
def test_correct_example_passes_on_2_ranks_uneven_with_smoothing_and_ignore_index(tmp_path):
    code, rep, r = check(tmp_path, "vocab_parallel_ce", "--tensor-parallel", "2", "--split",
                         "uneven", "--classes", "37", "--label-smoothing", "0.1",
                         "--smoothing-convention", "others", "--ignore-index", "3",
                         "--reduction", "mean,none", "--regime", "normal,all-ignored")
    assert code == 0, r.stdout + r.stderr
    for case in rep["cases"]:
        assert case["passed"]
        ranks = rank_errors(case)
        assert set(ranks) == {"candidate[rank 0]", "candidate[rank 1]"}
        agree = [i for i in case["invariants"] if i["name"] == "ranks_agree_on_loss"]
        assert agree and agree[0]["passed"]
    proc = rep["environment"]["candidate_process"]
    assert list(proc.values())[0]["tensor_parallel"] == 2


@pytest.mark.slow  # 7 s measured (2 cores, load ~1): CI runs the rest
def test_smoothing_with_the_shards_vocabulary_fails_naming_the_pattern_and_ranks(tmp_path):
    code, rep, r = check(tmp_path, "smoothing_shard_v", "--tensor-parallel", "2",
                         "--classes", "64", "--label-smoothing", "0.2")
    assert code == 1
    case = rep["cases"][0]
    assert not case["passed"]
    assert all(not c["passed"] for c in rank_errors(case).values())
    assert any("shard's vocabulary size on ranks 0, 1" in h and "#737" in h
               for h in case["diagnosis"]), case["diagnosis"]


@pytest.mark.slow  # 6 s measured (2 cores, load ~1): CI runs the rest
def test_max_not_all_reduced_fails_with_the_ranks_disagreeing_on_the_loss(tmp_path):
    code, rep, r = check(tmp_path, "local_max", "--tensor-parallel", "2", "--classes", "64")
    assert code == 1
    case = rep["cases"][0]
    agree = [i for i in case["invariants"] if i["name"] == "ranks_agree_on_loss"][0]
    assert not agree["passed"] and "rank 1 differs from rank 0" in agree["detail"]
    assert any("not all-reduced" in h for h in case["diagnosis"])


@pytest.mark.slow  # 6 s measured (2 cores, load ~1): CI runs the rest
def test_a_rank_killed_mid_call_fails_the_case_names_it_and_leaves_no_process(tmp_path):
    code, rep, r = check(tmp_path, "crash_on_rank1", "--tensor-parallel", "2",
                         "--classes", "64", "--timeout", "60")
    assert code == 1
    err = rep["cases"][0]["error"]
    assert "rank 1 of 2" in err and "SIGKILL" in err, err


def test_without_torch_tensor_parallel_exits_2_with_the_install_hint(tmp_path):
    """torch not installed (a finder that finds no torch: the judge only looks for it, it does
    not import it): one line with the install hint.  torch installed but broken: one line
    naming its ImportError (the worker's import of the TARGET says it)."""
    missing = tmp_path / "missing"
    missing.mkdir()
    (missing / "sitecustomize.py").write_text(
        "import sys\nclass _NoTorch:\n    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n"
        "sys.meta_path.insert(0, _NoTorch())\n")
    broken = tmp_path / "broken"
    (broken / "torch").mkdir(parents=True)
    (broken / "torch" / "__init__.py").write_text("raise ImportError('no torch here')\n")
    for fake, needle in ((missing, "pip install 'softcheck[torch]'"),
                         (broken, "ImportError: no torch here")):
        r = subprocess.run([sys.executable, "-m", "softcheck", "check", f"{EXAMPLE}:local_max",
                            "--convention", "loss", "--tensor-parallel", "2"],
                           capture_output=True, text=True, cwd=ROOT, timeout=120,
                           env={**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), ROOT])})
        assert r.returncode == 2, r.stderr
        assert needle in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("softcheck: error:")
        assert "Traceback" not in r.stderr


@pytest.mark.slow  # 4 s measured (2 cores, load ~1): CI runs the rest
def test_bad_tensor_parallel_options_exit_2_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "softcheck", "check", f"{EXAMPLE}:local_max",
                        "--convention", "loss", "--tensor-parallel", "3", "--classes", "64"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 2
    assert "--split even needs the classes (64) divisible by --tensor-parallel 3" in r.stderr


def test_shards_even_and_uneven():
    from softcheck.engine.ranks import shards

    assert shards(8, 4) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert shards(10, 4, "uneven") == [(0, 3), (3, 6), (6, 8), (8, 10)]
    for v in range(4, 40):
        s = shards(v, 4, "uneven")
        assert s[0][0] == 0 and s[-1][1] == v
        assert all(a[1] == b[0] for a, b in zip(s, s[1:]))
        assert max(b - a for a, b in s) - min(b - a for a, b in s) <= 1


@pytest.mark.slow  # 19 s measured (2 cores, load ~1): CI runs the rest
def test_four_ranks_correct_example_passes_and_shard_smoothing_is_named(tmp_path):
    """W = 4 in CI too (the issue's acceptance): one case each, the correct example and the
    Megatron #737 bug; every option on 4 ranks runs in the slow test below."""
    code, rep, r = check(tmp_path, "vocab_parallel_ce", "--tensor-parallel", "4",
                         "--classes", "64", "--label-smoothing", "0.1", "--ignore-index", "5")
    assert code == 0, r.stdout
    assert len(rank_errors(rep["cases"][0])) == 4
    code, rep, r = check(tmp_path, "smoothing_shard_v", "--tensor-parallel", "4",
                         "--classes", "64", "--label-smoothing", "0.1")
    assert code == 1
    assert any("shard's vocabulary size on ranks 0, 1, 2, 3" in h
               for h in rep["cases"][0]["diagnosis"]), rep["cases"][0]["diagnosis"]


@pytest.mark.slow
@pytest.mark.parametrize("fn,passes", [("vocab_parallel_ce", True), ("smoothing_shard_v", False),
                                       ("local_max", False)])
def test_four_ranks_every_loss_option(tmp_path, fn, passes):
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


@pytest.mark.slow
def test_a_rank_hung_in_a_collective_is_stopped_at_the_timeout(tmp_path):
    mod = tmp_path / "hang.py"
    mod.write_text("import torch, torch.distributed as dist, time\n"
                   "def hang(logits, target, group=None):\n"
                   "    if dist.get_rank(group) == 0:\n"
                   "        x = torch.zeros(1); dist.all_reduce(x, group=group)\n"
                   "    else:\n"
                   "        time.sleep(600)\n"
                   "    return (logits.sum() * 0.0)\n")
    code, rep, r = check(tmp_path, None, "--tensor-parallel", "2", "--classes", "8",
                         "--timeout", "3", target=f"{mod}:hang")
    assert code == 1
    err = rep["cases"][0]["error"]
    assert "longer than 3 s" in err and "rank" in err, err


@pytest.mark.slow
def test_a_rank_that_raises_fails_the_case_with_the_rank_named(tmp_path):
    mod = tmp_path / "raises.py"
    mod.write_text("import torch.distributed as dist\n"
                   "def boom(logits, target, group=None):\n"
                   "    if dist.get_rank(group) == 1:\n"
                   "        raise ValueError('shard mismatch')\n"
                   "    return logits.sum()\n")
    code, rep, r = check(tmp_path, None, "--tensor-parallel", "2", "--classes", "8",
                         "--timeout", "30", target=f"{mod}:boom")
    assert code == 1
    err = rep["cases"][0]["error"]
    assert "rank 1 of 2" in err and "ValueError" in err and "shard mismatch" in err, err


@pytest.mark.slow  # 33 s measured (2 cores, load ~3): CI runs the rest
def test_a_3d_kernel_on_ranks_with_shape_btv_as_transformer_engine_takes_it(tmp_path):
    """TransformerEngine's parallel_cross_entropy takes (B, T, V/W) logits only: each rank
    gets its shard as (B, T, V_r) with (B, T) targets; a (B, T) loss for reduction none.
    The same kernel under --shift 1 (it never shifts) fails with the shift named."""
    code, rep, r = check(tmp_path, "vocab_parallel_ce_btv", "--tensor-parallel", "2",
                         "--shape", "btv", "--classes", "64", "--ignore-index", "-100",
                         "--reduction", "mean,none", "--label-smoothing", "0.1")
    assert code == 0, r.stdout + r.stderr
    assert all(len(rank_errors(c)) == 2 and c["passed"] for c in rep["cases"])
    code, rep, r = check(tmp_path, "vocab_parallel_ce_btv", "--tensor-parallel", "2",
                         "--shape", "btv", "--shift", "1", "--classes", "64",
                         "--ignore-index", "-100", "--reduction", "none")
    assert code == 1
    assert "the labels are not shifted" in rep["cases"][0]["diagnosis"][0]
