"""The GitHub Action as the runner runs it: action.yml's scripts under the runner's bash
flags (the inputs arrive as env, never as script), scripts/action.py on a batch file with a
typo (the job summary says what is wrong, passed=false, no stale report read)."""

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: what GitHub runs a ``shell: bash`` step's script with
RUNNER_BASH = ["bash", "--noprofile", "--norc", "-eo", "pipefail"]


def steps():
    return yaml.safe_load((ROOT / "action.yml").read_text())["runs"]["steps"]


def _expand(value: str, inputs: dict) -> str:
    """The runner's substitution of ``${{ inputs.X }}`` and ``${{ github.action_path }}``."""
    def sub(m):
        expr = m.group(1).strip()
        if expr == "github.action_path":
            return str(ROOT)
        return inputs[expr.removeprefix("inputs.")]
    return re.sub(r"\$\{\{(.*?)\}\}", sub, str(value))


def run_step(step, inputs, tmp_path):
    """``step``'s script as the runner runs it, ``python`` a fake that records its argv."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "python").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGV_FILE"\n')
    (fake / "python").chmod(0o755)
    script = tmp_path / "step.sh"
    script.write_text(_expand(step["run"], inputs))    # expressions left in run: pasted in
    env = {**os.environ, **{k: _expand(v, inputs) for k, v in step.get("env", {}).items()},
           "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}",
           "ARGV_FILE": str(tmp_path / "argv")}
    r = subprocess.run([*RUNNER_BASH, str(script)], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    argv = (tmp_path / "argv").read_text().splitlines() if (tmp_path / "argv").exists() else None
    return r, argv


def test_no_step_pastes_an_input_into_its_script():
    for step in steps():
        assert "${{" not in step.get("run", ""), step.get("name")


def test_install_input_cannot_execute_code(tmp_path):
    install = next(s for s in steps() if s.get("name") == "Install softcheck")
    hostile = 'pkg==1; touch PWNED_A && $(touch PWNED_B) `touch PWNED_C` "x" *'
    r, argv = run_step(install, {"install": hostile}, tmp_path)
    assert r.returncode == 0, r.stderr
    assert not list(tmp_path.glob("PWNED*"))
    assert argv == ["-m", "pip", "install", "-q", *hostile.split()]   # words, not shell


def test_install_input_empty_installs_the_actions_own_checkout(tmp_path):
    install = next(s for s in steps() if s.get("name") == "Install softcheck")
    r, argv = run_step(install, {"install": ""}, tmp_path)
    assert r.returncode == 0 and argv == ["-m", "pip", "install", "-q", str(ROOT)]


def _run_action(tmp_path, batch_text):
    ws = tmp_path / "ws"
    (ws / "out").mkdir(parents=True)
    (ws / "softcheck.toml").write_text(batch_text)
    # a report an earlier run left: never this run's
    (ws / "out" / "softcheck.json").write_text(json.dumps({"summary": {"failed": 0}}))
    summary, output = tmp_path / "summary.md", tmp_path / "output.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GITHUB_WORKSPACE": str(ws),
           "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_OUTPUT": str(output),
           "RUNNER_TEMP": str(tmp_path), "INPUT_FILE": "softcheck.toml",
           "INPUT_JUNIT": "out/junit.xml", "INPUT_JSON": "out/softcheck.json",
           "INPUT_ARGS": "--timeout 30", "SOFTCHECK_NO_PROGRESS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "action.py")], env=env,
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines())
    return r, summary.read_text(), outputs


def test_batch_file_with_a_typo_says_what_is_wrong_in_the_summary(tmp_path):
    r, summary, outputs = _run_action(
        tmp_path, '[[case]]\nname = "llm"\nclasses = 10\nlabel_smothing = 0.1\n')
    assert r.returncode == 2, r.stdout + r.stderr
    assert "could not run (exit 2)" in summary
    assert "unknown key 'label_smothing' (did you mean 'label_smoothing'?)" in summary
    assert outputs == {"passed": "false", "failed": ""}           # not the stale report's 0
    note = [ln for ln in r.stderr.splitlines() if ln.startswith("::error")]
    assert len(note) == 1 and "label_smothing" in note[0]


def test_logged_command_is_copyable(tmp_path):
    r, _, _ = _run_action(tmp_path, '[[case]]\nclasses = 10\nlabel_smothing = 0.1\n')
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("$ "))
    words = shlex.split(line[2:])
    assert words[:4] == ["python", "-m", "softcheck", "batch"] and "softcheck.toml" in words
