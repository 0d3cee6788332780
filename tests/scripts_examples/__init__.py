"""scripts/examples as an importable package for the tests."""
import os
__path__ = [os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "examples")]
