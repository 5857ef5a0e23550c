"""CLIPPO co-training with text pairs: part of each batch becomes two consecutive sentences.

CLIPPO (Tschannen et al. 2023) optionally replaces a fraction of the image/alt-text pairs of
every batch (25% or 50% in the paper) with pairs of consecutive sentences from a text corpus
(C4). Both sentences are rendered, and the one ViT is trained with the same contrastive loss
on the whole batch: row i of the image side and row i of the text side are a positive pair,
whether the row holds a photo and its caption or two sentences.

Everything here is a pure function of NumPy batches and a seed: the same `(seed, step)` gives
the same batch on every host.
"""

import dataclasses
import re
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from jaxtyping import Bool, Shaped, UInt8

from eqvlp.render import RenderConfig, render_text

# A sentence ends at . ! or ? (and any closing quotes or brackets) followed by white space.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'\u201d\u2019)\]]*\s+")
_PARAGRAPH = re.compile(r"\n\s*\n")


def split_sentences(text: str) -> list[str]:
    """Splits a document into sentences.

    Breaks after `.`, `!` or `?` (with any closing quotes or brackets) followed by white space,
    and at blank lines; white space inside a sentence is collapsed to single spaces. A simple
    rule, not a linguistic segmenter: "Dr. Smith" splits after "Dr.".
    """
    sentences = []
    for paragraph in _PARAGRAPH.split(text):
        for match in _split_keep(paragraph):
            sentence = " ".join(match.split())
            if sentence:
                sentences.append(sentence)
    return sentences


def _split_keep(paragraph: str) -> list[str]:
    """Splits after sentence ends, keeping the punctuation with its sentence."""
    pieces, start = [], 0
    for m in _SENTENCE_END.finditer(paragraph):
        pieces.append(paragraph[start : m.end()])
        start = m.end()
    pieces.append(paragraph[start:])
    return pieces


def sentence_pairs(documents: str | Iterable[str]) -> list[tuple[str, str]]:
    """Consecutive sentence pairs `(s_i, s_{i+1})` within each document (never across two).

    `documents`: one document (a string) or an iterable of documents.
    """
    documents = [documents] if isinstance(documents, str) else documents
    pairs = []
    for document in documents:
        sentences = split_sentences(document)
        pairs.extend(zip(sentences[:-1], sentences[1:]))
    return pairs


@dataclasses.dataclass(frozen=True)
class MixedBatch:
    """A co-training batch: row i of `images` and row i of `texts` are a positive pair.

    - `images`: `(batch, H, W, 3)`, the photos, with text-pair rows holding the first sentence
      rendered (same dtype and value range as the photos passed in).
    - `texts`: `(batch, H, W, 3)` uint8 renders of the captions, or of the second sentence.
    - `is_text_pair`: `(batch,)` which rows are text pairs.
    """

    images: np.ndarray
    texts: np.ndarray
    is_text_pair: np.ndarray


def num_text_pairs(batch_size: int, fraction: float) -> int:
    """Rows that become text pairs: `fraction * batch_size` rounded half up."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(
            f"text-pair fraction must be in [0, 1], got {fraction}: CLIPPO used 0.25 or 0.5"
        )
    return int(np.floor(fraction * batch_size + 0.5))


def mix_text_pairs(
    images: Shaped[np.ndarray, "batch height width 3"],
    captions: Sequence[str] | UInt8[np.ndarray, "batch height width 3"],
    pairs: Sequence[tuple[str, str]],
    *,
    fraction: float,
    seed: int,
    step: int = 0,
    render: RenderConfig = RenderConfig(),
) -> MixedBatch:
    """Replaces `fraction` of a batch's image/caption pairs with rendered sentence pairs.

    **Arguments:**

    - `images`: photos `(batch, H, W, 3)`, uint8 (rendered sentences are put in as uint8) or
      float in [-1, 1] (rendered sentences are mapped with `x / 127.5 - 1`, CLIPPO's
      `value_range(-1, 1)`).
    - `captions`: one caption per photo, as strings (all rendered here) or already rendered
      uint8 images (only the replaced rows are rendered, e.g. a batch of the data pipeline
      with `text="render"`).
    - `pairs`: the pool of `(sentence, next sentence)` pairs, e.g. from `sentence_pairs`.
    - `fraction`: share of the batch made of text pairs (CLIPPO: 0.25 or 0.5), rounded to
      a whole number of rows.
    - `seed`, `step`: which rows are replaced and which pairs are drawn (uniformly, with
      replacement) depend only on these.
    - `render`: how text is drawn; the image size is the photos'.

    **Returns:** a `MixedBatch` with the texts rendered.
    """
    batch, height, width = images.shape[:3]
    if len(captions) != batch:
        raise ValueError(
            f"got {batch} images but {len(captions)} captions: pass one caption per image"
        )
    k = num_text_pairs(batch, fraction)
    if k and not pairs:
        raise ValueError("no text pairs to mix in: build them with sentence_pairs(corpus)")
    rng = np.random.default_rng([seed, step])
    rows = np.sort(rng.choice(batch, size=k, replace=False))
    drawn = [pairs[i] for i in rng.integers(len(pairs), size=k)] if k else []
    is_pair = np.zeros(batch, bool)
    is_pair[rows] = True
    options = dict(image_size=(height, width), **dataclasses.asdict(render))
    if isinstance(captions, np.ndarray):
        texts = np.array(captions, copy=True)
        if k:
            texts[rows] = render_text([second for _, second in drawn], **options)
    else:
        right = list(captions)
        for row, (_, second) in zip(rows, drawn):
            right[row] = second
        texts = render_text(right, **options)
    mixed = np.array(images, copy=True)
    if k:
        firsts = render_text([first for first, _ in drawn], **options)
        if np.issubdtype(mixed.dtype, np.floating):
            firsts = firsts.astype(np.float32) / np.float32(127.5) - np.float32(1)
            firsts = firsts.astype(mixed.dtype)
        elif mixed.dtype != np.uint8:
            raise TypeError(f"images must be uint8 or float, got {mixed.dtype}")
        mixed[rows] = firsts
    return _checked(mixed, texts, is_pair)


def _checked(
    images: Shaped[np.ndarray, "batch height width 3"],
    texts: UInt8[np.ndarray, "batch height width 3"],
    is_pair: Bool[np.ndarray, " batch"],
) -> MixedBatch:
    return MixedBatch(images=images, texts=texts, is_text_pair=is_pair)


def cotraining_batches(
    batches: Iterable[tuple[np.ndarray, Sequence[str]]],
    pairs: Sequence[tuple[str, str]],
    *,
    fraction: float,
    seed: int,
    render: RenderConfig = RenderConfig(),
) -> Iterator[MixedBatch]:
    """`mix_text_pairs` over a stream of `(images, captions)` batches, step = batch number."""
    for step, (images, captions) in enumerate(batches):
        yield mix_text_pairs(images, captions, pairs, fraction=fraction, seed=seed, step=step,
                             render=render)
