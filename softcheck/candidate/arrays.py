"""What a candidate returned, as arrays: ``to_array`` (numpy, JAX, torch, cupy, lists,
ml_dtypes' low-precision floats → a float ndarray of the case's shape, or the reason it is
not one) and the comparisons of repeated calls (``same_values``, ``max_difference``)."""

from __future__ import annotations

import numpy as np


class CandidateError(Exception):
    """The candidate misbehaved on one case: the case fails with this reason."""


#: elements per block when a large (N, C) array is walked a block of rows at a time
BLOCK = 1 << 20


def row_blocks(shape: tuple[int, ...], block: int = BLOCK):
    """Slices of whole rows of an (N, C) array, about ``block`` elements each."""
    step = max(1, block // max(1, shape[1]))
    return (slice(i, i + step) for i in range(0, shape[0], step))


def same_values(a, b, block: int = BLOCK) -> bool:
    """``np.array_equal(a, b, equal_nan=True)`` a block of rows at a time (no full-size
    temporary for a large case's logits); bitwise-equal blocks are recognised in one pass."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 2 or a.size <= block:
        return np.array_equal(a, b, equal_nan=True)
    return all(same_bits(a[r], b[r]) or np.array_equal(a[r], b[r], equal_nan=True)
               for r in row_blocks(a.shape, block))


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equality of two arrays of one dtype and shape (False when unsure: compare
    values then)."""
    if a.dtype != b.dtype or a.shape != b.shape or a.dtype.itemsize not in (2, 4, 8):
        return False
    u = np.dtype(f"u{a.dtype.itemsize}")
    try:
        return bool(np.array_equal(a.view(u), b.view(u)))
    except ValueError:                         # a view that cannot be reinterpreted
        return False


def max_difference(a: np.ndarray, b: np.ndarray) -> float:
    """max |a − b|, NaN against NaN counting as equal and NaN against a number as inf."""
    both_nan = np.isnan(a) & np.isnan(b)
    with np.errstate(all="ignore"):
        d = np.abs(a - b)
    d = np.where(both_nan | (a == b), 0.0, np.where(np.isnan(d), np.inf, d))
    return float(d.max()) if d.size else 0.0


def to_array(out, shape, *, low: bool = False) -> np.ndarray:
    """numpy / JAX / torch (grad-requiring, GPU, bfloat16) / lists → float ndarray of ``shape``.
    ml_dtypes' low-precision floats become float32 (exact), unless ``low``: a streamed case's
    sink takes them as they are (a float32 copy of a 4096×131072 bfloat16 gradient is 2 GiB)."""
    if out is None:
        raise CandidateError("returned None instead of a gradient array")
    if isinstance(out, (str, bytes)):
        raise CandidateError(f"returned a {type(out).__name__} instead of a gradient array")
    if hasattr(out, "detach") and hasattr(out, "cpu"):            # torch
        t = out.detach().cpu()
        if not t.is_floating_point():
            raise CandidateError(f"returned a {t.dtype} tensor, not a floating-point gradient")
        if str(t.dtype) in ("torch.bfloat16", "torch.float16"):
            t = t.float()
        out = t.numpy()
    elif hasattr(out, "get") and type(out).__module__.startswith("cupy"):
        out = out.get()
    try:
        arr = np.asarray(out)
    except Exception as e:  # noqa: BLE001
        raise CandidateError(f"returned {type(out).__name__}, which is not array-like ({e})") from e
    ml_low = arr.dtype.kind == "V" and arr.dtype.name.startswith(("bfloat16", "float8", "float6",
                                                                   "float4"))
    if ml_low and not low:
        arr = arr.astype(np.float32)          # ml_dtypes' low-precision floats (exact)
    if arr.dtype.kind not in "fiu" and not ml_low:
        raise CandidateError(f"returned an array of dtype {arr.dtype}, not a numeric gradient")
    if arr.shape != tuple(shape):
        if arr.shape == tuple(shape)[::-1] and shape[0] != shape[1]:
            raise CandidateError(f"returned shape {arr.shape}: the transpose of the expected "
                                 f"(N, C) = {tuple(shape)}")
        loss = arr.ndim == 0 or arr.shape == tuple(shape)[:1]     # a scalar or per-row loss
        raise CandidateError(f"returned shape {arr.shape}, expected (N, C) = {tuple(shape)}"
                             + ("; that is a loss's shape: did you mean --convention loss?"
                                if loss else ""))
    return arr


# -- the strided layout (--layout strided) ----------------------------------------------------
def padded_buffer(a, pad: int) -> np.ndarray:
    """An (N, C + pad) buffer holding the (N, C) array ``a`` in its first C columns, the
    padding NaN (a kernel that reads past column C sees NaN)."""
    a = np.asarray(a)
    buf = np.empty((a.shape[0], a.shape[1] + pad), a.dtype)
    buf[:, a.shape[1]:] = np.nan
    buf[:, :a.shape[1]] = a
    return buf


def padded(a, pad: int) -> np.ndarray:
    """A fresh copy of ``a``: for a 2-D array and ``pad`` > 0 the non-contiguous view
    buf[:, :C] of :func:`padded_buffer` (row stride C + pad), else a plain copy."""
    a = np.asarray(a)
    if pad <= 0 or a.ndim != 2:
        return np.array(a, copy=True)
    return padded_buffer(a, pad)[:, :a.shape[1]]


def row_pad(a) -> int:
    """Elements between the end of one row of a 2-D array and the start of the next (0 for
    contiguous rows)."""
    a = np.asarray(a)
    if a.ndim != 2 or a.strides[1] != a.itemsize or a.strides[0] % a.itemsize:
        return 0
    return max(0, a.strides[0] // a.itemsize - a.shape[1])


def copy_layout(a) -> np.ndarray:
    """A fresh copy of ``a`` with the same row stride (a strided view stays strided)."""
    return padded(a, row_pad(a))


def layout_note(pad: int, classes: int, framework: str | None = None,
                transposed: bool = False) -> list[str]:
    """The case note of --layout strided / transposed (none for contiguous logits)."""
    if transposed:
        return ["--layout transposed: JAX arrays have no strides; the candidate received "
                "contiguous logits"] if framework == "jax" else [
            "logits passed as a (B, T, V) view of a (T, B, V) buffer (--layout transposed: "
            "strides (V, B·V, 1) elements)"]
    if not pad:
        return []
    if framework == "jax":
        return [f"--layout strided: JAX arrays have no strides; the candidate received "
                f"contiguous logits (row stride {classes + pad} asked)"]
    return [f"logits passed as a non-contiguous view, row stride V+{pad} = {classes + pad} "
            "elements (the padding holds NaN)"]
