"""The reference loss and all three gradients equal PyTorch's F.cross_entropy (and optax)."""

import itertools

import numpy as np
import pytest

import softcheck

torch = pytest.importorskip("torch")
F = torch.nn.functional

GRID = list(itertools.product([None, "w"], [None, -100, 2], [0.0, 0.15], ["mean", "sum", "none"],
                              ["index", "probs"]))


def _data(targets, ignore_index, n=7, c=5, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, c)) * 2
    if targets == "index":
        t = rng.integers(0, c, n)
        if ignore_index is not None:
            t[[1, 4]] = ignore_index
    else:
        t = rng.random((n, c))
        t[::2] /= t[::2].sum(1, keepdims=True)       # some rows normalized, some not
    return z, t


@pytest.mark.parametrize("weight,ignore_index,eps,reduction,targets", GRID)
def test_loss_and_gradients_equal_torch(weight, ignore_index, eps, reduction, targets):
    if targets == "probs" and ignore_index is not None and ignore_index >= 0:
        pytest.skip("torch rejects a non-negative ignore_index with probability targets")
    z, t = _data(targets, ignore_index)
    w = np.linspace(0.3, 2.0, z.shape[1]) if weight else None
    go = np.linspace(0.5, 1.5, len(z)) if reduction == "none" else 1.0
    zt = torch.tensor(z, requires_grad=True)
    kw = dict(weight=None if w is None else torch.tensor(w), reduction=reduction,
              label_smoothing=eps)
    if ignore_index is not None:
        kw["ignore_index"] = ignore_index
    out = F.cross_entropy(zt, torch.tensor(t), **kw)
    out.backward(torch.as_tensor(go, dtype=torch.float64).expand_as(out))
    opts = dict(weight=w, label_smoothing=eps, reduction=reduction, ignore_index=ignore_index)
    ours = softcheck.loss(z, t, **opts)
    np.testing.assert_allclose(ours, out.detach().numpy(), rtol=1e-14, atol=1e-15)
    for method in ("analytic", "autodiff", "finite_difference"):
        g = softcheck.gradient(z, t, method=method, grad_output=go, **opts)
        np.testing.assert_allclose(g, zt.grad.numpy(), rtol=1e-12, atol=1e-15, err_msg=method)


def test_all_ignored_matches_torch_nan_loss_zero_grad():
    z, t = _data("index", None)
    t[:] = -100
    zt = torch.tensor(z, requires_grad=True)
    out = F.cross_entropy(zt, torch.tensor(t))
    out.backward()
    assert np.isnan(out.item()) and np.isnan(softcheck.loss(z, t, ignore_index=-100))
    assert np.all(zt.grad.numpy() == 0)
    assert np.all(softcheck.gradient(z, t, ignore_index=-100) == 0)


def test_probability_targets_equal_optax():
    optax = pytest.importorskip("optax")
    z, t = _data("probs", None)
    ours = softcheck.loss(z, t, reduction="none")
    np.testing.assert_allclose(ours, np.asarray(optax.softmax_cross_entropy(z, t)), rtol=1e-14)


def test_softcap_temperature_zloss_match_a_torch_composition():
    """The LLM-kernel options composed by hand in torch (Liger/flash-attn conventions)."""
    z, t = _data("index", -100)
    T, S, coef, eps = 1.5, 20.0, 1e-3, 0.1
    zt = torch.tensor(z, requires_grad=True)
    v = S * torch.tanh(zt / T / S)
    tt = torch.tensor(t)
    ce = F.cross_entropy(v, tt, ignore_index=-100, label_smoothing=eps, reduction="sum")
    valid = tt != -100
    lse = torch.logsumexp(v, 1)
    loss = ce / valid.sum() + coef * (lse[valid] ** 2).sum() / valid.sum()
    loss.backward()
    opts = dict(ignore_index=-100, label_smoothing=eps, temperature=T, softcap=S, z_loss=coef)
    np.testing.assert_allclose(softcheck.loss(z, t, **opts), loss.item(), rtol=1e-13)
    for method in ("analytic", "autodiff", "finite_difference"):
        np.testing.assert_allclose(softcheck.gradient(z, t, method=method, **opts),
                                   zt.grad.numpy(), rtol=1e-11, atol=1e-16)
