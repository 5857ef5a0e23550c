"""Towers and two-tower models: shapes, presets, dtypes, gradients, errors."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from eqvlp import models
from eqvlp.losses import normalize as l2_normalize


def batch(getkey, model, n=3):
    cfg = model.config
    images = jax.random.normal(getkey(), (n, *cfg.vision.image_shape))
    ids = jax.random.randint(getkey(), (n, cfg.text.context_length), 3, cfg.text.vocab_size)
    return images, ids.at[:, 5].set(2)  # an EOS (id 2) in every row


def contrastive_loss(model, images, ids):
    """Plain softmax (CLIP) or sigmoid (SigLIP) loss, enough to reach every parameter."""
    zimg, ztxt = model(images, ids)
    logits = model.scale() * l2_normalize(zimg) @ l2_normalize(ztxt).T + model.bias()
    if model.config.loss == "sigmoid":
        labels = 2 * jnp.eye(len(logits)) - 1
        return -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / len(logits)
    targets = jnp.arange(len(logits))
    return 0.5 * (
        optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
        + optax.softmax_cross_entropy_with_integer_labels(logits.T, targets).mean()
    )


@pytest.mark.parametrize("name", ["clip-tiny", "siglip-tiny"])
def test_encode_shapes_and_dtypes(getkey, name):
    model = models.create(name, key=getkey())
    images, ids = batch(getkey, model)
    zimg, ztxt = model.encode_image(images), model.encode_text(ids)
    assert zimg.shape == ztxt.shape == (3, model.config.embed_dim)
    assert zimg.dtype == ztxt.dtype == jnp.float32
    assert model.logits(images, ids).shape == (3, 3)


@pytest.mark.parametrize("name", ["clip-tiny", "siglip-tiny"])
def test_every_parameter_gets_a_nonzero_gradient(getkey, name):
    model = models.create(name, key=getkey())
    images, ids = batch(getkey, model, n=4)
    grads = eqx.filter_jit(eqx.filter_grad(contrastive_loss))(model, images, ids)
    flat, _ = jax.tree_util.tree_flatten_with_path(grads)
    assert flat
    for path, grad in flat:
        assert jnp.all(jnp.isfinite(grad)), jax.tree_util.keystr(path)
        assert jnp.any(grad != 0), f"zero gradient for {jax.tree_util.keystr(path)}"


def test_bfloat16_compute_keeps_float32_parameters(getkey):
    key = getkey()
    f32 = models.create("clip-tiny", key=key)
    bf16 = models.create("clip-tiny", key=key, dtype="bfloat16")
    images, ids = batch(getkey, f32)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(eqx.filter(bf16, eqx.is_array)))
    a = eqx.filter_jit(lambda m, x: m.encode_image(x))(f32, images)
    b = eqx.filter_jit(lambda m, x: m.encode_image(x))(bf16, images)
    assert b.dtype == jnp.float32
    np.testing.assert_allclose(a, b, atol=0.05 * float(jnp.abs(a).max()))
    grads = eqx.filter_jit(eqx.filter_grad(contrastive_loss))(bf16, images, ids)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))


def test_initial_logit_scale_and_bias(getkey):
    clip = models.create("clip-tiny", key=getkey())
    np.testing.assert_allclose(clip.scale(), 1 / 0.07, rtol=1e-5)
    assert clip.logit_bias is None and float(clip.bias()) == 0.0
    clamped = eqx.tree_at(lambda m: m.logit_scale, clip, jnp.asarray(10.0))
    assert float(clamped.scale()) == 100.0
    siglip = models.create("siglip-tiny", key=getkey())
    np.testing.assert_allclose(siglip.scale(), 10.0, rtol=1e-5)
    assert float(siglip.bias()) == -10.0


@pytest.mark.parametrize("name", sorted(models.PRESETS))
def test_presets_build_abstractly(name):
    abstract = jax.eval_shape(lambda k: models.create(name, key=k), jax.random.key(0))
    leaves = jax.tree.leaves(abstract)
    assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    assert all(x.dtype == jnp.float32 for x in leaves)


def test_preset_parameter_counts():
    def count(name):
        abstract = jax.eval_shape(lambda k: models.create(name, key=k), jax.random.key(0))
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))

    # OpenAI CLIP ViT-B/16 has 149.6M parameters, ViT-L/14 427.6M
    assert abs(count("clip-vit-b16") - 149_620_737) < 1e6
    assert abs(count("clip-vit-l14") - 427_616_513) < 1e6


def test_unknown_preset_lists_choices(getkey):
    with pytest.raises(ValueError, match="clip-vit-b16"):
        models.create("clip-vit-h99", key=getkey())


def test_wrong_image_shape_names_expected_shape(getkey):
    model = models.create("clip-tiny", key=getkey())
    with pytest.raises(ValueError, match=r"\(batch, 32, 32, 3\)"):
        model.encode_image(jnp.zeros((2, 64, 64, 3)))
    # Channel-first or integer images: jaxtyping's check on the signature fires first in the
    # test suite (naming 'batch height width 3'); without it eqvlp's own check names the shape.
    expected = r"\(batch, 32, 32, 3\)|batch height width 3"
    with pytest.raises((ValueError, TypeError), match=expected):
        model.encode_image(jnp.zeros((2, 3, 32, 32)))
    with pytest.raises(TypeError, match="float images|Float\\[.*batch height width 3"):
        model.encode_image(jnp.zeros((2, 32, 32, 3), jnp.uint8))


def test_wrong_text_shape_names_expected_shape(getkey):
    model = models.create("clip-tiny", key=getkey())
    with pytest.raises(ValueError, match=r"\(batch, 16\)"):
        model.encode_text(jnp.zeros((2, 20), jnp.int32))
    # shorter sequences use the first positions
    assert model.encode_text(jnp.full((2, 8), 2, jnp.int32)).shape == (2, 32)


def test_tower_works_under_jit_and_vmap(getkey):
    vit = models.ViT(models.ViTConfig.tiny(pooling="gap", position_embedding="sincos"),
                     key=getkey())
    images = jax.random.normal(getkey(), (2, 32, 32, 3))
    out = eqx.filter_jit(jax.vmap(vit))(images)
    np.testing.assert_allclose(out[1], vit(images[1]), rtol=1e-5, atol=1e-6)


def test_config_validation():
    with pytest.raises(ValueError, match="does not split"):
        models.ViTConfig(image_size=100, patch_size=16)
    with pytest.raises(ValueError, match="class_token"):
        models.ViTConfig(class_token=False, pooling="cls")
    with pytest.raises(ValueError, match="projection_dim"):
        models.CLIPConfig(vision=models.ViTConfig.tiny(projection_dim=32),
                          text=models.TextConfig.tiny(projection_dim=16))
    cfg = models.config("clip-vit-b16")
    assert dataclasses.replace(cfg, dtype="bfloat16").dtype == "bfloat16"


def test_text_padding_mask_makes_the_embedding_independent_of_padding(getkey):
    """With `pad_token_id`, padding is neither attended to nor averaged: a caption embeds the
    same whatever the context length; without it, the padding changes the embedding."""
    ids = jnp.array([1, 7, 9, 12, 2], jnp.int32)  # BOS, three tokens, EOS
    padded = jnp.concatenate([ids, jnp.zeros(11, jnp.int32)])
    masked_cfg = models.TextConfig.tiny(causal=False, pooling="mean", pad_token_id=0)
    masked = models.TextTransformer(masked_cfg, key=getkey())
    np.testing.assert_allclose(masked(ids), masked(padded), rtol=1e-5, atol=1e-6)
    plain = models.TextTransformer(dataclasses.replace(masked_cfg, pad_token_id=None),
                                   key=getkey())
    assert not np.allclose(plain(ids), plain(padded), atol=1e-3)
    # a row of nothing but padding still embeds to finite numbers (position 0 counts)
    assert np.isfinite(masked(jnp.zeros(16, jnp.int32))).all()
    with pytest.raises(ValueError, match="pad_token_id=5000"):
        models.TextConfig.tiny(pad_token_id=5000)
