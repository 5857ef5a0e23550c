"""The classification head put on a pre-trained model's embeddings."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from eqvlp.nn import LayerNorm, Linear, get_activation


class ClassifierHead(eqx.Module):
    """`LayerNorm -> [Linear -> activation] -> Linear` from features to class logits.

    The LayerNorm puts un-normalised embeddings of any scale on one footing. Without
    `hidden_dim` the head is linear (a probe); with it, one hidden layer lets the head combine
    the parts of a concatenated (two-tower) input, e.g. the image and the question. The output
    layer starts at zero (big_vision's `head_zeroinit`): every class starts equally likely and
    the first updates do not disturb the pre-trained features with random gradients.
    """

    norm: LayerNorm
    hidden: Linear | None
    output: Linear
    activation: str = eqx.field(static=True)

    def __init__(self, in_dim: int, num_classes: int, *, hidden_dim: int | None = None,
                 activation: str = "gelu", key: PRNGKeyArray):
        if num_classes < 2:
            raise ValueError(f"a classifier needs >= 2 classes, got {num_classes}")
        if hidden_dim is not None and hidden_dim < 1:
            raise ValueError(f"hidden_dim must be >= 1 or None (a linear head), got {hidden_dim}")
        get_activation(activation)  # a clear error for an unknown name, now
        k_hidden, k_out = jax.random.split(key)
        self.norm = LayerNorm(in_dim)
        self.hidden = None if hidden_dim is None else Linear(in_dim, hidden_dim, key=k_hidden)
        self.output = Linear(hidden_dim or in_dim, num_classes, key=k_out)
        self.output = eqx.tree_at(lambda o: o.weight, self.output,
                                  jnp.zeros_like(self.output.weight))
        self.activation = activation

    def __call__(self, x: Float[Array, "*batch in_dim"]) -> Float[Array, "*batch classes"]:
        x = self.norm(x.astype(jnp.float32))
        if self.hidden is not None:
            x = get_activation(self.activation)(self.hidden(x))
        return self.output(x)
