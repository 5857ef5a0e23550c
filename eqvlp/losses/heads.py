"""The small heads clip-rocket's self-supervised terms need: projector, predictor, prototypes.

They batch inside (unlike eqvlp's other layers) because batch normalisation needs the batch. Batch
norm here always uses the batch's statistics: these heads only exist to shape training losses and
are not used at evaluation, so they keep no running averages. Pass `axis_name` under `shard_map` to
normalise with the global batch's statistics (PyTorch's SyncBatchNorm, as clip-rocket uses).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray

from eqvlp.losses.validation import check_axis_name, normalize

__all__ = ["Predictor", "Projector", "Prototypes", "batch_norm"]


def batch_norm(
    x: Float[Array, "batch features"], *, eps: float = 1e-5, axis_name=None
) -> Float[Array, "batch features"]:
    """Standardises each feature over the batch (the global batch when `axis_name` is given)."""
    check_axis_name("batch_norm", axis_name)
    count = x.shape[0]
    total = jnp.sum(x, axis=0)
    if axis_name is not None:
        total = jax.lax.psum(total, axis_name)
        count = count * jax.lax.axis_size(axis_name)
    mean = total / count
    sq = jnp.sum(jnp.square(x - mean), axis=0)
    if axis_name is not None:
        sq = jax.lax.psum(sq, axis_name)
    return (x - mean) * jax.lax.rsqrt(sq / count + eps)


class _AffineNorm(eqx.Module):
    weight: Float[Array, " features"]
    bias: Float[Array, " features"]

    def __init__(self, features: int):
        self.weight = jnp.ones((features,))
        self.bias = jnp.zeros((features,))

    def __call__(self, x: Float[Array, "batch features"], axis_name) -> Float[Array, "batch features"]:
        return batch_norm(x, axis_name=axis_name) * self.weight + self.bias


class Projector(eqx.Module):
    """SiamLIP / BYOLIP projector: Linear - BN - ReLU - Linear - BN (no affine), as in clip-rocket.

    The last batch norm has no learnable scale or shift, so the projections are standardised per
    feature: that is what keeps the Siamese objective from collapsing to a constant.
    """

    linear1: eqx.nn.Linear
    norm1: _AffineNorm
    linear2: eqx.nn.Linear

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128, *, key: PRNGKeyArray):
        k1, k2 = jax.random.split(key)
        self.linear1 = eqx.nn.Linear(in_dim, hidden_dim, use_bias=False, key=k1)
        self.norm1 = _AffineNorm(hidden_dim)
        self.linear2 = eqx.nn.Linear(hidden_dim, out_dim, use_bias=False, key=k2)

    def __call__(self, x: Float[Array, "batch in_dim"], *, axis_name=None) -> Float[Array, "batch out_dim"]:
        h = jax.nn.relu(self.norm1(jax.vmap(self.linear1)(x), axis_name))
        return batch_norm(jax.vmap(self.linear2)(h), axis_name=axis_name)


class Predictor(eqx.Module):
    """SiamLIP predictor, 128 -> 2048 -> 128 by default: Linear - BN - ReLU - Linear (with bias).

    It maps one modality's projection towards the other's; the asymmetry (predictor on one side,
    stop-gradient on the other) is what SimSiam-style objectives rely on.
    """

    linear1: eqx.nn.Linear
    norm1: _AffineNorm
    linear2: eqx.nn.Linear

    def __init__(self, dim: int = 128, hidden_dim: int = 2048, *, key: PRNGKeyArray):
        k1, k2 = jax.random.split(key)
        self.linear1 = eqx.nn.Linear(dim, hidden_dim, use_bias=False, key=k1)
        self.norm1 = _AffineNorm(hidden_dim)
        self.linear2 = eqx.nn.Linear(hidden_dim, dim, key=k2)

    def __call__(self, x: Float[Array, "batch dim"], *, axis_name=None) -> Float[Array, "batch dim"]:
        h = jax.nn.relu(self.norm1(jax.vmap(self.linear1)(x), axis_name))
        return jax.vmap(self.linear2)(h)


class Prototypes(eqx.Module):
    """SwALIP's prototype vectors; scores are cosine similarities to each prototype.

    clip-rocket stores them as a weight-normalised linear layer with the norm fixed at 1, which is
    the same as normalising the rows here. `frozen=True` (e.g. `frozen=step < 100`, traced is fine)
    stops their gradient: early in training the assignments are noise and would scatter them.
    """

    weight: Float[Array, "num_prototypes dim"]

    def __init__(self, dim: int, num_prototypes: int, *, key: PRNGKeyArray):
        self.weight = normalize(jax.random.normal(key, (num_prototypes, dim)))

    def __call__(
        self, h: Float[Array, "batch dim"], *, frozen: Bool[ArrayLike, ""] = False
    ) -> Float[Array, "batch num_prototypes"]:
        w = jnp.where(frozen, jax.lax.stop_gradient(self.weight), self.weight)
        return normalize(h) @ normalize(w).T
