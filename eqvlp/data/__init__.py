"""Input pipelines as pure functions of NumPy batches.

- `mix_text_pairs`, `cotraining_batches`: CLIPPO's text-pair co-training batch mixer.
- `split_sentences`, `sentence_pairs`: consecutive-sentence pairs from a text corpus.
"""

from eqvlp.data.cotraining import (
    MixedBatch,
    cotraining_batches,
    mix_text_pairs,
    sentence_pairs,
    split_sentences,
)

__all__ = [
    "MixedBatch",
    "cotraining_batches",
    "mix_text_pairs",
    "sentence_pairs",
    "split_sentences",
]
