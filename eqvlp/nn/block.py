"""The pre-LN transformer block: `x + attn(LN(x))`, then `x + mlp(LN(x))`.

Its backward pass keeps only what is expensive to recompute: the block's input, the attention
projections `q, k, v`, the attended values, the residual stream after attention and the MLP's
hidden layer before the activation (`SAVED_FOR_BACKWARD`). LayerNorms, the activation and the
attention softmax (with its `q k^T`) are recomputed from those, which cuts the activations a
training step holds by about 3x (ViT-S/16: ~100 MB instead of ~370 MB per block at batch 32)
for a few elementwise passes and one attention matmul per block.
"""

import equinox as eqx
import jax
from jax.ad_checkpoint import checkpoint_name
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from eqvlp.nn.attention import MultiheadAttention
from eqvlp.nn.linear import LayerNorm
from eqvlp.nn.mlp import MLP

# Values named with `checkpoint_name` that the backward pass keeps; everything else inside a
# block is recomputed from them.
SAVED_FOR_BACKWARD = ("attention_qkv", "attention_out", "residual", "mlp_hidden")
_KEEP = jax.checkpoint_policies.save_only_these_names(*SAVED_FOR_BACKWARD)


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
        def block(module, x, mask):
            x = checkpoint_name(x + module.attention(module.norm1(x), mask=mask, causal=causal),
                                "residual")
            return x + module.mlp(module.norm2(x))

        return jax.checkpoint(block, policy=_KEEP)(self, x, mask)
