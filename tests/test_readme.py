"""The README shows the tool's real output: each fenced block that opens with ``$ COMMAND``
is rerun through a real subprocess (scripts/readme.py) and compared, normalising only the
run's seconds and the scratch folder's path.  ``python scripts/readme.py --write`` rewrites
the blocks after a change of output."""

import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import readme  # noqa: E402

TEXT = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = readme.blocks(TEXT)


def _param(b):
    # the blocks that start torch.distributed ranks or shard_map devices (10-30 s each) are
    # multi-process tests: slow, as tests/test_vocab_parallel*.py's own
    marks = [pytest.mark.slow] if "--tensor-parallel" in b.command else []
    return pytest.param(b, id=b.command.split("\\")[0][:70], marks=marks)


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS])
def test_readme_block_is_the_commands_real_output(block):
    fresh = readme.run(block.command)
    assert readme.normalise(fresh) == readme.normalise(block.shown), (
        f"README.md's output of `{block.command}` is stale: python scripts/readme.py --write\n"
        f"--- shown\n{block.shown}--- printed\n{fresh}")


def test_every_shown_command_is_in_a_block_of_its_own():
    fences = re.findall(r"^```[^\n]*\n(.*?)^```$", TEXT, re.M | re.S)
    commands = [ln for body in fences for ln in body.splitlines() if ln.startswith("$ ")]
    assert len(commands) == len(BLOCKS) >= 20


def test_an_edited_output_is_stale_but_other_seconds_are_not():
    for b in BLOCKS:
        lines = b.shown.splitlines(True)
        for i, line in enumerate(lines):          # one character of any line changed
            edited = "".join(lines[:i] + [line.rstrip("\n") + "x\n"] + lines[i + 1:])
            assert readme.normalise(edited) != readme.normalise(b.shown)
    shown = ("8 cases: 4 passed, 4 failed — DISAGREEMENT (4.36 s)\n= 15 passed in 6.24s =\n"
             "but 22.7 GiB are available\n")
    other = ("8 cases: 4 passed, 4 failed — DISAGREEMENT (12.5 s)\n= 15 passed in 14.79s =\n"
             "but 9 GiB are available\n")
    assert readme.normalise(shown) == readme.normalise(other)
    assert readme.normalise(shown) != readme.normalise(shown.replace("4 failed", "3 failed"))


def test_the_set_up_commands_are_the_ones_ci_runs():
    setup = TEXT[TEXT.index("## Set-up"):]
    setup = setup[:setup.index("```", setup.index("```") + 3)]
    assert "pip install -e . && softcheck run --classes 10" in setup
    assert "pip install -e '.[test]' && pytest" in setup
    ci = (ROOT / ".ci/run").read_text()
    assert "pip install -q -e '.[test]'" in ci and re.search(r"^python3 -m pytest$", ci, re.M)
    assert any(b.command == "softcheck run --classes 10" for b in BLOCKS)


def test_readme_mutant_count_is_the_catalogs():
    from softcheck.tools.mutants import MUTANTS

    n = len(MUTANTS)
    assert f"catalog of {n} plausible wrong gradients" in TEXT
    assert f"`{n}/{n} mutants caught" in " ".join(TEXT.split()).replace("` ", "`")
    assert not re.search(r"\b(\d+)/\1 mutants\b", TEXT.replace(f"{n}/{n} mutants", ""))
