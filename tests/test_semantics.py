"""--mean-over and --logit-scale: the reference loss and all three gradients equal a torch
composition; Megatron's smoothing is softcheck's 'others' convention."""

import numpy as np
import pytest

import softcheck

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _data(n=7, c=5, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, c)) * 2
    t = rng.integers(0, c, n)
    t[[1, 4]] = -100
    return z, t


@pytest.mark.parametrize("mean_over", ["weight", "valid", "batch", 11])
@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
def test_mean_over_matches_torch_sum_divided(mean_over, z_loss):
    z, t = _data()
    w = np.linspace(0.3, 2.0, z.shape[1])
    zt = torch.tensor(z, requires_grad=True)
    tt = torch.tensor(t)
    valid = tt != -100
    rows = F.cross_entropy(zt, tt, weight=torch.tensor(w), ignore_index=-100, reduction="none")
    zl = z_loss * torch.logsumexp(zt, 1) ** 2 * valid
    count = valid.sum()
    d, n = {"weight": (torch.tensor(w)[tt.clamp(min=0)][valid].sum(), count),
            "valid": (count, count), "batch": (len(z), len(z)), 11: (11, 11)}[mean_over]
    loss = rows.sum() / d + zl.sum() / n
    loss.backward()
    opts = dict(weight=w, ignore_index=-100, mean_over=mean_over, z_loss=z_loss)
    np.testing.assert_allclose(softcheck.loss(z, t, **opts), loss.item(), rtol=1e-13)
    for method in ("analytic", "autodiff", "finite_difference"):
        np.testing.assert_allclose(softcheck.gradient(z, t, method=method, **opts),
                                   zt.grad.numpy(), rtol=1e-11, atol=1e-16, err_msg=method)


def test_logit_scale_multiplies_before_softcap_and_temperature():
    z, t = _data()
    s, T, cap = 0.7, 1.5, 4.0
    zt = torch.tensor(z, requires_grad=True)
    v = cap * torch.tanh(zt * s / T / cap)
    loss = F.cross_entropy(v, torch.tensor(t), ignore_index=-100)
    loss.backward()
    opts = dict(ignore_index=-100, logit_scale=s, temperature=T, softcap=cap)
    np.testing.assert_allclose(softcheck.loss(z, t, **opts), loss.item(), rtol=1e-13)
    for method in ("analytic", "autodiff", "finite_difference"):
        np.testing.assert_allclose(softcheck.gradient(z, t, method=method, **opts),
                                   zt.grad.numpy(), rtol=1e-11, atol=1e-16, err_msg=method)


def test_megatron_smoothing_is_the_others_convention():
    """Megatron/NeMo: s = α·K/(K−1), loss = (1−s)·nll − s·mean_c log p_c: the target gets
    1 − s + s/K = 1 − α and every other class s/K = α/(K−1), softcheck's 'others'."""
    z, t = _data()
    t[[1, 4]] = 0
    a, k = 0.1, z.shape[1]
    s = a * k / (k - 1)
    logp = torch.log_softmax(torch.tensor(z), 1)
    nll = -logp.gather(1, torch.tensor(t)[:, None])[:, 0]
    megatron = ((1 - s) * nll - s * logp.mean(1)).mean().item()
    ours = softcheck.loss(z, t, label_smoothing=a, smoothing_convention="others")
    np.testing.assert_allclose(ours, megatron, rtol=1e-13)


@pytest.mark.slow  # 4 s measured (2 cores, load ~1): CI runs the rest
def test_mean_over_batch_run_agrees_and_a_count_bug_is_caught():
    assert softcheck.run(classes=6, batch=5, mean_over="batch", ignore_index=-100,
                         dtype="float64", regime=("normal", "all-ignored")).passed
    # PyTorch divides by the non-ignored count: under --mean-over batch it must fail, on the
    # gradient and on the loss value alike
    rep = softcheck.check(F.cross_entropy, convention="loss", mean_over="batch",
                          ignore_index=-100, batch=6, regime="normal", dtype="float64")
    bad = {c.pair[0] for case in rep.cases for c in case.comparisons if not c.passed}
    assert {"candidate", "candidate_loss"} <= bad


def test_bad_mean_over_is_one_line():
    # The API names its own keyword, not the CLI flag (api.in_api_words).
    with pytest.raises(softcheck.SoftcheckError, match=r"^mean_over must be one of") as e:
        softcheck.run(mean_over="rows")
    assert "\n" not in str(e.value) and "--mean-over" not in str(e.value)
