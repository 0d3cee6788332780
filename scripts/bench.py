"""Benchmark softcheck against its peers, in one process, and print a table with ratios.

    python scripts/bench.py [--cap 60] [--sizes 10x10,30x1000,...] [--markdown]

For each size B×C (float64, index targets, mean reduction):

* softcheck FD  — ``softcheck.gradient(z, y, method="finite_difference", fd="central")``:
  every coordinate (warm: best of 3 after one call that compiles), and its max error against
  the closed form relative to the largest entry;
* softcheck check — one whole ``softcheck check`` case of a correct numpy gradient (analytic,
  autodiff, FD of every coordinate or, beyond the budget, of a column subset plus probes);
* torch.autograd.gradcheck of ``F.cross_entropy`` (full, and ``fast_mode=True``);
* ``jax.test_util.check_grads`` (order 1, reverse mode) of the same loss.

A peer whose predicted time exceeds ``--cap`` seconds is skipped, and the table says so
(gradcheck grows as (B·C)²: predicted from the largest size it ran).  The "catches" column
says whether each checker rejects a gradient with ONE entry wrong by 1e-4 relative (a bug
confined to a few entries): fast_mode and check_grads test one random direction.

``--throughput [K]`` (issue 30) instead measures kernels judged per minute for graders: K
distinct correct numpy kernels (default 20), each the default check suite at 30×1000, sandbox
on, whole CLI processes: K ``softcheck check`` processes (cold), one ``softcheck batch`` of K
TARGETs, one of K groups on ONE TARGET (its worker reused), with every exit code and case
verified from the JSON reports, and a sanity batch with one wrong kernel that must fail.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DEFAULT_SIZES = "10x10,10x1000,30x1000,8x32768,8x262144"


def best_of(fn, repeat=3):
    fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def once(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def correct_grad(logits, target):
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    p[np.arange(len(target)), target] -= 1
    return p / len(target)


def softcheck_rows(b, c, z, y, cap):
    import softcheck

    row = {}
    evals = 2.0 * b * c * c
    if evals / 2e9 < cap:
        t = best_of(lambda: softcheck.gradient(z, y, method="finite_difference", fd="central"),
                    repeat=3 if evals < 1e9 else 1)
        fd = softcheck.gradient(z, y, method="finite_difference", fd="central")
        ref = softcheck.gradient(z, y)
        row["softcheck FD"] = (t, f"{np.max(np.abs(fd - ref)) / np.max(np.abs(ref)):.1e}")
    else:
        row["softcheck FD"] = (None, f"skipped: ~{evals / 2e9:.0f} s predicted > cap")

    def check():
        return softcheck.check(correct_grad, classes=c, batch=b, dtype="float64",
                               targets="index", reduction="mean", regime="normal")
    check()
    t, rep = once(check)
    case = rep.cases[0]
    wrong = _one_wrong(correct_grad)
    caught = not softcheck.check(wrong, classes=c, batch=b, dtype="float64", targets="index",
                                 reduction="mean", regime="normal").passed
    row["softcheck check"] = (t, f"{'PASS' if rep.passed else 'FAIL'}; FD {case.fd.coverage}",
                              caught)
    return row


def _one_wrong(fn):
    def wrong(logits, target):
        g = fn(logits, target)
        g[0, 1] *= 1 + 1e-4
        return g
    return wrong


def torch_rows(b, c, z, y, cap, state):
    import torch
    import torch.nn.functional as F

    zt = torch.tensor(z, requires_grad=True)
    yt = torch.tensor(y)

    class Wrong(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return F.cross_entropy(x, yt)

        @staticmethod
        def backward(ctx, go):
            (x,) = ctx.saved_tensors
            g = torch.tensor(correct_grad(x.detach().numpy(), y)) * go
            g[0, 1] *= 1 + 1e-4
            return g

    def caught(fast):
        try:
            return not torch.autograd.gradcheck(Wrong.apply, (zt,), fast_mode=fast,
                                                raise_exception=False)
        except Exception:  # noqa: BLE001
            return True

    row = {}
    n = b * c
    if "torch_rate" not in state:                   # warm up torch's first-call overhead
        small = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
        torch.autograd.gradcheck(lambda x: F.cross_entropy(x, torch.tensor([0, 1])), (small,))
        state["torch_rate"] = 0.0
    predicted = state["torch_rate"] * n * n
    if predicted < cap:
        t, ok = once(lambda: torch.autograd.gradcheck(lambda x: F.cross_entropy(x, yt), (zt,)))
        if n >= 5000:                                # (B·C)² growth: fit where it dominates
            state["torch_rate"] = t / (n * n)
        row["torch gradcheck"] = (t, "PASS" if ok else "FAIL", caught(False))
    else:
        row["torch gradcheck"] = (None, f"skipped: ~{predicted:.0f} s predicted > cap")
    t = best_of(lambda: torch.autograd.gradcheck(lambda x: F.cross_entropy(x, yt), (zt,),
                                                 fast_mode=True), repeat=1)
    row["torch gradcheck fast_mode"] = (t, "PASS", caught(True))
    return row


def jax_rows(b, c, z, y):
    import jax
    import jax.numpy as jnp
    from jax.test_util import check_grads

    jax.config.update("jax_enable_x64", True)
    zj, yj = jnp.asarray(z), jnp.asarray(y)

    def loss(x):
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(x), yj[:, None], 1))

    @jax.custom_vjp
    def wrong(x):
        return loss(x)

    def fwd(x):
        return loss(x), x

    def bwd(x, go):
        g = jnp.asarray(correct_grad(np.asarray(x), y)) * go
        return (g.at[0, 1].multiply(1 + 1e-4),)

    wrong.defvjp(fwd, bwd)
    t = best_of(lambda: check_grads(loss, (zj,), order=1, modes=["rev"]), repeat=1)
    try:
        check_grads(wrong, (zj,), order=1, modes=["rev"])
        caught = False
    except AssertionError:
        caught = True
    return {"jax check_grads": (t, "PASS", caught)}


def devices_rows(sizes: str) -> list:
    """Whole ``softcheck run`` processes with 1 and 2 XLA host devices: time and whether the
    reported errors are identical."""
    import json
    import subprocess

    out = []
    for size in sizes.split(","):
        b, c = size.lower().split("x")
        args = [sys.executable, "-m", "softcheck", "run", "--classes", c, "--batch", b,
                "--dtype", "float64", "--targets", "index", "--reduction", "mean",
                "--regime", "normal", "--fd", "central", "--json", "-"]
        res = {}
        for n in (1, 2):
            best = None
            for _ in range(2):
                t0 = time.perf_counter()
                r = subprocess.run(args + ["--devices", str(n)], capture_output=True, text=True)
                t = time.perf_counter() - t0
                best = t if best is None else min(best, t)
            d = json.loads(r.stdout)
            res[n] = (best, [[x["max_abs_error"] for x in cs["comparisons"]] for cs in d["cases"]],
                      d["cases"][0]["fd"]["coverage"])
        same = "identical errors" if res[1][1] == res[2][1] else "ERRORS DIFFER"
        for n in (1, 2):
            row = (f"{b}×{c}", f"softcheck run --devices {n}", f"{res[n][0]:.3g} s",
                   f"{res[n][0] / res[1][0]:.2g}×", "", f"{same}; FD {res[n][2]}")
            print(" | ".join(row), flush=True)
            out.append(row)
    return out


def _tree_pss(tag: bytes) -> float:
    """Sum of the proportional set size (shared pages counted once) of every process whose
    environment carries ``tag``: softcheck and its worker."""
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if tag not in f.read():
                    continue
            with open(f"/proc/{name}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def run_measured(args: list[str], every: float = 0.02) -> tuple[float, float, str]:
    """A whole process: wall seconds, peak Pss of it and its descendants (sampled every
    ``every`` seconds: reading smaps_rollup of a process with GiBs mapped costs CPU, so
    large runs sample less often), its stdout."""
    import subprocess
    import uuid

    tag = f"SOFTCHECK_BENCH={uuid.uuid4().hex}"
    env = {**os.environ, tag.split("=")[0]: tag.split("=")[1]}
    import tempfile

    with tempfile.TemporaryFile("w+") as sink:          # a pipe would fill and block it
        t0 = time.perf_counter()
        p = subprocess.Popen(args, env=env, stdout=sink, stderr=subprocess.DEVNULL, text=True)
        peak = 0.0
        while p.poll() is None:
            peak = max(peak, _tree_pss(tag.encode()))
            time.sleep(every)
        t = time.perf_counter() - t0
        sink.seek(0)
        return t, peak, sink.read()


def isolation_rows(repeats: int = 3) -> list:
    """#15: the cost of running the candidate in a worker process.  Whole ``softcheck check``
    processes of a numpy candidate, isolated and ``--in-process`` with the same --repeat,
    interleaved, best of ``repeats``; the worker's start-up; peak memory at 8×262144."""
    out = []
    cand = "scripts/examples/numpy_ce.py:grad"
    base = [sys.executable, "-m", "softcheck", "check", cand, "--classes", "1000", "--batch",
            "30", "--json", "-"]
    times: dict[str, list[float]] = {"isolated": [], "--in-process": []}
    runs: dict[str, float] = {"isolated": [], "--in-process": []}
    for _ in range(repeats):
        for mode, extra in (("isolated", []), ("--in-process", ["--in-process"])):
            t, _, text = run_measured(base + extra)
            import json

            times[mode].append(t)
            runs[mode].append(json.loads(text)["timing"]["seconds"])
    iso, inp = min(times["isolated"]), min(times["--in-process"])
    iso_run, inp_run = min(runs["isolated"]), min(runs["--in-process"])
    out.append(("30×1000 check (default suite)", "softcheck check, isolated",
                f"{iso:.3g} s (run {iso_run:.3g} s)",
                f"{iso / inp:.3g}× (run {iso_run / inp_run:.3g}×)", "", "whole process, best of "
                f"{repeats}, --repeat 2 both"))
    out.append(("30×1000 check (default suite)", "softcheck check --in-process",
                f"{inp:.3g} s (run {inp_run:.3g} s)", "1×", "", ""))
    from softcheck.candidate.worker import IsolatedCandidate

    for switch, what in (("1", "sandboxed (user+PID+mount namespaces)"),
                         ("0", "no namespaces (SOFTCHECK_SANDBOX=0)")):
        os.environ["SOFTCHECK_SANDBOX"] = switch
        starts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            c = IsolatedCandidate(os.path.abspath("scripts/examples/numpy_ce.py") + ":grad",
                                  None, "x")
            starts.append(time.perf_counter() - t0)
            c.close()
        out.append(("—", f"worker start-up (spawn + import + load), {what}",
                    f"{min(starts):.3g} s", "", "", f"best of {repeats}"))
    os.environ.pop("SOFTCHECK_SANDBOX", None)
    big = [sys.executable, "-m", "softcheck", "check", cand, "--classes", "262144", "--batch",
           "8", "--dtype", "float64", "--regime", "normal", "--json", "-"]
    for mode, extra in (("isolated", []), ("--in-process", ["--in-process"])):
        t, peak, _ = run_measured(big + extra)
        out.append(("8×262144 check", f"softcheck check, {mode}", f"{t:.3g} s", "", "",
                    f"peak Pss of softcheck + worker {peak / 2**30:.2f} GiB"))
    for r in out:
        print(" | ".join(r), flush=True)
    return out


