"""python -m softcheck: the command line.  The working folder that ``-m`` put first on
sys.path is gone already (softcheck/__init__.py drops it before any other import)."""

from .cli import main

main()
