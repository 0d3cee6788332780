"""The README's shown output, generated: every fenced block that opens with ``$ COMMAND`` is
that command's real output.  ``python scripts/readme.py`` checks each block against a fresh
run (exit 1 and a diff when one differs); ``--write`` rewrites the blocks; ``-k TEXT`` only
the blocks whose command contains TEXT.

Each command runs under bash in a scratch folder holding ``scripts`` and ``tests`` (links to
this checkout), so the reports it writes land there; ``softcheck`` and ``pytest`` are this
checkout's, at 80 columns, without a terminal, progress lines off.  Compared after
normalising only what varies between runs: the run's seconds (and the width of pytest's
rule lines around them), the free memory a refusal quotes, and the scratch folder's path,
shown as ``/home/you/softcheck``.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
SHOWN_ROOT = "/home/you/softcheck"
#: a fenced block whose first line is ``$ command`` (continued by trailing backslashes)
BLOCK = re.compile(r"^```\n(?P<cmd>\$ (?:[^\n]*\\\n)*[^\n]*)\n(?P<out>.*?)^```$", re.M | re.S)
#: what varies between two runs of one command: its seconds
SECONDS = re.compile(r"\d+(\.\d+)? ?s\b(?=\)| =)|(?<=in )\d+\.\d+s\b")


@dataclass
class Block:
    command: str          # as shown, without the "$ "
    shown: str            # the output as the README shows it
    start: int            # offsets of the output in the README
    end: int


def blocks(text: str) -> list[Block]:
    return [Block(m["cmd"][2:], m["out"], m.start("out"), m.end("out"))
            for m in BLOCK.finditer(text)]


#: pytest's rule lines, padded with "=" to the width: their length follows the seconds
RULE = re.compile(r"^=+ (.*?) =+$", re.M)


#: the memory a refusal (--huge) finds free: the machine's, of the moment
FREE = re.compile(r"\d+(\.\d+)? GiB are available")


def normalise(out: str) -> str:
    return FREE.sub("# GiB are available", RULE.sub(r"= \1 =", SECONDS.sub("#s", out)))


def _scratch() -> str:
    scratch = tempfile.mkdtemp(prefix="softcheck-readme-")
    for name in ("scripts", "tests"):
        os.symlink(os.path.join(ROOT, name), os.path.join(scratch, name))
    bindir = os.path.join(scratch, ".bin")
    os.mkdir(bindir)
    for tool, module in (("softcheck", "softcheck"), ("pytest", "pytest")):
        path = os.path.join(bindir, tool)
        with open(path, "w") as f:
            f.write(f"#!/bin/sh\nexec {sys.executable} -m {module} \"$@\"\n")
        os.chmod(path, 0o755)
    return scratch


def run(command: str, timeout: float = 600) -> str:
    """``command``'s output (stdout and stderr as they interleave), as the README shows it."""
    scratch = _scratch()
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "PYTEST_ADDOPTS")}
    env.update(COLUMNS="80", NO_COLOR="1", TERM="dumb", SOFTCHECK_NO_PROGRESS="1",
               PYTHONUNBUFFERED="1", PYTHONPATH=ROOT,
               PATH=os.path.join(scratch, ".bin") + os.pathsep + env.get("PATH", ""))
    proc = subprocess.run(["bash", "-c", command], cwd=scratch, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    out = proc.stdout.replace(os.path.realpath(scratch), SHOWN_ROOT).replace(scratch, SHOWN_ROOT)
    out = "\n".join(line.rstrip() for line in out.splitlines())
    return out + "\n" if out else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="rewrite the blocks in README.md")
    ap.add_argument("-k", dest="only", default=None, help="only commands containing TEXT")
    args = ap.parse_args(argv)
    with open(README, encoding="utf-8") as f:
        text = f.read()
    found = [b for b in blocks(text) if args.only is None or args.only in b.command]
    stale = 0
    for b in reversed(found):                  # from the end: offsets stay valid
        t0 = time.perf_counter()
        fresh = run(b.command)
        print(f"{time.perf_counter() - t0:6.1f} s  {b.command[:70]}", file=sys.stderr)
        if normalise(fresh) == normalise(b.shown):
            continue
        stale += 1
        if args.write:                         # at once: a long run keeps what it did
            text = text[:b.start] + fresh + text[b.end:]
            with open(README, "w", encoding="utf-8") as f:
                f.write(text)
        else:
            sys.stdout.writelines(difflib.unified_diff(
                b.shown.splitlines(True), fresh.splitlines(True), "README.md", b.command))
    print(f"{len(found)} blocks, {stale} {'rewritten' if args.write else 'stale'}",
          file=sys.stderr)
    return 1 if stale and not args.write else 0


if __name__ == "__main__":
    sys.exit(main())