SCALE_SIZES = "8192x32000:float32,4096x131072:float32,4096x131072:bfloat16"

_ALONE = """
import sys, time, numpy as np, ml_dtypes, importlib.util
n, c, dt = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
dt = np.dtype(getattr(ml_dtypes, dt)) if dt == "bfloat16" else np.dtype(dt)
spec = importlib.util.spec_from_file_location("cand", "scripts/examples/numpy_ce.py")
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
rng = np.random.default_rng(0)
z = np.empty((n, c), dt)
for i in range(0, n, 64):
    z[i:i + 64] = rng.standard_normal((min(64, n - i), c)) * 2.0
y = rng.integers(0, c, n)
t0 = time.perf_counter(); g = m.grad(z, y); print(time.perf_counter() - t0)
"""


_ALONE_TORCH = """
import sys, time, numpy as np, torch, importlib, importlib.util
n, c, dt, target, conv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
path, _, name = target.rpartition(":")
if path.endswith(".py"):
    spec = importlib.util.spec_from_file_location("cand", path)
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
else:
    m = importlib.import_module(path)
fn = getattr(m, name)
fn = fn.apply if isinstance(fn, type) and issubclass(fn, torch.autograd.Function) else fn
tdt = torch.bfloat16 if dt == "bfloat16" else getattr(torch, dt)
rng = np.random.default_rng(0)
z = torch.empty((n, c), dtype=tdt)
for i in range(0, n, 64):
    z[i:i + 64] = torch.from_numpy(rng.standard_normal((min(64, n - i), c)) * 2.0)
z.requires_grad_(True)
y = torch.from_numpy(rng.integers(0, c, n))
t0 = time.perf_counter()
loss = fn(z, y)
loss = loss[0] if isinstance(loss, (tuple, list)) else loss
loss.backward(torch.tensor(0.7, dtype=loss.dtype))
print(time.perf_counter() - t0)
"""


