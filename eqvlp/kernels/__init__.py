"""Pallas kernels, each beside its pure-jnp reference: flash attention and the fused sigmoid loss.

On CPU they run in the Pallas interpreter (`interpret=True`, for tests); on GPU they compile.
"""

from eqvlp.kernels.attention import (
    IMPLEMENTATIONS,
    attention,
    attention_reference,
    flash_attention,
)
from eqvlp.kernels.attention import BlockSizes as AttentionBlockSizes
from eqvlp.kernels.sigmoid_loss import BlockSizes as LossBlockSizes
from eqvlp.kernels.sigmoid_loss import (
    fused_sigmoid_loss,
    sigmoid_block_pallas,
    sigmoid_loss_reference,
)

__all__ = [
    "IMPLEMENTATIONS",
    "AttentionBlockSizes",
    "LossBlockSizes",
    "attention",
    "attention_reference",
    "flash_attention",
    "fused_sigmoid_loss",
    "sigmoid_block_pallas",
    "sigmoid_loss_reference",
]
