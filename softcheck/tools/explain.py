"""``softcheck explain``: the textbook derivation of the gradient, each step checked on numbers.

One example row z (C logits) with target y (one-hot from a class index, or a probability
vector).  Each step computes its formula in numpy (float64) and the same quantity
independently (JAX: ``jax.nn.softmax``, ``jax.grad``, ``jax.jacobian`` of the plain
definitions, or softcheck's reference loss), and reports the max |difference|.  True steps hold
to ≤ 1e-12; the classic slips are computed the same way and shown *not* to hold.

The derivation (the one in ``shared/seed``)::

    p_i = e^{z_i} / Σ_j e^{z_j}                 softmax, Σ p = 1
    L = −Σ_i y_i log p_i                        ∂L/∂p_i = −y_i / p_i
    ∂p_i/∂z_j = p_i(1 − p_i)   (i = j)           the softmax Jacobian
              = −p_i p_j       (i ≠ j)
    ∂L/∂z_i = Σ_j ∂L/∂p_j · ∂p_j/∂z_i            chain rule through every output
            = −y_i(1 − p_i) + Σ_{j≠i} y_j p_i
            = p_i Σ_j y_j − y_i                  = p_i − y_i when Σ y = 1
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..reference.analytic import softmax

TOL = 1e-12          # a true step holds to this (float64 on O(1) numbers; the bound)
SLIP_MIN = 1e-3      # a slip must be wrong by at least this to count as shown wrong


@dataclass(frozen=True)
class Step:
    title: str
    formula: str
    value: np.ndarray                # from the formula
    independent: np.ndarray          # computed another way
    method: str                      # how ``independent`` was computed
    slip: bool = False
    note: str = ""

    @property
    def max_abs_error(self) -> float:
        a, b = np.asarray(self.value, np.float64), np.asarray(self.independent, np.float64)
        d = np.abs(a - b)
        return float(np.max(d)) if np.all(np.isfinite(d)) else float("inf")

    @property
    def holds(self) -> bool:
        return self.max_abs_error <= TOL

    @property
    def as_expected(self) -> bool:
        """A true step holds; a slip is wrong by a clear margin."""
        return self.max_abs_error >= SLIP_MIN if self.slip else self.holds

    def to_dict(self) -> dict:
        return {"title": self.title, "formula": self.formula, "kind": "slip" if self.slip else "step",
                "max_abs_error": self.max_abs_error, "holds": self.holds,
                "value": np.asarray(self.value).tolist(),
                "independent": np.asarray(self.independent).tolist(),
                "independent_method": self.method, "note": self.note}


@dataclass(frozen=True)
class Explanation:
    logits: np.ndarray
    target: np.ndarray               # the dense target vector y
    label: int | None                # the true class for index targets
    options: dict
    steps: tuple[Step, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return all(s.as_expected for s in self.steps)

    def to_json(self) -> str:
        import json

        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def to_dict(self) -> dict:
        from ..engine.results import sanitize

        return sanitize({"passed": self.passed, "logits": self.logits.tolist(),
                         "target": self.target.tolist(), "label": self.label,
                         "options": self.options, "tolerance": TOL,
                         "steps": [s.to_dict() for s in self.steps]})


def example(classes: int, seed: int, targets: str):
    """A row of logits and its target: a class index (one-hot y) or a probability vector."""
    rng = np.random.default_rng([seed, 8])
    z = np.round(rng.normal(0.0, 1.5, classes), 2)
    if targets == "index":
        label = int(rng.integers(classes))
        y = np.zeros(classes)
        y[label] = 1.0
        return z, y, label
    y = rng.dirichlet(np.ones(classes))
    return z, y, None


OPTIONS = ("label_smoothing", "temperature", "softcap", "z_loss", "weight", "ignore_index",
           "reduction")
#: options explained on a batch of rows (the others on the one example row)
BATCH_OPTIONS = ("ignore_index", "reduction")
BATCH = 4


def explain(classes: int = 4, seed: int = 0, targets: str = "index", **options) -> Explanation:
    """Every step of the derivation (plus one per option given, and the slips), verified.

    ``options``: those of :data:`OPTIONS` (``weight`` may be ``"random"``); a bad value raises
    :class:`SoftcheckError` before any work."""
    from ..reference.jaxsetup import load
    from ..spec import LossSpec, SoftcheckError
    from ..suite.config import normalize_weight
    from ..suite.inputs import class_weights

    options = {k: v for k, v in options.items() if v is not None or k not in BATCH_OPTIONS}
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise SoftcheckError(f"explain takes no option {', '.join(sorted(unknown))}")
    weight = normalize_weight(options.get("weight"))
    if weight == "random":
        weight = tuple(class_weights(classes, seed))
    if "weight" in options:
        options["weight"] = weight
    LossSpec(targets="index" if targets == "index" else "probs", **options).validate(classes)
    default = LossSpec()
    given = {k: v for k, v in options.items()
             if v != getattr(default, k) and k not in BATCH_OPTIONS}
    batch = {k: options[k] for k in BATCH_OPTIONS if k in options}
    jax, jnp = load()
    z, y, label = example(classes, seed, targets)
    p = np.exp(z) / np.sum(np.exp(z))                       # the formula, literally
    jz, jy = jnp.asarray(z), jnp.asarray(y)

    def loss_of_p(q):
        return -jnp.sum(jy * jnp.log(q))

    def loss_of_z(v):
        return loss_of_p(jax.nn.softmax(v))

    dL_dp = -y / p
    J = np.diag(p) - np.outer(p, p)                          # ∂p_i/∂z_j from the two cases
    J_jax = np.asarray(jax.jacobian(jax.nn.softmax)(jz))
    grad_jax = np.asarray(jax.grad(loss_of_z)(jz))
    diag = np.eye(classes, dtype=bool)
    chain = np.array([sum(dL_dp[j] * J[j, i] for j in range(classes)) for i in range(classes)])
    one_hot = label is not None

    steps = [
        Step("Softmax", "pᵢ = exp(zᵢ) / Σⱼ exp(zⱼ)", p, np.asarray(jax.nn.softmax(jz)),
             "jax.nn.softmax"),
        Step("Normalization", "Σᵢ pᵢ = 1", np.array(np.sum(p)), np.array(1.0), "exact"),
        Step("The loss", "L = −Σᵢ yᵢ log pᵢ" + (f"  (= −log p_{label}: y is one-hot)" if one_hot else ""),
             np.array(-np.sum(y * np.log(p))), np.asarray(-jax.nn.log_softmax(jz) @ jy),
             "jax.nn.log_softmax"),
        Step("Gradient w.r.t. the probabilities", "∂L/∂pᵢ = −yᵢ / pᵢ", dL_dp,
             np.asarray(jax.grad(loss_of_p)(jnp.asarray(p))), "jax.grad of L(p)"),
        Step("Softmax Jacobian, i = j", "∂pᵢ/∂zᵢ = pᵢ(1 − pᵢ)", p * (1 - p), np.diag(J_jax),
             "jax.jacobian, diagonal"),
        Step("Softmax Jacobian, i ≠ j", "∂pᵢ/∂zⱼ = −pᵢ pⱼ", np.where(diag, 0.0, -np.outer(p, p)),
             np.where(diag, 0.0, J_jax), "jax.jacobian, off-diag.",
             note="together: J = diag(p) − p pᵀ"),
        Step("Chain rule through every output", "∂L/∂zᵢ = Σⱼ ∂L/∂pⱼ · ∂pⱼ/∂zᵢ", chain, grad_jax,
             "jax.grad of L(z)",
             note="all j, not just j = i: every pⱼ depends on zᵢ through the denominator"),
        Step("Simplified", "∂L/∂zᵢ = pᵢ·Σⱼ yⱼ − yᵢ", p * np.sum(y) - y, grad_jax,
             "jax.grad of L(z)",
             note="−yᵢ(1 − pᵢ) + Σ_{j≠i} yⱼ pᵢ = pᵢ Σⱼ yⱼ − yᵢ"),
        Step("Targets summing to one", "∂L/∂z = p − y" + (f"  (p_{label} − 1 at the true class "
                                                           f"{label}, pᵢ elsewhere)" if one_hot else ""),
             p - y, grad_jax, "jax.grad of L(z)",
             note="the gradient w.r.t. the logits; w.r.t. the probabilities it is −y/p"),
    ]
    steps += _option_steps(z, y, label, given)
    if batch:
        steps += _batch_steps(classes, seed, batch, given.get("weight"))
    y_bad = y * 1.5 + 0.1                      # a target vector that does not sum to one
    grad_bad = np.asarray(jax.grad(lambda v: -jnp.sum(jnp.asarray(y_bad) * jax.nn.log_softmax(v)))(jz))
    steps += [
        Step("Slip: p − y taken as ∂L/∂p", "∂L/∂pᵢ = pᵢ − yᵢ   ✗", p - y,
             np.asarray(jax.grad(loss_of_p)(jnp.asarray(p))), "jax.grad of L(p)", slip=True,
             note="p − y is ∂L/∂z; ∂L/∂p is −y/p"),
        Step("Slip: only the diagonal of the Jacobian", "∂L/∂zᵢ = ∂L/∂pᵢ · pᵢ(1 − pᵢ)   ✗",
             dL_dp * p * (1 - p), grad_jax, "jax.grad of L(z)", slip=True,
             note="drops the i ≠ j terms −pᵢpⱼ of the chain rule"),
        Step("Slip: p − y when Σy ≠ 1", f"y' = 1.5·y + 0.1 (Σy' = {np.sum(y_bad):g}): "
             "∂L/∂z = p − y'   ✗", p - y_bad, grad_bad, "jax.grad of L(z) with y'", slip=True,
             note="the general form is p·Σy' − y'"),
    ]
    return Explanation(z, y, label, {"classes": classes, "seed": seed, "targets": targets,
                                     **options}, tuple(steps))


def _batch_steps(classes: int, seed: int, batch: dict, weight) -> list[Step]:
    """``--ignore-index`` and ``--reduction`` on a batch of :data:`BATCH` rows (row 1 ignored
    when an ignore index is given): ignored rows get a zero gradient, and the mean divides by
    the non-ignored count (the weight sum with class weights), not by N — the most common real
    bug, shown as a slip.  Each against jax.grad of softcheck's reference loss."""
    from ..reference import autodiff as reference_autodiff
    from ..suite.inputs import make_inputs_from_arrays

    rng = np.random.default_rng([seed, 9])
    Z = np.round(rng.normal(0.0, 1.5, (BATCH, classes)), 2)
    ii = batch.get("ignore_index")
    red = batch.get("reduction") or "mean"
    labels = rng.integers(0, classes, BATCH)
    if ii is not None and 0 <= ii < classes:
        labels = np.where(labels == ii, (labels + 1) % classes, labels)
    target = labels.copy()
    ignored = np.zeros(BATCH, bool)
    if ii is not None:
        target[1], ignored[1] = ii, True
    w = np.ones(classes) if weight is None else np.asarray(weight, np.float64)
    wy = np.where(ignored, 0.0, w[labels])
    Y = np.zeros((BATCH, classes))
    Y[np.arange(BATCH), labels] = 1.0
    P = np.exp(Z) / np.sum(np.exp(Z), -1, keepdims=True)
    per_row = wy[:, None] * (P - Y)                        # ∂ℓᵢ/∂zᵢ, zero for ignored rows
    inp = make_inputs_from_arrays(Z, target, reduction=red, ignore_index=ii,
                                  weight=None if weight is None else w)
    auto = reference_autodiff.autodiff(inp)
    out = []
    kept = int(np.sum(~ignored))
    if ii is not None:
        out.append(Step(f"Ignored rows (ignore_index = {ii})",
                        "yᵢ = ignore_index  ⇒  ℓᵢ = 0 and ∂L/∂zᵢ = 0", per_row[ignored],
                        auto[ignored], "jax.grad, reference loss",
                        note=f"row 1 of {BATCH} is ignored: {kept} rows contribute"))
    if red == "mean":
        denom = float(np.sum(wy))
        what = (f"the weight sum Σ w_yᵢ over non-ignored rows = {denom:g}" if weight is not None
                else f"the non-ignored count = {kept}")
        out.append(Step("Reduction mean: the denominator",
                        "L = Σᵢ w_yᵢ ℓᵢ / D;  ∂L/∂zᵢ = w_yᵢ (pᵢ − yᵢ) / D", per_row / denom,
                        auto, "jax.grad, reference loss",
                        note=f"D is {what}, not N = {BATCH}"))
        if abs(denom - BATCH) > 1e-12:
            out.append(Step(f"Slip: dividing by N = {BATCH}",
                            "∂L/∂zᵢ = w_yᵢ (pᵢ − yᵢ) / N   ✗", per_row / BATCH, auto,
                            "jax.grad, reference loss", slip=True,
                            note=f"the mean is over {what}, not over the batch size"))
    else:
        out.append(Step(f"Reduction {red}", "L = Σᵢ w_yᵢ ℓᵢ" if red == "sum" else
                        "L = (w_yᵢ ℓᵢ)ᵢ, one loss per row;  ∂Lᵢ/∂zᵢ = w_yᵢ (pᵢ − yᵢ)",
                        per_row, auto, "jax.grad, reference loss",
                        note="no denominator" + ("" if red == "sum" else
                                                 " (upstream gradient 1 per row)")))
    return out