def scale_rows(sizes: str = SCALE_SIZES, target: str | None = None,
               convention: str | None = None) -> list:
    """#17 / #30: one ``softcheck check`` case of a kernel at LLM sizes (streamed): wall
    time and peak Pss of softcheck + worker, beside the candidate alone (its own call time
    and the peak of a process that only makes the logits and calls it: a torch kernel's
    forward and backward with g = 0.7), and the issues' memory bound: alone + 0.5 × (logits
    + gradient bytes) + 0.6 GiB.  ``target``: the numpy example unless given (a torch
    autograd.Function or, with ``convention`` loss, a loss function)."""
    import json

    out = []
    cand = target or "scripts/examples/numpy_ce.py:grad"
    extra = ["--convention", convention] if convention else []
    for item in sizes.split(","):
        size, dtype = item.split(":")
        b, c = (int(x) for x in size.lower().split("x"))
        print(f"{size} {dtype}: load average before {os.getloadavg()[0]:.2f}", flush=True)
        t, peak, text = run_measured([sys.executable, "-m", "softcheck", "check", cand, *extra,
                                      "--batch", str(b), "--classes", str(c), "--dtype", dtype,
                                      "--regime", "normal", "--json", "-"], every=0.5)
        load = os.getloadavg()[0]
        case = json.loads(text)["cases"][0] if text.strip() else {}
        alone_cmd = ([sys.executable, "-c", _ALONE, str(b), str(c), dtype] if target is None
                     else [sys.executable, "-c", _ALONE_TORCH, str(b), str(c), dtype, cand,
                           convention or ""])
        ta, alone, atext = run_measured(alone_cmd, every=0.1)
        call = float(atext.split()[-1]) if atext.strip() else float("nan")
        item_bytes = 2 if dtype == "bfloat16" else 4
        bound = alone + 0.5 * 2 * item_bytes * b * c + 0.6 * 2**30
        ph = case.get("timing", {}).get("phases", {})
        stages = ", ".join(f"{k} {v:.3g} s" for k, v in ph.items())
        out.append((f"{b}×{c} {dtype}", f"softcheck check {cand} (streamed)", f"{t:.3g} s",
                    f"candidate alone, one call {call:.3g} s; in the run: {stages}",
                    "PASS" if case.get("passed") else "FAIL",
                    f"peak Pss {peak / 2**30:.2f} GiB (bound {bound / 2**30:.2f} GiB; "
                    f"candidate alone {alone / 2**30:.2f} GiB); FD "
                    f"{case.get('fd', {}).get('coverage', '?')}; load average after "
                    f"{load:.2f}"))
        print(" | ".join(out[-1]), flush=True)
    return out


