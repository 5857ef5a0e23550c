"""CLIPPO text-pair co-training in the loop: where the pairs come from, and mixing them in.

`loss.cotraining` of every host batch becomes pairs of related texts, both rendered: the image
side of such a row holds the first text, the text side the second. `text_pairs` finds the pool:
consecutive sentences of the documents in `loss.cotraining_text`, or, on the embedded shapes
dataset without a file, two different captions of the same image. `mix_batch` replaces the
rows on the host with `eqvlp.data.mix_text_pairs`; which rows and which pairs depend only on
`(seed, step)` (and the process), so a resumed run mixes exactly the same batches.
"""

import re
from pathlib import Path

import numpy as np

from eqvlp.data import caption_pairs, mix_text_pairs, sentence_pairs
from eqvlp.render import RenderConfig

_BLANK_LINES = re.compile(r"\n\s*\n")


def read_documents(path: str | Path) -> list[str]:
    """The documents of a text file: blocks separated by blank lines."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"loss.cotraining_text: {path} does not exist: give a UTF-8 text "
                                "file of documents separated by blank lines")
    return [doc for doc in _BLANK_LINES.split(path.read_text(encoding="utf-8")) if doc.strip()]


def text_pairs(cfg) -> list[tuple[str, str]]:
    """The pool of text pairs for `cfg` (a `TrainConfig` with `loss.cotraining` > 0)."""
    if cfg.loss.cotraining_text:
        pairs = sentence_pairs(read_documents(cfg.loss.cotraining_text))
        if not pairs:
            raise ValueError(f"loss.cotraining_text={cfg.loss.cotraining_text!r} holds no two "
                             "consecutive sentences: give documents of several sentences")
        return pairs
    if cfg.data.data == "shapes":
        return caption_pairs(config=cfg.data.shapes)
    raise ValueError("loss.cotraining on shards needs a text corpus: set "
                     "loss.cotraining_text=FILE (documents separated by blank lines)")


def mix_batch(batch: dict, pairs: list[tuple[str, str]], *, fraction: float, seed: int,
              step: int, render: RenderConfig = RenderConfig(), process_index: int = 0) -> dict:
    """`batch` (a host batch of rendered-text data) with `fraction` of its rows replaced by
    rendered text pairs; `is_text_pair` marks them.

    Each process mixes its own share of the global batch; the process index enters the seed,
    so processes draw different rows and pairs (process 0 uses `seed` itself).
    """
    images, texts = batch["image"], batch["text"]
    if images.ndim != 4 or texts.ndim != 4 or texts.dtype != np.uint8:
        raise ValueError(f"text-pair co-training mixes single-view photos (b, h, w, 3) with "
                         f"rendered captions, got images {images.shape} and text {texts.shape} "
                         f"{texts.dtype}: use a CLIPPO model with data.views=1")
    mixed = mix_text_pairs(images, texts, pairs, fraction=fraction,
                           seed=seed + (process_index << 32), step=step, render=render)
    return dict(batch, image=mixed.images, text=mixed.texts, is_text_pair=mixed.is_text_pair)

