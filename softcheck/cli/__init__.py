"""The command line (``softcheck``): parse, call the library, render, pick the exit code."""

from __future__ import annotations

from .app import EXIT_FAIL, EXIT_INTERNAL, EXIT_OK, EXIT_USAGE
from .commands import cli


def main() -> None:
    cli.main()


__all__ = ["EXIT_FAIL", "EXIT_INTERNAL", "EXIT_OK", "EXIT_USAGE", "cli", "main"]
