"""``--help`` as a user reads it (a real subprocess): run's and check's options in sections,
every option in one, defaults shown, every --tolerance mode explained."""

import re
import subprocess
import sys

import pytest

from softcheck.cli.app import HELP_SECTIONS


def help_text(command: str) -> str:
    out = subprocess.run([sys.executable, "-m", "softcheck", command, "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("command", ["run", "check"])
def test_help_groups_every_option_under_a_section(command):
    text = help_text(command)
    titles = [ln[:-1] for ln in text.splitlines() if re.match(r"^[A-Z][^:]*:$", ln)]
    assert titles == [t for t in HELP_SECTIONS if t in titles]     # in order
    assert "Options" not in titles                                   # nothing left over
    assert len(titles) >= 5


def test_check_help_sections_hold_the_right_options():
    text = help_text("check")
    section = {}
    current = None
    for ln in text.splitlines():
        if re.match(r"^[A-Z][^:]*:$", ln):
            current = ln[:-1]
        m = re.match(r"^  (--[a-z-]+)", ln)
        if m and current:
            section[m.group(1)] = current
    assert section["--classes"].startswith("What to check")
    assert section["--convention"] == "How TARGET is called"
    assert section["--tensor-parallel"] == section["--hidden"] == \
        "Ranks and fused linear cross-entropy"
    assert section["--tolerance"] == section["--atol"] == "References and tolerances"
    assert section["--json"] == section["--fail-fast"] == "Output"


def test_check_help_shows_defaults_and_explains_tolerance_torch():
    text = " ".join(help_text("check").split())
    assert "[default: 10]" in text and "[default: strict]" in text
    for mode in ("strict =", "native =", "torch (--hidden only) ="):
        assert mode in text
