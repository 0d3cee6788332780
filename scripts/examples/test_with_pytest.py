"""A complete pytest file using softcheck's plugin: one test per case, the diagnosis on failure.

Run:  pytest scripts/examples/test_with_pytest.py -v --softcheck-json softcheck.json
"""

import numpy as np

import softcheck.testing


def my_grad(logits, target):
    """The kernel under test: ∂ mean-CE / ∂ logits."""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(target)), target] -= 1
    return (p / len(target)).astype(logits.dtype)


@softcheck.testing.parametrize(classes=10, batch=6)
def test_ce(case):
    softcheck.testing.check_case(my_grad, case)


def test_ce_whole_suite():
    softcheck.testing.assert_gradient_correct(my_grad, classes=7, batch=3, regime="normal")
