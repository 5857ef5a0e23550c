import numpy as np
import pytest

from eqvlp.tokenizer import load_tokenizer, tokenize, train_tokenizer

CAPTIONS = ["a photo of a cat", "a photo of a dog", "two dogs on a sofa", "A CAT!"]


def test_tokenize_layout_and_truncation():
    tokenizer = train_tokenizer(CAPTIONS, vocab_size=300)
    ids = tokenize(tokenizer, CAPTIONS, context_length=8)
    assert ids.shape == (4, 8) and ids.dtype == np.int32
    assert (ids[:, 0] == 1).all()
    for row in ids:  # exactly one EOS, then padding
        eos = int(np.argmax(row == 2))
        assert (row == 2).sum() == 1 and (row[eos + 1 :] == 0).all() and (row[1:eos] > 3).all()
    long = tokenize(tokenizer, "a photo of a cat " * 20, context_length=6)
    assert long.shape == (1, 6) and long[0, -1] == 2
    # lower-casing normaliser: case does not change the ids
    np.testing.assert_array_equal(
        tokenize(tokenizer, "a cat!", context_length=8), tokenize(tokenizer, "A CAT!", context_length=8)
    )


def test_save_and_load_roundtrip(tmp_path):
    tokenizer = train_tokenizer(CAPTIONS, vocab_size=300)
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    loaded = load_tokenizer(path)
    np.testing.assert_array_equal(
        tokenize(loaded, CAPTIONS, context_length=10), tokenize(tokenizer, CAPTIONS, context_length=10)
    )
    with pytest.raises(FileNotFoundError, match="train_tokenizer"):
        load_tokenizer(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="context_length"):
        tokenize(tokenizer, "x", context_length=1)
