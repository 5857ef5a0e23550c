"""Exact loss values on batches simple enough to solve by hand.

Two batches of B pairs in dim >= 2B:

- *aligned*: `zimg = ztxt = e_1..e_B` (orthonormal): each positive has cosine 1, each negative 0;
- *orthogonal*: `zimg = e_1..e_B`, `ztxt = e_{B+1}..e_{2B}`: every cosine is 0, which is what a
  freshly initialised model looks like in high dimension (SigLIP "at init").

Each function returns a float64 value, for `LossProperties.aligned_value` / `orthogonal_value`.
"""

import math

import numpy as np

__all__ = [
    "aligned_batch",
    "clip_aligned",
    "clip_orthogonal",
    "orthogonal_batch",
    "sigmoid_aligned",
    "sigmoid_orthogonal",
    "softplus",
]


def softplus(x: float) -> float:
    """`log(1 + exp(x))` without overflow."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def aligned_batch(batch: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """`zimg = ztxt = ` the first `batch` basis vectors of R^dim."""
    if dim < batch:
        raise ValueError(f"aligned_batch: need dim >= batch, got dim={dim}, batch={batch}")
    e = np.eye(dim, dtype=np.float32)[:batch]
    return e, e.copy()


def orthogonal_batch(batch: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """`zimg` = basis vectors 1..B, `ztxt` = basis vectors B+1..2B: all cosines zero."""
    if dim < 2 * batch:
        raise ValueError(f"orthogonal_batch: need dim >= 2 * batch, got dim={dim}, batch={batch}")
    e = np.eye(dim, dtype=np.float32)
    return e[:batch], e[batch : 2 * batch]


def clip_aligned(batch: int, scale: float, bias: float = 0.0, label_smoothing: float = 0.0) -> float:
    """`clip_loss` on the aligned batch: `log(e^s + B - 1) - s * (1 - eps + eps / B)`.

    Without smoothing that is `log(1 + (B - 1) e^-s)`: zero only as the scale grows.
    """
    lse = scale + math.log1p((batch - 1) * math.exp(-scale)) if scale >= 0 else math.log(math.exp(scale) + batch - 1)
    return lse - scale * (1.0 - label_smoothing + label_smoothing / batch)


def clip_orthogonal(batch: int, scale: float, bias: float = 0.0) -> float:
    """`clip_loss` when every cosine is 0: all logits equal, so `log(B)` whatever the scale."""
    return math.log(batch)


def sigmoid_aligned(batch: int, scale: float, bias: float) -> float:
    """`sigmoid_loss` on the aligned batch: `softplus(-(s + b)) + (B - 1) softplus(b)`."""
    return softplus(-(scale + bias)) + (batch - 1) * softplus(bias)


def sigmoid_orthogonal(batch: int, scale: float, bias: float) -> float:
    """`sigmoid_loss` when every cosine is 0: `softplus(-b) + (B - 1) softplus(b)`.

    At SigLIP's init (b = -10) that is `softplus(10) + (B - 1) softplus(-10)`
    = 10.0000454 + 4.54e-5 (B - 1).
    """
    return softplus(-bias) + (batch - 1) * softplus(bias)