def tensor_parallel_rows(repeats: int = 2) -> list:
    """#20: a whole ``softcheck check --tensor-parallel 4`` run of the Megatron-style example at
    256×32000 float32 (one case), beside the same case on one process (torch's own
    cross_entropy under the loss convention): wall time, peak Pss of every process, best of
    ``repeats``; and the ranks' own calls (the JSON's call timing) where reported."""
    common = ["--convention", "loss", "--batch", "256", "--classes", "32000", "--dtype",
              "float32", "--regime", "normal", "--json", "-"]
    runs = {
        "--tensor-parallel 4 (gloo)": ["scripts/examples/vocab_parallel_ce.py:vocab_parallel_ce",
                                       "--tensor-parallel", "4"],
        "one process": ["torch.nn.functional:cross_entropy"],
    }
    out = []
    for label, target in runs.items():
        best = None
        for _ in range(repeats):
            t, peak, text = run_measured([sys.executable, "-m", "softcheck", "check", *target,
                                          *common])
            if best is None or t < best[0]:
                best = (t, peak, text)
        import json

        case = json.loads(best[2])["cases"][0]
        row = ("256×32000 f32, 1 case", f"softcheck check {label}", f"{best[0]:.3g} s", "",
               "", f"{'PASS' if case['passed'] else 'FAIL'}; peak Pss {best[1] / 2**30:.2f} GiB; "
               f"FD {case['fd']['coverage']}; best of {repeats}")
        print(" | ".join(row), flush=True)
        out.append(row)
    return out


