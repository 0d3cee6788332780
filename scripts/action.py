"""The GitHub Action's step (action.yml): run ``softcheck batch FILE``, append the Markdown
summary to $GITHUB_STEP_SUMMARY, write JUnit (and JSON), set the outputs in $GITHUB_OUTPUT,
exit with softcheck's exit code.

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
    print("$ " + " ".join(shlex.quote(c) for c in cmd[1:]), flush=True)
    rc = subprocess.call(cmd)
    summary = env.get("GITHUB_STEP_SUMMARY")
    if summary and os.path.exists(markdown):
        with open(markdown, encoding="utf-8") as src, open(summary, "a", encoding="utf-8") as dst:
            dst.write(src.read() + "\n")
    failed = None
    if os.path.exists(report):
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
    return rc


if __name__ == "__main__":
    sys.exit(main())
