"""CLIPA token reduction: image masks, text reductions, resizing, the phase schedule."""

from types import SimpleNamespace

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from eqvlp import masking, models, nn
from eqvlp.losses import normalize

KEYS = [jax.random.key(i) for i in range(8)]


@pytest.mark.parametrize("keep_ratio", [0.25, 0.5, 0.75, 1.0])
def test_random_mask_keeps_distinct_sorted_patches(keep_ratio):
    for key in KEYS:
        idx = np.asarray(masking.random_indices(key, (6, 4), keep_ratio))
        assert len(idx) == int(24 * keep_ratio)
        assert len(set(idx)) == len(idx) and (np.diff(idx) > 0).all()
        assert idx.min() >= 0 and idx.max() < 24
    draws = {tuple(np.asarray(masking.random_indices(k, 8, 0.5))) for k in KEYS}
    assert len(draws) > 1 or keep_ratio == 1.0


def test_random_mask_is_uniform():
    keys = jax.random.split(jax.random.key(0), 4000)
    counts = np.bincount(np.asarray(jax.vmap(lambda k: masking.random_indices(k, 4, 0.25))(keys)).ravel(), minlength=16)
    np.testing.assert_allclose(counts / 4000, 0.25, atol=0.03)


def test_grid_mask_keeps_one_patch_per_window():
    for key in KEYS:
        idx = np.asarray(masking.grid_indices(key, (6, 8), 2))
        rows, cols = idx // 8, idx % 8
        windows = sorted(zip(rows // 2, cols // 2))
        assert windows == [(r, c) for r in range(3) for c in range(4)]
    offsets = np.stack([np.asarray(masking.grid_indices(k, 4, 2)) for k in KEYS])
    assert len(np.unique(offsets)) > 4  # positions inside windows vary
    with pytest.raises(ValueError, match="windows"):
        masking.grid_indices(KEYS[0], 5, 2)


def test_block_mask_is_one_rectangle():
    assert masking.block_shape(14, 0.25) == (7, 7)
    assert masking.block_shape((4, 8), 0.25) == (2, 4)
    tops = set()
    for key in KEYS:
        idx = np.asarray(masking.block_indices(key, (6, 8), (3, 2)))
        rows, cols = idx // 8, idx % 8
        assert sorted(set(rows)) == list(range(rows.min(), rows.min() + 3))
        assert sorted(set(cols)) == list(range(cols.min(), cols.min() + 2))
        assert len(idx) == 6
        tops.add((rows.min(), cols.min()))
    assert len(tops) > 1
    with pytest.raises(ValueError, match="does not fit"):
        masking.block_indices(KEYS[0], 4, 5)


@pytest.mark.parametrize(
    "mask, kept",
    [(masking.ImageMask("random", 0.5), 8), (masking.ImageMask("grid", window=2), 4),
     (masking.ImageMask("block", 0.25), 4)],
)
def test_image_mask_keeps_cls_and_fixed_length(getkey, mask, kept):
    tokens = jax.random.normal(getkey(), (17, 8))
    out = jax.jit(lambda t, k: mask(t, k, grid=4, num_prefix=1))(tokens, getkey())
    assert out.shape == (1 + kept, 8) and mask.num_kept(4) == kept
    np.testing.assert_array_equal(out[0], tokens[0])
    rows = {tuple(np.asarray(r)) for r in tokens[1:]}
    assert all(tuple(np.asarray(r)) in rows for r in out[1:])
    with pytest.raises(ValueError, match="prefix tokens"):
        mask(tokens[:10], getkey(), grid=4)


def test_masked_encoding_with_everything_kept_equals_unmasked(getkey):
    model = models.create("clip-tiny", key=getkey())
    images = jax.random.normal(getkey(), (2, 32, 32, 3))
    full = model.encode_image(images)
    kept_all = model.encode_image(images, mask=masking.ImageMask("random", 1.0), key=getkey())
    np.testing.assert_allclose(kept_all, full, rtol=1e-5, atol=1e-6)
    half = model.encode_image(images, mask=masking.ImageMask("random", 0.5), key=getkey())
    assert half.shape == full.shape and not np.allclose(half, full)
    with pytest.raises(ValueError, match="key="):
        model.encode_image(images, mask=masking.ImageMask("grid"))


CAPTION = jnp.array([1, 11, 12, 13, 14, 15, 16, 2, 0, 0, 0, 0])  # BOS, 6 content, EOS, pads


def content(row):
    row = np.asarray(row)
    assert row[0] == 1
    eos = int(np.argmax(row == 2))
    assert (row[eos + 1 :] == 0).all()
    return list(row[1:eos])


def test_truncate_text():
    assert content(masking.truncate_text(CAPTION, 5, eos_token_id=2)) == [11, 12, 13]
    assert content(masking.truncate_text(CAPTION, 12, eos_token_id=2)) == [11, 12, 13, 14, 15, 16]
    assert masking.truncate_text(CAPTION, 5, eos_token_id=2).shape == (5,)


def test_random_text_keeps_order_and_count():
    seen = set()
    for key in KEYS:
        kept = content(masking.random_text(CAPTION, key, 6, eos_token_id=2))
        assert len(kept) == 4 and kept == sorted(kept) and set(kept) <= set(range(11, 17))
        seen.add(tuple(kept))
    assert len(seen) > 1
    # shorter than the budget: everything is kept
    assert content(masking.random_text(CAPTION, KEYS[0], 10, eos_token_id=2)) == [11, 12, 13, 14, 15, 16]


def test_block_text_is_a_contiguous_window():
    starts = set()
    for key in KEYS:
        kept = content(masking.block_text(CAPTION, key, 5, eos_token_id=2))
        assert len(kept) == 3 and kept == list(range(kept[0], kept[0] + 3))
        starts.add(kept[0])
    assert starts <= {11, 12, 13, 14} and len(starts) > 1


def test_text_masks_batch_under_jit():
    batch = jnp.stack([CAPTION, CAPTION.at[3:].set(0).at[3].set(2)])
    keys = jax.random.split(KEYS[0], 2)
    mask = masking.TextMask("random", length=6, eos_token_id=2)
    out = jax.jit(jax.vmap(mask))(batch, keys)
    assert out.shape == (2, 6)
    assert content(out[1]) == [11, 12]
    with pytest.raises(ValueError, match="PRNG key"):
        masking.TextMask("block", 6, eos_token_id=2)(CAPTION)
    with pytest.raises(ValueError, match="reduced length"):
        masking.truncate_text(CAPTION, 20, eos_token_id=2)


def test_text_mask_writes_the_models_eos():
    """TextMask defaulted to EOS id 2, dropping the CLIP presets' real EOS (49407)."""
    clip_like = SimpleNamespace(config=SimpleNamespace(text=SimpleNamespace(eos_token_id=49407)))
    ids = jnp.array([49406, 11, 12, 13, 14, 49407, 0, 0])
    mask = masking.TextMask("truncate", length=5)
    with pytest.raises(ValueError, match="for_model"):
        mask(ids)  # no silent default
    assert mask.for_model(clip_like)(ids).tolist() == [49406, 11, 12, 13, 49407]
    no_eos = SimpleNamespace(config=SimpleNamespace(text=SimpleNamespace(eos_token_id=None)))
    with pytest.raises(ValueError, match="declares no eos_token_id"):
        mask.for_model(no_eos)
    with pytest.raises(TypeError, match="eos_token_id"):
        masking.truncate_text(ids, 5)  # the functions take it explicitly too


def test_syntax_priorities():
    assert masking.tag_words("the dog runs quickly on green grass".split()) == [
        "OTHER", "NOUN", "VERB", "OTHER", "OTHER", "ADJ", "NOUN"]
    text = "a small dog is running on the green grass"
    assert masking.syntax_reduce(text, 2) == "dog grass"  # nouns first
    assert masking.syntax_reduce(text, 3) == "small dog grass"  # then the earlier adjective
    assert masking.syntax_reduce(text, 5) == "small dog running green grass"  # then verbs
    assert masking.syntax_reduce(text, 20) == text
    upper = lambda words: ["NOUN" if w.isupper() else "OTHER" for w in words]  # noqa: E731
    assert masking.syntax_reduce("keep THIS and THAT only", 2, tagger=upper) == "THIS THAT"
    with pytest.raises(ValueError, match="one tag per word"):
        masking.syntax_reduce("a b c", 1, tagger=lambda words: ["NOUN"])


def test_resize_round_trips(getkey):
    key = getkey()
    model = models.create("clip-tiny", key=key)
    small = models.resize(model, image_size=16, context_length=8)
    assert small.config.vision.image_size == 16 and small.config.text.context_length == 8
    assert small.image.position_embedding.weight.shape == (1 + 4, 64)
    np.testing.assert_array_equal(small.image.position_embedding.weight[0],
                                  model.image.position_embedding.weight[0])  # CLS row kept
    np.testing.assert_array_equal(small.image.encoder.layers.mlp.fc1.weight,
                                  model.image.encoder.layers.mlp.fc1.weight)
    assert small.encode_image(jnp.zeros((1, 16, 16, 3))).shape == (1, 32)
    # identity when nothing changes
    same = models.resize(model, image_size=32, context_length=16)
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(model)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # sin-cos embeddings are recomputed, so 32 -> 16 -> 32 is exact
    cfg = models.CLIPConfig(vision=models.ViTConfig.tiny(position_embedding="sincos",
                                                         projection_dim=32),
                            text=models.TextConfig.tiny(projection_dim=32))
    sincos = models.CLIP(cfg, key=key)
    back = models.resize(models.resize(sincos, image_size=16), image_size=32)
    images = jax.random.normal(getkey(), (2, 32, 32, 3))
    np.testing.assert_allclose(back.encode_image(images), sincos.encode_image(images), atol=1e-6)


def test_resample_grid_round_trip_of_smooth_table():
    rows, cols = np.meshgrid(np.arange(4.0), np.arange(4.0), indexing="ij")
    table = jnp.asarray(np.stack([np.ones(16), (rows + cols).ravel()], 1), jnp.float32)
    up = nn.resample_grid(table, 4, 8)
    down = nn.resample_grid(up, 8, 4)
    np.testing.assert_allclose(down[:, 0], 1.0, atol=1e-6)  # constants survive exactly
    interior = np.array([5, 6, 9, 10])  # away from the clamped border
    np.testing.assert_allclose(down[interior, 1], table[interior, 1], atol=1e-5)
    np.testing.assert_allclose(nn.resample_1d(table, 16), table)


def test_schedule_phases():
    schedule = masking.TokenReductionSchedule.clipa(100, low_res=64, full_res=224)
    assert schedule.at(0).image_size == 64 and schedule.at(99).image_mask.keep_ratio == 0.7
    assert schedule.at(100).image_size == 224 and schedule.at(500).image_mask is None
    assert schedule.changes_at(0) and schedule.changes_at(100) and not schedule.changes_at(50)
    with pytest.raises(ValueError, match="step 0"):
        masking.TokenReductionSchedule((masking.Phase(5, 64),))


def test_two_phase_training_loop(getkey):
    """Low-res masked pre-training, then full-res fine-tuning, driven by the schedule."""
    schedule = masking.TokenReductionSchedule((
        masking.Phase(0, 16, masking.ImageMask("random", 0.5),
                      masking.TextMask("random", 8, eos_token_id=2)),
        masking.Phase(3, 32),
    ))
    model = models.create("clip-tiny", key=getkey())
    images32 = jax.random.normal(getkey(), (4, 32, 32, 3))
    ids = jnp.tile(CAPTION[None], (4, 1)).at[:, 1].set(jnp.arange(20, 24))
    optimizer = optax.adam(1e-3)

    def loss_fn(model, images, ids, phase, key):
        k_img, k_txt = jax.random.split(key)
        if phase.text_mask is not None:
            ids = jax.vmap(phase.text_mask)(ids, jax.random.split(k_txt, len(ids)))
        zimg = model.encode_image(images, mask=phase.image_mask, key=k_img)
        zimg = normalize(zimg)
        ztxt = normalize(model.encode_text(ids))
        logits = model.scale() * zimg @ ztxt.T
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(4)).mean()

    value_and_grad = eqx.filter_jit(eqx.filter_value_and_grad(loss_fn))
    losses, sizes = [], []
    for step in range(5):
        phase = schedule.at(step)
        if schedule.changes_at(step):
            model = masking.enter_phase(model, phase)
            state = optimizer.init(eqx.filter(model, eqx.is_array))
        size = phase.image_size
        images = jax.image.resize(images32, (4, size, size, 3), "linear")
        loss, grads = value_and_grad(model, images, ids, phase, getkey())
        with jax.numpy_dtype_promotion("standard"):
            updates, state = optimizer.update(grads, state)
        model = eqx.apply_updates(model, updates)
        losses.append(float(loss))
        sizes.append(model.config.vision.image_size)
    assert sizes == [16, 16, 16, 32, 32]
    assert all(np.isfinite(losses))
