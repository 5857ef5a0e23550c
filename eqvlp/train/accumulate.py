"""Exact gradient accumulation for contrastive losses (GradCache).

A contrastive loss couples every example with every other, so summing the gradients of
micro-batch losses is NOT the gradient of the large-batch loss. GradCache splits the work
where the coupling is: only the loss sees the whole batch, the towers see one example at a
time. With `n` micro-batches:

1. embed every micro-batch without gradients (`lax.map`; no activations are kept);
2. on the full batch of embeddings, compute the loss and its gradients with respect to the
   model (the logit scale and bias, any heads used by the loss) and to the embeddings;
3. re-run each micro-batch forward under `jax.vjp` with its slice of the embedding gradient
   and sum the parameter gradients (`lax.scan`), plus the direct model gradient from 2.

This costs one extra forward pass and holds the activations of one micro-batch at a time,
and it equals the large-batch gradient up to float summation order.
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
from jaxtyping import PyTree


def _micro_batches(tree: PyTree, n: int) -> PyTree:
    """`(B, ...) -> (n, B / n, ...)`, micro-batch `j` holding examples `j, j + n, j + 2n, ...`.

    Strided rather than contiguous: when the batch axis is sharded over devices, every
    micro-batch then takes an equal share of each device's examples and no data moves.
    """
    return jax.tree.map(
        lambda x: x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1), tree
    )


def _full_batch(tree: PyTree) -> PyTree:
    """The inverse of `_micro_batches`: `(n, B / n, ...) -> (B, ...)` in the original order."""
    return jax.tree.map(
        lambda x: x.swapaxes(0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:]), tree
    )


def _batch_size(batch: PyTree, micro_batches: int) -> int:
    """The common leading size of `batch`'s leaves, checked to split into `micro_batches`."""
    if micro_batches < 1:
        raise ValueError(f"micro_batches={micro_batches}: use 1 (no accumulation) or more")
    sizes = {leaf.shape[0] if getattr(leaf, "ndim", 0) else None for leaf in jax.tree.leaves(batch)}
    if not sizes or None in sizes or len(sizes) > 1:
        raise ValueError(
            f"accumulated_value_and_grad: every leaf of the batch must be an array with the "
            f"same leading batch axis, got leading sizes {sorted(sizes, key=str)}: pass e.g. "
            "(images, token_ids) of shapes (B, ...) and (B, ...)"
        )
    (size,) = sizes
    if size % micro_batches:
        raise ValueError(
            f"a batch of {size} does not split into micro_batches={micro_batches}: pick a "
            f"micro-batch count that divides the batch size, e.g. "
            f"{max(d for d in range(1, micro_batches + 1) if size % d == 0)}"
        )
    return size


def embed_in_micro_batches(
    embed: Callable[[PyTree, PyTree], PyTree], model: PyTree, batch: PyTree, *, micro_batches: int
) -> PyTree:
    """`embed(model, batch)` computed `micro_batches` at a time (`lax.map`), without gradients.

    GradCache's first pass, also what a frozen target network (BYOLIP's EMA model) needs: the
    embeddings of a large batch holding the activations of one micro-batch at a time.
    """
    _batch_size(batch, micro_batches)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    frozen = eqx.combine(jax.lax.stop_gradient(params), static)
    if micro_batches == 1:
        return embed(frozen, batch)
    chunks = _micro_batches(batch, micro_batches)
    return _full_batch(jax.lax.map(lambda chunk: embed(frozen, chunk), chunks))


def accumulated_value_and_grad(
    embed: Callable[[PyTree, PyTree], PyTree],
    loss: Callable[[PyTree, PyTree], Any],
    model: PyTree,
    batch: PyTree,
    *,
    micro_batches: int,
    has_aux: bool = False,
) -> tuple[Any, PyTree]:
    """`loss(model, embed(model, batch))` and its gradient, embedding `micro_batches` at a time.

    **Arguments:**

    - `embed`: `embed(model, micro_batch) -> embeddings`, a pytree of float arrays with a
      leading batch axis, e.g. `(zimg, ztxt)`. It must treat examples independently (no
      batch statistics), or accumulation is not exact.
    - `loss`: `loss(model, embeddings) -> scalar` on the full batch of embeddings. It takes
      the model so that the logit scale and bias (and any heads it applies) get their direct
      gradient.
    - `model`: the model; gradients are taken with respect to its floating-point arrays.
    - `batch`: a pytree of arrays sharing a leading axis `B` divisible by `micro_batches`.
      Micro-batch `j` holds examples `j, j + n, j + 2n, ...` (`n = micro_batches`).
    - `micro_batches`: how many pieces to embed; 1 is plain `eqx.filter_value_and_grad`.
    - `has_aux`: `loss` returns `(scalar, aux)` (e.g. the terms of a sum, for logging); the
      value returned is then `(scalar, aux)`, as with `jax.value_and_grad(has_aux=True)`.

    Randomness (CLIPA masks, dropout) must be the same in the no-gradient and the gradient
    forward pass: put keys in the batch, one per example (`jax.random.split(key, B)`), and
    derive every random draw in `embed` from the micro-batch's own keys; never draw from a
    key closed over by `embed`, which would give every micro-batch the same randomness.

    **Returns:** `(loss, grads)`, with `grads` shaped like `eqx.filter(model,
    eqx.is_inexact_array)`, exactly what `eqx.filter_value_and_grad` returns. Jit-able.
    """
    _batch_size(batch, micro_batches)
    if micro_batches == 1:
        return eqx.filter_value_and_grad(lambda m: loss(m, embed(m, batch)), has_aux=has_aux)(model)

    params, static = eqx.partition(model, eqx.is_inexact_array)
    chunks = _micro_batches(batch, micro_batches)

    # Pass 1: embeddings only, no activations kept for a backward pass.
    embeddings = embed_in_micro_batches(embed, model, batch, micro_batches=micro_batches)

    # Pass 2: the loss on the full batch, and its gradient w.r.t. the model and the embeddings.
    def full_loss(p: PyTree, e: PyTree) -> Any:
        return loss(eqx.combine(p, static), e)

    value, (direct, cotangents) = jax.value_and_grad(full_loss, argnums=(0, 1), has_aux=has_aux)(
        params, embeddings)

    # Pass 3: each micro-batch forward again, back-propagating its slice of d loss / d embeddings.
    def accumulate(total: PyTree, chunk_and_cotangent: tuple[Any, Any]) -> tuple[PyTree, None]:
        chunk, cotangent = chunk_and_cotangent
        _, pullback = jax.vjp(lambda p: embed(eqx.combine(p, static), chunk), params)
        (grads,) = pullback(cotangent)
        return jax.tree.map(lambda a, g: a + g, total, grads), None

    grads, _ = jax.lax.scan(accumulate, direct, (chunks, _micro_batches(cotangents, micro_batches)))
    return value, grads
