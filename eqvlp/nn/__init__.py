"""Building blocks: Equinox modules that hold parameters, pure functions for the rest.

Every module works on ONE example (`(seq, dim)`, `(height, width, channels)`); batch with
`jax.vmap`.
"""

from eqvlp.nn.attention import (
    AttentionImpl,
    MultiheadAttention,
    dot_product_attention,
    with_attention_impl,
)
from eqvlp.nn.conv_stem import ConvStem, conv_stem_widths
from eqvlp.nn.block import TransformerBlock
from eqvlp.nn.encoder import REMAT_POLICIES, Encoder
from eqvlp.nn.linear import LayerNorm, Linear
from eqvlp.nn.mlp import ACTIVATIONS, MLP, get_activation, quick_gelu
from eqvlp.nn.patch_embedding import PatchEmbedding, as_pair, patch_grid
from eqvlp.nn.pooling import POOLING_METHODS, MAPHead, pool
from eqvlp.nn.precision import cast_floating
from eqvlp.nn.position import (
    LearnedPositionEmbedding,
    SinCosPositionEmbedding,
    resample_1d,
    resample_grid,
    sincos_2d,
)

__all__ = [
    "ACTIVATIONS",
    "AttentionImpl",
    "ConvStem",
    "MLP",
    "POOLING_METHODS",
    "REMAT_POLICIES",
    "Encoder",
    "LayerNorm",
    "LearnedPositionEmbedding",
    "Linear",
    "MAPHead",
    "MultiheadAttention",
    "PatchEmbedding",
    "SinCosPositionEmbedding",
    "TransformerBlock",
    "as_pair",
    "cast_floating",
    "conv_stem_widths",
    "dot_product_attention",
    "get_activation",
    "patch_grid",
    "pool",
    "quick_gelu",
    "resample_1d",
    "resample_grid",
    "sincos_2d",
    "with_attention_impl",
]
