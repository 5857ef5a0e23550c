"""The input side of training and evaluation: sources, preprocessing, the grain pipeline.

- `Shapes`, `ShapesConfig`, `zeroshot_task`, `label`, `captions_corpus`, `caption_pairs`,
  `held_out_mask`,
  `HELD_OUT`, `SHAPES`, `COLOURS`, `SIZES`, `POSITIONS`: the embedded captioned-shapes dataset
  (no download).
- `ShardSource`, `resolve_shards`, `write_shards`: image-text shards in the webdataset layout.
- `DataConfig`, `Loader`, `global_batch`, `fit_tokenizer`, `SkipCounts`: the grain pipeline
  (shuffle, decode and augment in worker processes, skip and count bad samples, exact resume).
- `ImageAugment`, `decode_image`, `augment_image`, `eval_image`, `normalize_images`,
  `normalization`: image preprocessing (host) and normalisation (device).
- `TextAugment`, `augment_text`: EDA caption augmentation.
- `mix_text_pairs`, `cotraining_batches`, `split_sentences`, `sentence_pairs`: CLIPPO's
  text-pair co-training.
"""

from eqvlp.data.cotraining import (
    MixedBatch,
    cotraining_batches,
    mix_text_pairs,
    sentence_pairs,
    split_sentences,
)
from eqvlp.data.pipeline import (
    DataConfig,
    Loader,
    SkipCounts,
    fit_tokenizer,
    global_batch,
    make_source,
)
from eqvlp.data.shapes import (
    COLOURS,
    HELD_OUT,
    POSITIONS,
    SHAPES,
    SIZES,
    Shapes,
    ShapesConfig,
    caption_pairs,
    captions_corpus,
    held_out_mask,
    label,
    zeroshot_task,
)
from eqvlp.data.shards import ShardSource, resolve_shards, write_shards
from eqvlp.data.text_augment import TextAugment, augment_text
from eqvlp.data.transforms import (
    ImageAugment,
    augment_image,
    decode_image,
    eval_image,
    normalization,
    normalize_images,
)

__all__ = [
    "COLOURS",
    "HELD_OUT",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "DataConfig",
    "ImageAugment",
    "Loader",
    "MixedBatch",
    "Shapes",
    "ShapesConfig",
    "ShardSource",
    "SkipCounts",
    "TextAugment",
    "augment_image",
    "augment_text",
    "caption_pairs",
    "captions_corpus",
    "cotraining_batches",
    "decode_image",
    "eval_image",
    "fit_tokenizer",
    "global_batch",
    "held_out_mask",
    "label",
    "make_source",
    "mix_text_pairs",
    "normalization",
    "normalize_images",
    "resolve_shards",
    "sentence_pairs",
    "split_sentences",
    "write_shards",
    "zeroshot_task",
]
