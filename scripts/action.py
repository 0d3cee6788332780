"""The GitHub Action's step (action.yml): run ``softcheck batch FILE``, append the Markdown
summary to $GITHUB_STEP_SUMMARY, write JUnit (and JSON), set the outputs in $GITHUB_OUTPUT,
exit with softcheck's exit code.  A run that cannot start (exit 2: a typo in the batch file,
a TARGET that does not load) puts softcheck's error in the job summary and an error
annotation; the outputs are read only from reports this run wrote.

Reads the environment the runner provides: INPUT_FILE, INPUT_JUNIT, INPUT_JSON, INPUT_ARGS
(from action.yml), GITHUB_WORKSPACE, GITHUB_STEP_SUMMARY, GITHUB_OUTPUT, RUNNER_TEMP.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile


def annotate(message: str) -> str:
    """``message`` as a workflow command's data (GitHub's escaping of %, CR and LF)."""
    return message.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _fresh(path: str, since: float) -> bool:
    """Whether ``path`` was written by this run (a report left by an earlier one is not)."""
    try:
        return os.stat(path).st_mtime >= since
    except OSError:
        return False


def main() -> int:
    env = os.environ
    file = env.get("INPUT_FILE", "").strip()
    if not file:
        print("::error::softcheck action: the 'file' input is required", file=sys.stderr)
        return 2
    os.chdir(env.get("GITHUB_WORKSPACE") or os.getcwd())
    tmp = tempfile.mkdtemp(prefix="softcheck-", dir=env.get("RUNNER_TEMP") or None)
    markdown = os.path.join(tmp, "summary.md")
    report = env.get("INPUT_JSON", "").strip() or os.path.join(tmp, "softcheck.json")
    cmd = [sys.executable, "-m", "softcheck", "batch", file, "--markdown", markdown,
           "--json", report, *shlex.split(env.get("INPUT_ARGS", ""))]
    junit = env.get("INPUT_JUNIT", "").strip()
    if junit:
        cmd += ["--junit", junit]
    print("$ " + shlex.join(["python", *cmd[1:]]), flush=True)     # copyable as it stands
    for stale in (report, markdown):        # an earlier run's report is never this run's
        if os.path.isfile(stale):
            os.remove(stale)
    started = os.stat(tmp).st_mtime
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, errors="replace")
    errors = []
    for line in proc.stderr:                # shown as it comes (progress lines), and kept
        sys.stderr.write(line)
        sys.stderr.flush()
        errors.append(line.rstrip("\n"))
    proc.stderr.close()
    rc = proc.wait()
    summary = env.get("GITHUB_STEP_SUMMARY")
    ran = rc in (0, 1) and _fresh(markdown, started)   # else at most an 'incomplete' marker
    if summary:
        with open(summary, "a", encoding="utf-8") as dst:
            if ran:
                with open(markdown, encoding="utf-8") as src:
                    dst.write(src.read() + "\n")
            else:
                dst.write(f"## ⚠️ softcheck batch could not run (exit {rc})\n\n```\n"
                          + "\n".join(errors[-20:] or ["(softcheck printed no error)"])
                          + f"\n```\n\n`{shlex.join(['softcheck', *cmd[3:]])}`\n")
    failed = None
    if rc in (0, 1) and _fresh(report, started):
        with open(report, encoding="utf-8") as f:
            failed = json.load(f)["summary"]["failed"]
    out = env.get("GITHUB_OUTPUT")
    if out:
        with open(out, "a", encoding="utf-8") as f:
            f.write(f"passed={'true' if rc == 0 else 'false'}\n")
            f.write(f"failed={'' if failed is None else failed}\n")
    if rc == 1:
        print(f"::error::softcheck: {failed} case(s) failed (see the job summary)",
              file=sys.stderr)
    elif rc != 0:
        reason = next((e for e in reversed(errors) if e.startswith("softcheck: error:")),
                      errors[-1] if errors else f"exit {rc}")
        print(f"::error title=softcheck could not run::{annotate(reason)}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
