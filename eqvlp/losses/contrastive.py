"""Softmax (CLIP) and sigmoid (SigLIP) contrastive losses on one device: the references.

Both take L2-normalised `(batch, dim)` embeddings (see `normalize`) and the logit multiplier
`scale` itself, not its log, as open_clip's `ClipLoss` / `SigLipLoss` do: the model owns the
`log_scale` parameter, its clamp (CLIP: `exp(s) <= 100`) and its init. Row `i` of `zimg` and row
`i` of `ztxt` are a positive pair; every other pairing is a negative.

The same functions serve text-text contrastive training (CLIPPO co-training): pass the two text
renders' embeddings as `zimg` and `ztxt`.

Logits are computed in float32 whatever the embedding dtype, so bf16 towers get f32 losses.
"""

import warnings

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Real

from eqvlp.losses.validation import check_finite, check_pair, check_scalar

__all__ = ["clip_loss", "sigmoid_loss", "softmax_xent_rows"]


def clip_loss(
    zimg: Float[Array, "batch dim"],
    ztxt: Float[Array, "batch dim"],
    scale: Real[ArrayLike, ""],
    *,
    label_smoothing: float = 0.0,
) -> Float[Array, ""]:
    """Softmax contrastive loss, image-to-text and text-to-image cross-entropies averaged.

    With `L = scale * zimg @ ztxt.T` and smoothed targets `q = (1 - eps) I + eps / B`:

        loss = (1 / 2B) * sum_i [CE(L[i, :], q[i]) + CE(L[:, i], q[i])]

    `label_smoothing=eps` spreads `eps` over all B columns (the diagonal included), as torch's
    `cross_entropy(label_smoothing=...)` and clip-rocket's local terms do.

    **Arguments:**

    - `zimg`, `ztxt`: L2-normalised embeddings; row i of each is a pair.
    - `scale`: the logit multiplier `exp(log_scale)` (CLIP init 1/0.07).
    - `label_smoothing`: in [0, 1).

    **Returns:** the scalar loss (float32).
    """
    check_pair("clip_loss", zimg, ztxt)
    s = check_scalar("clip_loss", "scale", scale, nonnegative=True)
    _check_smoothing("clip_loss", label_smoothing)
    warn_if_single_pair("clip_loss", zimg.shape[0])
    logits = s * _dot(zimg, ztxt)
    loss = 0.5 * (
        softmax_xent_rows(logits, label_smoothing) + softmax_xent_rows(logits.T, label_smoothing)
    )
    return check_finite(
        "clip_loss", loss, [("zimg", zimg), ("ztxt", ztxt), ("scale", s)], nonnegative=[("scale", s)]
    )


def sigmoid_loss(
    zimg: Float[Array, "batch dim"],
    ztxt: Float[Array, "batch dim"],
    scale: Real[ArrayLike, ""],
    bias: Real[ArrayLike, ""],
) -> Float[Array, ""]:
    """SigLIP's pairwise sigmoid loss, the full-matrix reference.

    With `L = scale * zimg @ ztxt.T + bias` and labels `m = 2I - 1`:

        loss = -(1 / B) * sum_ij log_sigmoid(m_ij * L_ij)

    i.e. the mean over image rows of the sum over all text columns. It holds a B x B array; for
    large batches use `chunked_sigmoid_loss` (same value and gradients, O(chunk * B) memory) or
    `distributed_sigmoid_loss` inside `shard_map`.

    **Arguments:**

    - `zimg`, `ztxt`: L2-normalised embeddings; row i of each is a pair.
    - `scale`: the multiplier `exp(t)` (SigLIP init 10).
    - `bias`: the logit bias `b` (SigLIP init -10).

    **Returns:** the scalar loss (float32).
    """
    check_pair("sigmoid_loss", zimg, ztxt)
    s = check_scalar("sigmoid_loss", "scale", scale, nonnegative=True)
    b = check_scalar("sigmoid_loss", "bias", bias)
    logits = s * _dot(zimg, ztxt) + b
    signed = jnp.where(jnp.eye(zimg.shape[0], dtype=bool), logits, -logits)
    loss = -jnp.sum(jax.nn.log_sigmoid(signed)) / zimg.shape[0]
    return check_finite(
        "sigmoid_loss", loss, [("zimg", zimg), ("ztxt", ztxt), ("scale", s), ("bias", b)],
        nonnegative=[("scale", s)],
    )


def softmax_xent_rows(logits: Float[Array, "rows cols"], label_smoothing: float = 0.0) -> Float[Array, ""]:
    """Mean over rows of the cross-entropy against targets on the diagonal, smoothed over all columns.

    Works for rectangular logits (rows <= cols, positives at `[i, i]`), which clip-rocket and the
    distributed losses reuse.
    """
    rows, cols = logits.shape
    lse = jax.nn.logsumexp(logits, axis=1)
    diag = jnp.diagonal(logits)[:rows]
    nll = lse - diag
    if label_smoothing == 0.0:
        return jnp.mean(nll)
    uniform = lse - jnp.mean(logits, axis=1)
    return jnp.mean((1.0 - label_smoothing) * nll + label_smoothing * uniform)


def _dot(a: Float[Array, "m dim"], b: Float[Array, "n dim"]) -> Float[Array, "m n"]:
    return jnp.einsum(
        "md,nd->mn", a.astype(jnp.float32), b.astype(jnp.float32), preferred_element_type=jnp.float32
    )


def warn_if_single_pair(fn: str, batch: int) -> None:
    """Warns (once per call site, Python's default filter) that a softmax loss over one pair is 0.

    With one pair the softmax has a single candidate: the loss is identically 0 and so is its
    gradient, so a run "trains" without learning anything.
    """
    if batch == 1:
        warnings.warn(
            f"{fn}: the batch holds a single pair, so the softmax loss is identically 0 and "
            "gives no gradient: use a batch of at least 2 pairs (contrastive learning needs "
            "negatives)",
            UserWarning,
            stacklevel=3,
        )


def _check_smoothing(fn: str, label_smoothing: float) -> None:
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(
            f"{fn}: label_smoothing must be in [0, 1), got {label_smoothing}: 0.1 is clip-rocket's value"
        )
