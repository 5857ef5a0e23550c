"""Pallas kernels, each beside its pure-jnp reference: flash attention and the fused sigmoid loss.

On CPU they run in the Pallas interpreter (for tests); on GPU they lower through Triton, which
`eqvlp.kernels.lowering` chooses explicitly and lets a CPU machine check (`lower_for_gpu`).
"""

from eqvlp.kernels import lowering
from eqvlp.kernels.attention import (
    IMPLEMENTATIONS,
    attention,
    attention_reference,
    flash_attention,
)
from eqvlp.kernels.attention import BlockSizes as AttentionBlockSizes
from eqvlp.kernels.attention import block_sizes_for as attention_block_sizes_for
from eqvlp.kernels.sigmoid_loss import BlockSizes as LossBlockSizes
from eqvlp.kernels.sigmoid_loss import block_sizes_for as loss_block_sizes_for
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
    "attention_block_sizes_for",
    "attention_reference",
    "flash_attention",
    "loss_block_sizes_for",
    "lowering",
    "fused_sigmoid_loss",
    "sigmoid_block_pallas",
    "sigmoid_loss_reference",
]
