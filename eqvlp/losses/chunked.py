"""Chunked sigmoid loss for one device: SigLIP without ever holding the B x B logits.

The loss is a sum of independent per-pair terms, so it can be swept over row chunks of the image
batch: chunk `c` needs only the `(chunk, B)` block of logits. Autodiff through such a sweep would
still save every block for the backward pass, so the sweep has a custom VJP:

- the *primal* (no gradient requested) sweeps once, computing only the loss;
- the *forward rule* (under `grad`) computes the loss **and** all four gradients in the same sweep
  and keeps them as residuals: the derivative of the loss w.r.t. its logits is
  `G = sigmoid(L) - I` (divided by B), known as soon as a block's logits are, so
  `dzimg = scale/B * G @ ztxt`, `dztxt = scale/B * G.T @ zimg`,
  `dscale = sum(G * zimg @ ztxt.T) / B = sum(zimg * (G @ ztxt)) / B`, `dbias = sum(G) / B`.
  Residuals are O(B * dim), so the backward rule only multiplies them by the cotangent.

That is three matmuls of `chunk x B x dim` per chunk, exactly the FLOPs of the reference's forward
plus backward, with O(chunk * B) temporaries instead of several B x B ones. The per-block kernel
`sigmoid_block` is shared with the distributed losses.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, Real

from eqvlp.losses.validation import check_finite, check_pair, check_scalar

__all__ = ["BlockTerms", "chunked_sigmoid_loss", "sigmoid_block"]


def chunked_sigmoid_loss(
    zimg: Float[Array, "batch dim"],
    ztxt: Float[Array, "batch dim"],
    scale: Real[ArrayLike, ""],
    bias: Real[ArrayLike, ""],
    *,
    chunk_size: int = 512,
) -> Float[Array, ""]:
    """`sigmoid_loss` computed in row chunks; same value and gradients, O(chunk_size * B) memory.

    Any batch size works: the last, shorter chunk is handled as its own block, not padded.
    Gradients flow to all four arguments (first order only: the custom VJP has no JVP rule, so
    `jax.jvp` and Hessians need the reference `sigmoid_loss`).

    **Arguments:**

    - `zimg`, `ztxt`: L2-normalised embeddings; row i of each is a pair.
    - `scale`: the multiplier `exp(t)`.
    - `bias`: the logit bias.
    - `chunk_size`: image rows per block. The temporaries are a few `(chunk_size, B)` float32
      arrays; 256-1024 keeps CPU matmuls efficient.

    **Returns:** the scalar loss (float32).
    """
    fn = "chunked_sigmoid_loss"
    check_pair(fn, zimg, ztxt)
    s = check_scalar(fn, "scale", scale, nonnegative=True)
    b = check_scalar(fn, "bias", bias)
    if isinstance(chunk_size, np.integer):
        chunk_size = int(chunk_size)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{fn}: chunk_size must be a positive int, got {chunk_size!r}: try 512")
    loss = _chunked(zimg, ztxt, s, b, chunk_size)
    inputs = [("zimg", zimg), ("ztxt", ztxt), ("scale", s), ("bias", b)]
    return check_finite(fn, loss, inputs, nonnegative=[("scale", s)])


class BlockTerms(NamedTuple):
    """One block's contribution: the loss sum and the raw (unscaled) gradient pieces.

    `dzimg = G @ ztxt_block`, `dztxt = G.T @ zimg_block`, `gsum = sum(G)`, with
    `G = sigmoid(L) - positives` for the block's logits `L`. Gradient pieces are None when not asked.
    """

    loss: Float[Array, ""]
    dzimg: Float[Array, "rows dim"] | None
    dztxt: Float[Array, "cols dim"] | None
    gsum: Float[Array, ""] | None


def sigmoid_block(
    zimg: Float[Array, "rows dim"],
    ztxt: Float[Array, "cols dim"],
    scale: Float[Array, ""],
    bias: Float[Array, ""],
    diag_offset: Int[ArrayLike, ""] | None,
    with_grads: bool,
) -> BlockTerms:
    """Sigmoid-loss terms of one block of logits, `sum_ij softplus(-m_ij * L_ij)`.

    `diag_offset` places the positives at `[i, i + diag_offset]`; None means a negatives-only
    block (another device's texts). Inputs must be float32.

    With `u = -m * L`, the term is `softplus(u)` and its derivative w.r.t. `L` is
    `-m * sigmoid(u)`: `sigmoid(L)` for negatives, `-sigmoid(-L)` (not `sigmoid(L) - 1`, which
    cancels) for positives.
    """
    logits = scale * jnp.einsum("id,jd->ij", zimg, ztxt, preferred_element_type=jnp.float32) + bias
    if diag_offset is None:
        u = logits
        positive = None
    else:
        rows = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 0)
        cols = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 1)
        positive = cols == rows + diag_offset
        u = jnp.where(positive, -logits, logits)
    # Written as two independent expressions of `logits` (not sharing exp(-|u|)) so that XLA fuses
    # each into one pass over the block: the loss as a reduction, G as one elementwise loop.
    # Sharing the exp made it materialise u, e and sigmoid as separate (chunk, B) arrays, and the
    # sweep memory-bound.
    loss = jnp.sum(jnp.maximum(u, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(u))))
    if not with_grads:
        return BlockTerms(loss, None, None, None)
    sig = jax.nn.sigmoid(u)
    g = sig if positive is None else jnp.where(positive, -sig, sig)
    dzimg = jnp.einsum("ij,jd->id", g, ztxt, preferred_element_type=jnp.float32)
    dztxt = jnp.einsum("ij,id->jd", g, zimg, preferred_element_type=jnp.float32)
    return BlockTerms(loss, dzimg, dztxt, jnp.sum(g))


def _sweep(
    zimg: Float[Array, "batch dim"],
    ztxt: Float[Array, "batch dim"],
    scale: Float[Array, ""],
    bias: Float[Array, ""],
    chunk: int,
    with_grads: bool,
):
    """Runs `sigmoid_block` over row chunks; returns summed terms with dzimg in row order."""
    batch, dim = zimg.shape
    zi = zimg.astype(jnp.float32)
    zt = ztxt.astype(jnp.float32)
    n_full, rem = divmod(batch, chunk)
    loss = jnp.zeros((), jnp.float32)
    gsum = jnp.zeros((), jnp.float32)
    dzt = jnp.zeros((batch, dim), jnp.float32) if with_grads else None
    dzi_parts = []

    if n_full:

        def step(carry, xs):
            loss, gsum, dzt = carry
            zi_c, offset = xs
            t = sigmoid_block(zi_c, zt, scale, bias, offset, with_grads)
            if not with_grads:
                return (loss + t.loss, gsum, dzt), None
            return (loss + t.loss, gsum + t.gsum, dzt + t.dztxt), t.dzimg

        chunks = zi[: n_full * chunk].reshape(n_full, chunk, dim)
        offsets = jnp.arange(n_full, dtype=jnp.int32) * chunk
        (loss, gsum, dzt), dzi_full = jax.lax.scan(step, (loss, gsum, dzt), (chunks, offsets))
        if with_grads:
            dzi_parts.append(dzi_full.reshape(n_full * chunk, dim))
    if rem:
        t = sigmoid_block(zi[n_full * chunk :], zt, scale, bias, n_full * chunk, with_grads)
        loss = loss + t.loss
        if with_grads:
            gsum = gsum + t.gsum
            dzt = dzt + t.dztxt
            dzi_parts.append(t.dzimg)
    if not with_grads:
        return loss / batch, None
    dzi_raw = jnp.concatenate(dzi_parts) if len(dzi_parts) > 1 else dzi_parts[0]
    grads = (
        (scale / batch) * dzi_raw,
        (scale / batch) * dzt,
        jnp.sum(zi * dzi_raw) / batch,
        gsum / batch,
    )
    return loss / batch, grads


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _chunked(zimg, ztxt, scale, bias, chunk):
    return _sweep(zimg, ztxt, scale, bias, chunk, with_grads=False)[0]


def _chunked_fwd(zimg, ztxt, scale, bias, chunk):
    loss, (dzi, dzt, ds, db) = _sweep(zimg, ztxt, scale, bias, chunk, with_grads=True)
    return loss, (dzi.astype(zimg.dtype), dzt.astype(ztxt.dtype), ds, db)


def _chunked_bwd(chunk, residuals, g):
    dzi, dzt, ds, db = residuals
    scaled = [(r.astype(jnp.float32) * g).astype(r.dtype) for r in (dzi, dzt)]
    return scaled[0], scaled[1], g * ds, g * db


_chunked.defvjp(_chunked_fwd, _chunked_bwd)
