"""CLIPPO text-pair co-training: sentence pairs and the batch mixer."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqvlp import losses, models
from eqvlp.data import cotraining_batches, mix_text_pairs, sentence_pairs, split_sentences
from eqvlp.render import RenderConfig, render_text

CORPUS = [
    "The cat sat on the mat. It was warm! Was it asleep? Nobody knew.",
    'She said "stop." Then she left.\n\nA new paragraph starts here',
]
SIZE = 32


def photo_batch(n, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    captions = [f"photo number {i}" for i in range(n)]
    if dtype != np.uint8:
        images = (images / 127.5 - 1).astype(dtype)
    return images, captions


def test_split_sentences():
    assert split_sentences(CORPUS[0]) == [
        "The cat sat on the mat.", "It was warm!", "Was it asleep?", "Nobody knew."
    ]
    assert split_sentences(CORPUS[1]) == [
        'She said "stop."', "Then she left.", "A new paragraph starts here"
    ]
    assert split_sentences("  ") == [] and split_sentences("one  two\nthree") == ["one two three"]


def test_sentence_pairs_are_consecutive_and_stay_within_documents():
    pairs = sentence_pairs(CORPUS)
    assert pairs[:3] == [
        ("The cat sat on the mat.", "It was warm!"),
        ("It was warm!", "Was it asleep?"),
        ("Was it asleep?", "Nobody knew."),
    ]
    assert ("Nobody knew.", 'She said "stop."') not in pairs  # no pair across documents
    assert len(pairs) == 3 + 2
    assert sentence_pairs("One. Two.") == [("One.", "Two.")]


@pytest.mark.parametrize("fraction, expected", [(0.0, 0), (0.25, 2), (0.5, 4), (1.0, 8)])
def test_batch_composition(fraction, expected):
    images, captions = photo_batch(8)
    pairs = sentence_pairs(CORPUS)
    mixed = mix_text_pairs(images, captions, pairs, fraction=fraction, seed=0)
    assert mixed.images.shape == images.shape and mixed.images.dtype == np.uint8
    assert mixed.texts.shape == (8, SIZE, SIZE, 3) and mixed.texts.dtype == np.uint8
    assert mixed.is_text_pair.sum() == expected
    rendered = {p: tuple(render_text(list(p), image_size=SIZE)) for p in pairs}
    for i in range(8):
        if mixed.is_text_pair[i]:
            # both sides rendered, and they are two consecutive sentences of the corpus
            matches = [p for p, (a, b) in rendered.items()
                       if np.array_equal(mixed.images[i], a) and np.array_equal(mixed.texts[i], b)]
            assert matches, f"row {i} is not a rendered consecutive-sentence pair"
        else:
            assert np.array_equal(mixed.images[i], images[i])  # the photo is untouched
            assert np.array_equal(mixed.texts[i], render_text(captions[i], image_size=SIZE))


def test_mixer_is_deterministic_given_seed_and_step():
    images, captions = photo_batch(16)
    pairs = sentence_pairs(CORPUS)
    a = mix_text_pairs(images, captions, pairs, fraction=0.5, seed=3, step=7)
    b = mix_text_pairs(images, captions, pairs, fraction=0.5, seed=3, step=7)
    assert np.array_equal(a.is_text_pair, b.is_text_pair) and np.array_equal(a.images, b.images)
    assert np.array_equal(a.texts, b.texts)
    rows = {
        tuple(mix_text_pairs(images, captions, pairs, fraction=0.5, seed=3, step=s).is_text_pair)
        for s in range(6)
    }
    assert len(rows) > 1  # different steps replace different rows
    assert not np.shares_memory(a.images, images)  # the input batch is not modified


def test_float_photos_get_renders_in_the_same_value_range():
    images, captions = photo_batch(4, np.float32)
    mixed = mix_text_pairs(images, captions, sentence_pairs(CORPUS), fraction=0.5, seed=0,
                           render=RenderConfig(background_brightness=255))
    assert mixed.images.dtype == np.float32
    pair_rows = mixed.images[mixed.is_text_pair]
    assert pair_rows.max() == 1.0 and pair_rows.min() == -1.0  # 255 -> 1, ink 0 -> -1


def test_stream_uses_the_batch_number_as_step():
    batches = [photo_batch(4, seed=s) for s in range(3)]
    pairs = sentence_pairs(CORPUS)
    stream = list(cotraining_batches(batches, pairs, fraction=0.25, seed=1))
    assert len(stream) == 3
    for step, (mixed, (images, captions)) in enumerate(zip(stream, batches)):
        direct = mix_text_pairs(images, captions, pairs, fraction=0.25, seed=1, step=step)
        assert np.array_equal(mixed.is_text_pair, direct.is_text_pair)


def test_errors_name_the_fix():
    images, captions = photo_batch(4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mix_text_pairs(images, captions, sentence_pairs(CORPUS), fraction=1.5, seed=0)
    with pytest.raises(ValueError, match="sentence_pairs"):
        mix_text_pairs(images, captions, [], fraction=0.5, seed=0)
    with pytest.raises(ValueError, match="one caption per image"):
        mix_text_pairs(images, captions[:3], sentence_pairs(CORPUS), fraction=0.5, seed=0)


def test_mixed_batch_trains_clippo_with_the_contrastive_loss(getkey):
    model = models.create("clippo-tiny", key=getkey())
    size = model.config.vision.image_shape[0]
    rng = np.random.default_rng(0)
    photos = rng.uniform(-1, 1, (4, size, size, 3)).astype(np.float32)
    mixed = mix_text_pairs(photos, ["a", "b", "c", "d"], sentence_pairs(CORPUS), fraction=0.5,
                           seed=0)

    def loss(m):
        zimg = m.encode_image(jnp.asarray(mixed.images))  # photos and first sentences
        ztxt = m.encode_text(jnp.asarray(mixed.texts))  # captions and second sentences
        return losses.clip_loss(losses.normalize(zimg), losses.normalize(ztxt), m.scale())

    value, grads = eqx.filter_jit(eqx.filter_value_and_grad(loss))(model)
    assert jnp.isfinite(value)
    assert all(jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads))
