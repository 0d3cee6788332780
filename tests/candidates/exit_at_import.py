"""A TARGET module that ends with sys.exit(0) when it is imported (tests/test_trust.py)."""

import sys


def grad(logits, target):
    return logits


sys.exit(0)