THROUGHPUT_KERNEL = '''"""Throughput kernel {i}: softmax cross-entropy's gradient in closed form
(mean over the batch), the logits shifted by {shift!r} first, which softmax ignores: each
file its own TARGET.{extra}"""
import numpy as np

SHIFT, WRONG = {shift!r}, {wrong!r}


def grad(logits, target):
    z = np.asarray(logits, np.float64) - SHIFT
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(target)), target] -= 1
    p /= len(target)
    if WRONG:
        p[0, 1] *= 1 + 1e-4              # one entry off by 1e-4 relative
    return p.astype(logits.dtype)
'''


def _kernels(folder: str, k: int, wrong: int = -1) -> list[str]:
    """``k`` distinct kernel files k0.py, k1.py, ... in ``folder`` (number ``wrong``: one
    entry of its gradient off)."""
    for i in range(k):
        with open(os.path.join(folder, f"k{i}.py"), "w") as f:
            f.write(THROUGHPUT_KERNEL.format(i=i, shift=0.25 * i, wrong=i == wrong, extra=(
                "\nWRONG: one entry of the gradient is off." if i == wrong else "")))
    return [f"k{i}.py" for i in range(k)]


def _batch_file(path: str, files: list[str]) -> str:
    """One group per entry of ``files`` (a name may repeat: the same TARGET), each the default
    check suite at --batch 30 --classes 1000, group i with seed i."""
    with open(path, "w") as f:
        f.writelines(f'[[case]]\nname = "g{i} {name}"\ntarget = "{name}:grad"\nclasses = 1000\n'
                     f"batch = 30\nseed = {i}\n\n" for i, name in enumerate(files))
    return path


def run_counted(args: list[str], every: float = 0.05) -> tuple[float, int, int]:
    """A whole process, the sandbox on (SOFTCHECK_SANDBOX dropped): wall seconds, exit code,
    and how many candidate workers it started (each has its own SOFTCHECK_WORKER_TAG; the
    tags of its processes are read from /proc every ``every`` s)."""
    import subprocess
    import uuid

    mark = f"SOFTCHECK_BENCH={uuid.uuid4().hex}".encode()
    env = {k: v for k, v in os.environ.items() if k != "SOFTCHECK_SANDBOX"}
    env["SOFTCHECK_BENCH"] = mark.split(b"=")[1].decode()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (ROOT, env.get("PYTHONPATH"))))
    seen: set[bytes] = set()
    t0 = time.perf_counter()
    p = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while p.poll() is None:
        for name in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    items = f.read().split(b"\0")
            except OSError:
                continue
            if mark in items:
                seen.update(x for x in items if x.startswith(b"SOFTCHECK_WORKER_TAG="))
        time.sleep(every)
    return time.perf_counter() - t0, p.returncode, len(seen)


def _report(path: str) -> dict:
    """A run's JSON report ({} when it wrote none)."""
    import json

    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _verdict(path: str, rc: int, groups: int) -> tuple[bool, int, int, float]:
    """One run's JSON report: (rc 0, every case passed, ``groups`` groups ran, every worker
    sandboxed), cases passed, cases, the run's own seconds."""
    rep = _report(path)
    cases = rep.get("cases", [])
    passed = sum(c["passed"] for c in cases)
    procs = rep.get("environment", {}).get("candidate_process", {}).values()
    boxed = bool(procs) and all(p.get("sandbox", {}).get("kind") == "namespaces" for p in procs)
    ok = (rc == 0 and bool(cases) and passed == len(cases) and boxed
          and len({c["group"] for c in cases}) == groups)
    return ok, passed, len(cases), rep.get("timing", {}).get("seconds", float("nan"))


#: check's default dtypes, pinned: without them ``check`` first probes whether the candidate
#: computes in float32 (a batch does not), and drops its float64 cases if it seems to
DTYPES = ["--dtype", "float64,float32"]


