"""The transformer feed-forward block and its activation functions."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jaxtyping import Array, Float, PRNGKeyArray

from eqvlp.nn.linear import Linear


def quick_gelu(x: Array) -> Array:
    """OpenAI CLIP's sigmoid approximation of GELU: `x * sigmoid(1.702 x)`."""
    return x * jax.nn.sigmoid(jnp.asarray(1.702, x.dtype) * x)


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": quick_gelu,
}


def get_activation(name: str) -> Callable[[Array], Array]:
    """Looks up an activation by name; the error lists the valid names."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}: choose one of {sorted(ACTIVATIONS)}"
        ) from None


class MLP(eqx.Module):
    """`fc2(act(fc1(x)))`: the two-layer feed-forward block of a transformer."""

    fc1: Linear
    fc2: Linear
    activation: str = eqx.field(static=True)

    def __init__(
        self, dim: int, hidden_dim: int, *, activation: str = "gelu", key: PRNGKeyArray
    ):
        get_activation(activation)  # validate early, with a clear error
        k1, k2 = jax.random.split(key)
        self.fc1 = Linear(dim, hidden_dim, key=k1)
        self.fc2 = Linear(hidden_dim, dim, key=k2)
        self.activation = activation

    def __call__(self, x: Float[Array, "*batch dim"]) -> Float[Array, "*batch dim"]:
        # Named for TransformerBlock's backward, which keeps the hidden layer before the
        # activation and recomputes the activation (eqvlp.nn.block.SAVED_FOR_BACKWARD).
        hidden = checkpoint_name(self.fc1(x), "mlp_hidden")
        return self.fc2(get_activation(self.activation)(hidden))
