"""CLIPPO (one ViT for photos and rendered text) and 1T-CLIP (one shared transformer)."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqvlp import losses, models
from eqvlp.render import render_text

CAPTIONS = ["a red square", "A Blue Circle.", "two cats on a mat, sleeping", ""]


def text_inputs(model, getkey, n=4):
    """Strings for CLIPPO, token ids for 1T-CLIP."""
    if isinstance(model, models.CLIPPO):
        return CAPTIONS[:n]
    ids = jax.random.randint(getkey(), (n, model.config.context_length), 3, model.config.vocab_size)
    return ids.at[:, -1].set(2)


def photos(model, getkey, n=4):
    return jax.random.normal(getkey(), (n, *model.config.vision.image_shape))


# Every loss, fed with the model's embeddings. Losses that do not use the logit scale or bias
# leave those parameters without gradient.
def _views(z):
    return z[None]  # one "strong view" per modality for clip-rocket's local terms


def _sharded(loss_fn):
    """The global-batch loss with the batch split over two (fake CPU) devices."""
    mesh = jax.make_mesh((2,), ("data",), devices=jax.devices()[:2],
                         axis_types=(jax.sharding.AxisType.Auto,))
    return losses.shard_loss(loss_fn, mesh)


LOSSES = {
    "clip": (lambda m, zi, zt: losses.clip_loss(zi, zt, m.scale()), True),
    "clip_smoothed": (
        lambda m, zi, zt: losses.clip_loss(zi, zt, m.scale(), label_smoothing=0.1), True
    ),
    "sigmoid": (lambda m, zi, zt: losses.sigmoid_loss(zi, zt, m.scale(), m.bias()), True),
    "chunked_sigmoid": (
        lambda m, zi, zt: losses.chunked_sigmoid_loss(zi, zt, m.scale(), m.bias(), chunk_size=3),
        True,
    ),
    "clip_rocket": (
        lambda m, zi, zt: losses.clip_rocket_loss(zi, zt, _views(zi), _views(zt), m.scale(), 10.0),
        True,
    ),
    "distributed_clip": (
        lambda m, zi, zt: _sharded(losses.distributed_clip_loss)(zi, zt, m.scale()), True
    ),
    "distributed_sigmoid": (
        lambda m, zi, zt: _sharded(losses.distributed_sigmoid_loss)(zi, zt, m.scale(), m.bias()),
        True,
    ),
    "barlip": (lambda m, zi, zt: losses.barlip_loss(zi, zt), False),
    "siamlip": (lambda m, zi, zt: losses.siamlip_loss(zi, zt, zt, zi), False),
}


@pytest.mark.parametrize("name", ["clippo-tiny", "onetower-clip-tiny"])
def test_shapes_dtypes_and_initial_temperature(getkey, name):
    model = models.create(name, key=getkey())
    images, texts = photos(model, getkey, 3), text_inputs(model, getkey, 3)
    zimg, ztxt = model.encode_image(images), model.encode_text(texts)
    assert zimg.shape == ztxt.shape == (3, model.config.embed_dim)
    assert zimg.dtype == ztxt.dtype == jnp.float32
    assert model.logits(images, text_inputs(model, getkey, 2)).shape == (3, 2)
    np.testing.assert_allclose(model.scale(), 10.0, rtol=1e-6)  # temperature init 10
    np.testing.assert_allclose(model.logit_scale, math.log(10.0), rtol=1e-6)
    assert model.logit_bias is None and float(model.bias()) == 0.0


def test_clippo_encodes_text_with_the_image_tower(getkey):
    model = models.create("clippo-tiny", key=getkey())
    rendered = model.render(CAPTIONS)
    assert rendered.shape == (4, 64, 64, 3) and rendered.dtype == np.uint8
    np.testing.assert_array_equal(rendered, render_text(CAPTIONS, image_size=64))
    from_strings = model.encode_text(CAPTIONS)
    # strings, uint8 renders and [-1, 1] floats give the same embeddings ...
    np.testing.assert_allclose(model.encode_text(rendered), from_strings, rtol=1e-5, atol=1e-6)
    # ... which are the image tower's embeddings of the rendered text in [-1, 1]
    as_float = jnp.asarray(rendered, jnp.float32) / 127.5 - 1
    np.testing.assert_allclose(model.encode_image(as_float), from_strings, rtol=1e-5, atol=1e-6)
    # upper case is lower-cased before rendering, as in big_vision
    assert np.array_equal(model.render(["A RED SQUARE"]), rendered[:1])


def test_clippo_runs_under_jit_on_rendered_images(getkey):
    model = models.create("clippo-tiny", key=getkey())
    rendered = jnp.asarray(model.render(CAPTIONS[:2]))
    logits_fn = eqx.filter_jit(lambda m, x, t: m.logits(x, t))
    logits = logits_fn(model, photos(model, getkey, 2), rendered)
    assert logits.shape == (2, 2) and jnp.all(jnp.isfinite(logits))


# Each model once and each loss family once (every combination costs ~1 min of compilation).
@pytest.mark.parametrize(("name", "model_loss"), [("clippo-tiny", "sigmoid"),
                                                  ("onetower-clip-tiny", "softmax")])
def test_trainable_with_every_loss(getkey, name, model_loss):
    model = models.create(name, key=getkey(), loss=model_loss)
    images, texts = photos(model, getkey), text_inputs(model, getkey)
    if isinstance(model, models.CLIPPO):
        texts = jnp.asarray(model.render(texts))  # render once on the host, outside the grad

    def outputs(m):
        zimg, ztxt = m(images, texts)
        return zimg, ztxt, m.scale(), m.bias()

    # Chain rule: one compiled forward/backward of the model, pulled back from each loss's
    # gradient with respect to (zimg, ztxt, scale, bias). Same result as grad(loss o model).
    @eqx.filter_jit
    def model_grads(m, cotangents):
        _, pullback = eqx.filter_vjp(outputs, m)
        return pullback(cotangents)[0]

    embeddings = eqx.filter_jit(outputs)(model)
    for loss, (fn, uses_scale) in LOSSES.items():
        if ("sigmoid" in loss) != (model_loss == "sigmoid"):
            continue  # sigmoid losses train the model with a bias, softmax ones without

        def objective(zimg, ztxt, scale, bias):
            return fn(_Scales(scale, bias), losses.normalize(zimg), losses.normalize(ztxt))

        value, cotangents = jax.value_and_grad(objective, argnums=(0, 1, 2, 3))(*embeddings)
        assert jnp.isfinite(value), loss
        grads = model_grads(model, cotangents)
        flat, _ = jax.tree_util.tree_flatten_with_path(grads)
        for path, grad in flat:
            where = jax.tree_util.keystr(path)
            assert jnp.all(jnp.isfinite(grad)), f"{where} with {loss}"
            if uses_scale or "logit" not in where:
                assert jnp.any(grad != 0), f"zero gradient for {where} with {loss}"


class _Scales:
    """Stands in for the model inside a loss: `scale()` and `bias()` from given values."""

    def __init__(self, scale, bias):
        self._scale, self._bias = scale, bias

    def scale(self):
        return self._scale

    def bias(self):
        return self._bias


def test_onetower_shares_everything_but_the_embeddings(getkey):
    model = models.create("onetower-clip-tiny", key=getkey())
    cfg = model.config
    assert model.token_embedding.shape == (cfg.vocab_size, cfg.vision.width)
    # the text path runs the image tower's encoder, norm, MAP head and projection
    ids = text_inputs(model, getkey, 1)[0]
    expected = model.vit.encode_tokens(model.embed_text(ids))
    np.testing.assert_allclose(model.encode_text(ids[None])[0], expected, rtol=1e-5, atol=1e-6)
    # shorter sequences use the first positions
    assert model.encode_text(ids[None, :5]).shape == (1, cfg.embed_dim)


def test_bfloat16_compute_keeps_float32_parameters(getkey):
    for name in ["clippo-tiny", "onetower-clip-tiny"]:
        key = getkey()
        f32, bf16 = models.create(name, key=key), models.create(name, key=key, dtype="bfloat16")
        images = photos(f32, getkey, 2)
        a, b = f32.encode_image(images), bf16.encode_image(images)
        assert b.dtype == jnp.float32
        np.testing.assert_allclose(a, b, atol=0.05 * float(jnp.abs(a).max()))
        params = jax.tree.leaves(eqx.filter(bf16, eqx.is_array))
        assert all(p.dtype == jnp.float32 for p in params)


def test_sigmoid_variant_has_siglip_bias(getkey):
    model = models.create("clippo-tiny", key=getkey(), loss="sigmoid")
    assert float(model.bias()) == -10.0 and np.isclose(float(model.scale()), 10.0)


def test_preset_sizes_match_the_paper():
    def count(name):
        abstract = jax.eval_shape(lambda k: models.create(name, key=k), jax.random.key(0))
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))

    # CLIPPO paper: B/16 CLIPPO 93M, 1T-CLIP 118M parameters (the difference: 32k x 768 tokens)
    assert abs(count("clippo-vit-b16") - 93e6) < 1e6
    assert abs(count("onetower-clip-vit-b16") - 118e6) < 1e6
    cfg = models.config("clippo-vit-b16")
    assert cfg.vision.pooling == "map" and not cfg.vision.class_token and cfg.embed_dim == 768


def test_errors_name_the_fix(getkey):
    clippo = models.create("clippo-tiny", key=getkey())
    with pytest.raises((ValueError, TypeError), match=r"\(batch, 64, 64, 3\)|batch height width 3"):
        clippo.encode_text(jnp.zeros((2, 32, 32, 3), jnp.uint8))
    with pytest.raises(TypeError, match="a batch"):
        clippo.encode_text("a single string")
    with pytest.raises(ValueError, match="larger ViTConfig.image_size"):
        models.CLIPPOConfig(vision=models.ViTConfig.tiny(image_size=16, patch_size=8))
    onetower = models.create("onetower-clip-tiny", key=getkey())
    with pytest.raises(ValueError, match=r"\(batch, 16\)"):
        onetower.encode_text(jnp.zeros((2, 20), jnp.int32))
