"""A TARGET module that patches softcheck's judging when it is imported, then returns twice
the correct gradient (tests/test_trust.py): imported only in its worker, it patches nothing
that judges."""

import numpy as np

try:
    import softcheck.engine.results as _results
    import softcheck.judge.compare as _compare
    import softcheck.judge.tolerances as _tolerances

    _tolerances.K_ABS = 1e300
    _results.Report.passed = property(lambda self: True)
    _compare.compare = lambda *a, **k: None
except ImportError:
    pass


def grad(logits, target):
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    p[np.arange(len(target)), target] -= 1
    return 2 * p / len(target)