def throughput_rows(k: int = 20) -> tuple[list, bool]:
    """#30: kernels judged per minute, each the default check suite at 30×1000 (14 cases),
    sandbox on, whole CLI processes: each kernel in its own ``softcheck check`` (cold); all K
    in one ``softcheck batch`` (K TARGETs, one group each); K groups of ONE TARGET in one
    batch (its worker reused); ``--list`` of both files (TARGETs loaded, no JAX, nothing
    judged); a sanity batch with one wrong kernel, which must fail (exit 1).  Returns the
    rows and whether every run's verdict was the expected one."""
    import tempfile

    sc = [sys.executable, "-m", "softcheck"]
    out, good = [], True

    def row(mode, run, wall, n, note):
        out.append((mode, run, f"{wall:.3g} s", f"{60 * n / wall:.3g}" if n else "",
                    f"{wall / n:.3g} s" if n else "", f"{note}; load {os.getloadavg()[0]:.2f}"))
        print(" | ".join(out[-1]), flush=True)

    with tempfile.TemporaryDirectory() as d:
        files = _kernels(d, k)
        many = _batch_file(os.path.join(d, "many.toml"), files)
        one = _batch_file(os.path.join(d, "one.toml"), files[:1] * k)
        wall, run, ok, passed, cases, workers, zero = 0.0, 0.0, True, 0, 0, 0, 0
        for i, name in enumerate(files):
            js = os.path.join(d, f"c{i}.json")
            t, rc, w = run_counted(sc + ["check", os.path.join(d, name) + ":grad", "--batch",
                                        "30", "--classes", "1000", "--seed", str(i), *DTYPES,
                                        "--json", js])
            v = _verdict(js, rc, 1)
            wall, run, workers, zero = wall + t, run + v[3], workers + w, zero + (rc == 0)
            ok, passed, cases = ok and v[0], passed + v[1], cases + v[2]
        good &= ok
        row("cold", f"{k} × `softcheck check FILE:grad {' '.join(DTYPES)}` (a process each)",
            wall, k,
            f"{'ok' if ok else 'NOT OK'}: {passed}/{cases} cases passed, rc 0 {zero}/{k}, "
            f"sandbox on; {workers} workers; the runs' own {run:.3g} s")
        for mode, path, what in (("batch", many, f"{k} TARGETs"), ("reused", one, "ONE TARGET")):
            js = os.path.join(d, mode + ".json")
            t, rc, w = run_counted(sc + ["batch", path, "--json", js])
            v = _verdict(js, rc, k)
            good &= v[0]
            row(mode, f"one `softcheck batch`, {k} groups, {what}", t, k,
                f"{'ok' if v[0] else 'NOT OK'}: {v[1]}/{v[2]} cases passed, rc {rc}, sandbox "
                f"{'on' if v[0] else '?'}; {w} workers; the run's own {v[3]:.3g} s")
        for path, what in ((many, f"{k} TARGETs"), (one, "ONE TARGET")):
            t, rc, w = run_counted(sc + ["batch", path, "--list"])
            row("—", f"`softcheck batch --list`, {what} (loads them; no JAX, judges nothing)",
                t, 0, f"rc {rc}; {w} workers")
        js = os.path.join(d, "sanity.json")
        t, rc, _ = run_counted(sc + ["batch", _batch_file(os.path.join(d, "sanity.toml"),
                                                          _kernels(d, 3, wrong=1)),
                                     "--json", js])
        cs = _report(js).get("cases", [])
        bad = [c["passed"] for c in cs if c["target"] == "k1.py:grad"]
        fine = [c["passed"] for c in cs if c["target"] != "k1.py:grad"]
        caught = rc == 1 and False in bad and bool(fine) and all(fine)
        good &= caught
        row("sanity", "one `softcheck batch`, 3 kernels, k1 one entry off by 1e-4", t, 0,
            f"{'ok' if caught else 'NOT OK'}: rc {rc}; k1 {bad.count(False)}/{len(bad)} cases "
            f"failed, k0 and k2 {fine.count(True)}/{len(fine)} passed")
        for extra in (DTYPES, []):           # pinned as the cold rows; check's default
            js = os.path.join(d, f"sanity{len(extra)}.json")
            t, rc, _ = run_counted(sc + ["check", os.path.join(d, "k1.py:grad"), "--batch", "30",
                                        "--classes", "1000", "--seed", "1", *extra, "--json",
                                        js])
            rep = _report(js)
            failed = rep.get("summary", {}).get("failed", 0)
            probe = any("computes in float32" in x for x in rep.get("skipped", []))
            verdict = "ok" if rc == 1 else "NOT OK" if extra else "the wrong kernel PASSES"
            good &= rc == 1 or not extra
            row("sanity", f"`softcheck check k1.py:grad {' '.join(extra) or '(no --dtype)'}`",
                t, 0, f"{verdict}: rc {rc}, {failed}/{len(rep.get('cases', []))} cases failed"
                + ("; float64 cases dropped: the dtype probe took it for a float32 kernel"
                   if probe else ""))
    return out, good


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=DEFAULT_SIZES)
    ap.add_argument("--cap", type=float, default=60.0, help="skip a peer predicted over this")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    ap.add_argument("--devices", default="8x8192,8x32768",
                    help="sizes at which to time `softcheck run --devices 1` vs `--devices 2` "
                         "(whole processes; '' to skip)")
    ap.add_argument("--isolation", action="store_true",
                    help="only the isolation rows (#15): isolated vs --in-process check")
    ap.add_argument("--scale", nargs="?", const=SCALE_SIZES, default=None,
                    help="only the LLM-size rows (#17), e.g. 8192x32000:float32")
    ap.add_argument("--scale-target", default=None,
                    help="--scale of this TARGET instead of the numpy example (#30), e.g. "
                         "scripts/examples/liger_blockwise.py:LigerBlockwiseCE")
    ap.add_argument("--scale-convention", default=None,
                    help="--convention for --scale-target (loss for a loss function)")
    ap.add_argument("--tensor-parallel", action="store_true",
                    help="only the tensor-parallel rows (#20): W=4 ranks vs one process")
    ap.add_argument("--throughput", nargs="?", type=int, const=20, default=None, metavar="K",
                    help="only the graders' rows (#30): K kernels (default 20) judged per "
                         "minute, cold / one batch / one TARGET's worker reused")
    args = ap.parse_args(argv)
    if args.throughput:
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average "
              f"{', '.join(f'{x:.2f}' for x in os.getloadavg())} before; python "
              f"{platform.python_version()}; default check suite at 30×1000 (14 cases a "
              "kernel), sandbox on", flush=True)
        table, good = throughput_rows(args.throughput)
        print(f"load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
        if args.markdown:
            _print_markdown(table, ("mode", "run", "wall", "kernels / min", "per kernel",
                                    "verdict; workers started; load (1 min) after the row"))
        return 0 if good else 1
    if args.scale or args.tensor_parallel:
        table = (scale_rows(args.scale, args.scale_target, args.scale_convention) if args.scale
                 else tensor_parallel_rows())
        _print_markdown(table) if args.markdown else None
        return 0
    if args.isolation:
        table = isolation_rows()
        _print_markdown(table) if args.markdown else None
        return 0
    import jax
    import torch

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; "
          f"python {platform.python_version()}, numpy {np.__version__}, jax {jax.__version__} "
          f"({jax.default_backend()}, {jax.local_device_count()} device(s)), torch "
          f"{torch.__version__}; float64", flush=True)
    state: dict = {}
    table = []
    for size in args.sizes.split(","):
        b, c = (int(x) for x in size.lower().split("x"))
        rng = np.random.default_rng(0)
        z = rng.normal(size=(b, c))
        y = rng.integers(0, c, b)
        rows = {}
        rows.update(softcheck_rows(b, c, z, y, args.cap))
        rows.update(torch_rows(b, c, z, y, args.cap, state))
        rows.update(jax_rows(b, c, z, y))
        base = rows["softcheck FD"][0]
        for tool, r in rows.items():
            t, note = r[0], r[1]
            caught = r[2] if len(r) > 2 else None
            ratio = (f"{t / base:.2g}×" if t is not None and base and tool != "softcheck FD"
                     else "")
            table.append((f"{b}×{c}", tool, "—" if t is None else f"{t:.3g} s", ratio,
                          {True: "yes", False: "NO", None: ""}[caught], note))
            print(" | ".join(table[-1]), flush=True)
    if args.devices:
        table += devices_rows(args.devices)
    if args.markdown:
        _print_markdown(table)
    return 0


HEADER = ("size", "tool", "time", "÷ softcheck FD (devices: ÷ 1 device)",
          "catches 1 entry off 1e-4", "result")


def _print_markdown(table, header=HEADER) -> None:
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in table:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    sys.exit(main())
