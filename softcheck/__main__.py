"""python -m softcheck: the command line."""

from .cli import main

main()
