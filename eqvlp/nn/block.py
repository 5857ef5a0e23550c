"""The pre-LN transformer block: `x + attn(LN(x))`, then `x + mlp(LN(x))`."""

import equinox as eqx
import jax
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from eqvlp.nn.attention import MultiheadAttention
from eqvlp.nn.linear import LayerNorm
from eqvlp.nn.mlp import MLP


class TransformerBlock(eqx.Module):
    """One pre-LN transformer block, as in ViT, CLIP and SigLIP."""

    norm1: LayerNorm
    attention: MultiheadAttention
    norm2: LayerNorm
    mlp: MLP

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        *,
        activation: str = "gelu",
        layer_norm_eps: float = 1e-6,
        attention_impl: str | None = None,
        key: PRNGKeyArray,
    ):
        ka, km = jax.random.split(key)
        self.norm1 = LayerNorm(dim, eps=layer_norm_eps)
        self.attention = MultiheadAttention(dim, num_heads, impl=attention_impl, key=ka)
        self.norm2 = LayerNorm(dim, eps=layer_norm_eps)
        self.mlp = MLP(dim, mlp_dim, activation=activation, key=km)

    def __call__(
        self,
        x: Float[Array, "seq dim"],
        *,
        mask: Bool[Array, " seq"] | None = None,
        causal: bool = False,
    ) -> Float[Array, "seq dim"]:
        x = x + self.attention(self.norm1(x), mask=mask, causal=causal)
        return x + self.mlp(self.norm2(x))
