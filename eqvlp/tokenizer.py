"""Tokenizers for the text tower: train one locally or load one from a file.

Special ids are fixed so that model configs can rely on them: pad 0, bos 1, eos 2, unk 3
(`TextConfig.tiny` pools at `eos_token_id=2`).
"""

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 1000) -> tokenizers.Tokenizer:
    """Trains a lower-casing byte-level BPE tokenizer on `texts` (no download needed)."""
    tokenizer = tokenizers.Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def load_tokenizer(path: str | Path) -> tokenizers.Tokenizer:
    """Loads a `tokenizer.json`; it must define the four special tokens at ids 0-3."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no tokenizer file at {path}: train one with eqvlp.tokenizer.train_tokenizer "
            "and save it with tokenizer.save(path)"
        )
    tokenizer = tokenizers.Tokenizer.from_file(str(path))
    ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
    if ids != [0, 1, 2, 3]:
        raise ValueError(
            f"{path}: special tokens {SPECIAL_TOKENS} must have ids 0-3, got {ids}: "
            "retrain with eqvlp.tokenizer.train_tokenizer or add them first"
        )
    return tokenizer


def tokenize(
    tokenizer: tokenizers.Tokenizer, texts: str | Sequence[str], *, context_length: int
) -> np.ndarray:
    """`[BOS] tokens [EOS] [PAD]...` as int32 `(batch, context_length)`.

    Text that does not fit is truncated, and the last kept position becomes `[EOS]` so that
    EOS pooling always finds it.
    """
    if context_length < 2:
        raise ValueError(f"context_length must be >= 2 (BOS and EOS), got {context_length}")
    texts = [texts] if isinstance(texts, str) else list(texts)
    bos, eos = tokenizer.token_to_id(BOS), tokenizer.token_to_id(EOS)
    out = np.full((len(texts), context_length), tokenizer.token_to_id(PAD), np.int32)
    # One text (the input pipeline's case) is encoded on this thread: encode_batch would wake
    # the tokenizers thread pool inside every data worker process and oversubscribe the cores.
    encodings = ([tokenizer.encode(texts[0], add_special_tokens=False)] if len(texts) == 1
                 else tokenizer.encode_batch(texts, add_special_tokens=False))
    for row, encoding in enumerate(encodings):
        ids = [bos, *encoding.ids[: context_length - 2], eos]
        out[row, : len(ids)] = ids
    return out