def _option_steps(z, y, label, given: dict) -> list[Step]:
    """One step per option given: its closed-form factor alone, against jax.grad of softcheck's
    reference loss with that option (batch of one row, reduction sum); then all together."""
    from ..reference import analytic, autodiff as reference_autodiff
    from ..suite.inputs import make_inputs_from_arrays

    C = len(z)
    tgt = np.array([label]) if label is not None else y[None]
    def autodiff(**opts):
        inp = make_inputs_from_arrays(z[None], tgt, reduction="sum", **opts)
        return reference_autodiff.autodiff(inp)[0]

    def closed(**opts):
        inp = make_inputs_from_arrays(z[None], tgt, reduction="sum", **opts)
        return analytic.gradient(inp)[0]

    out = []
    for k, v in given.items():
        if k == "label_smoothing":
            q = (1 - v) * y + v / C
            out.append(Step(f"Label smoothing ε = {v:g}", "q = (1 − ε)·y + ε/C;  ∂L/∂z = p·Σq − q",
                            softmax(z) * np.sum(q) - q, autodiff(label_smoothing=v),
                            "jax.grad, reference loss", note="the target changes, the form does not"))
        elif k == "temperature":
            pT = softmax(z / v)
            out.append(Step(f"Temperature T = {v:g}", "p = softmax(z/T);  ∂L/∂z = (p·Σy − y) / T",
                            (pT * np.sum(y) - y) / v, autodiff(temperature=v),
                            "jax.grad, reference loss", note="chain factor ∂(z/T)/∂z = 1/T"))
        elif k == "softcap":
            t = np.tanh(z / v)
            pv = softmax(v * t)
            out.append(Step(f"Soft-capping S = {v:g}",
                            "v = S·tanh(z/S);  ∂L/∂z = (p·Σy − y) ⊙ (1 − tanh²(z/S))",
                            (pv * np.sum(y) - y) * (1 - t ** 2), autodiff(softcap=v),
                            "jax.grad, reference loss", note="p = softmax(v)"))
        elif k == "z_loss":
            lse = np.log(np.sum(np.exp(z)))
            p = softmax(z)
            out.append(Step(f"z-loss COEF = {v:g}",
                            "L += COEF·lse(z)²;  ∂L/∂z = p·Σy − y + 2·COEF·lse·p",
                            p * np.sum(y) - y + 2 * v * lse * p, autodiff(z_loss=v),
                            "jax.grad, reference loss", note="∂lse/∂z = p"))
        elif k == "weight":
            w = np.asarray(v, np.float64)
            m = w * y
            out.append(Step("Class weights w", "L = −Σᵢ wᵢ yᵢ log pᵢ;  ∂L/∂z = p·Σ(w⊙y) − w⊙y",
                            softmax(z) * np.sum(m) - m, autodiff(weight=w),
                            "jax.grad, reference loss",
                            note="for a class index: w_y (p − y)"))
    if len(given) > 1:
        out.append(Step("All options together", "softcheck's closed form (analytic.py)",
                        closed(**given), autodiff(**given), "jax.grad, reference loss"))
    return out
