"""CLIPA token reduction: image patch masks, text reductions, and the phase schedule."""

from eqvlp.masking.image import (
    ImageMask,
    block_indices,
    block_shape,
    grid_indices,
    keep_tokens,
    random_indices,
)
from eqvlp.masking.picture import draw_kept_patches
from eqvlp.masking.schedule import Phase, TokenReductionSchedule, enter_phase
from eqvlp.masking.tagger import tag_word, tag_words
from eqvlp.masking.text import (
    TextMask,
    block_text,
    random_text,
    syntax_reduce,
    truncate_text,
)

__all__ = [
    "ImageMask",
    "Phase",
    "TextMask",
    "TokenReductionSchedule",
    "block_indices",
    "block_shape",
    "block_text",
    "draw_kept_patches",
    "enter_phase",
    "grid_indices",
    "keep_tokens",
    "random_indices",
    "random_text",
    "syntax_reduce",
    "tag_word",
    "tag_words",
    "truncate_text",
]
