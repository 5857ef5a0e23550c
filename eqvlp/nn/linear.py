"""Dense layers that own float32 parameters and work on any leading shape.

We keep our own `Linear` (weight stored as `(in, out)`) instead of `eqx.nn.Linear`: the
`(in, out)` layout is what sharding rules and checkpoint converters expect, and a plain
`x @ w` contraction is what works under Explicit-axis tensor parallelism.
"""

import math
import operator

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


class Linear(eqx.Module):
    """`y = x @ weight + bias`, applied to the last axis of `x`.

    Weights start from a LeCun-style truncated normal (std `1/sqrt(in)`), biases at zero.
    """

    weight: Float[Array, "in_features out_features"]
    bias: Float[Array, " out_features"] | None
    in_features: int = eqx.field(static=True)
    out_features: int = eqx.field(static=True)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        init_std: float | None = None,
        key: PRNGKeyArray,
    ):
        in_features = _size("in_features", in_features)
        out_features = _size("out_features", out_features)
        std = init_std if init_std is not None else 1.0 / math.sqrt(in_features)
        self.weight = std * jax.random.truncated_normal(
            key, -2.0, 2.0, (in_features, out_features), jnp.float32
        )
        self.bias = jnp.zeros((out_features,), jnp.float32) if use_bias else None
        self.in_features = in_features
        self.out_features = out_features

    def __call__(
        self, x: Float[Array, "*batch in_features"]
    ) -> Float[Array, "*batch out_features"]:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"Linear expects inputs of shape (..., {self.in_features}), got "
                f"{tuple(x.shape)}: the last axis must be the layer's input width"
            )
        y = x @ self.weight.astype(x.dtype)
        if self.bias is not None:
            y = y + self.bias.astype(x.dtype)
        return y


def _size(name: str, value) -> int:
    """A layer width as a Python int (NumPy integers welcome), at least 1."""
    try:
        size = operator.index(value)
    except TypeError:
        raise TypeError(f"Linear: {name} must be an int, got {value!r}") from None
    if size < 1:
        raise ValueError(f"Linear: {name} must be >= 1, got {size}")
    return size


class LayerNorm(eqx.Module):
    """Layer normalisation over the last axis, computed in float32 whatever the input dtype."""

    weight: Float[Array, " dim"]
    bias: Float[Array, " dim"]
    eps: float = eqx.field(static=True)

    def __init__(self, dim: int, *, eps: float = 1e-6):
        self.weight = jnp.ones((dim,), jnp.float32)
        self.bias = jnp.zeros((dim,), jnp.float32)
        self.eps = eps

    def __call__(self, x: Float[Array, "*batch dim"]) -> Float[Array, "*batch dim"]:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.weight.astype(jnp.float32) + self.bias.astype(jnp.float32)
        return y.astype(x.dtype)
