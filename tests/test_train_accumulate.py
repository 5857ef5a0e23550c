"""Exact contrastive gradient accumulation: 4 micro-batches of 8 equal one batch of 32.

Tolerance: float32, so the accumulated loss must match to 1e-5 relative, and every gradient
element `a` must satisfy `|a - b| <= 1e-5 * |b| + 1e-5 * max|g|`, where `b` is the large-batch
gradient and `max|g|` the largest gradient element of the whole model. The absolute part
covers gradients that are mathematically zero (attention key biases, which softmax ignores)
and come out as float noise of order 1e-9 either way.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqvlp import models, nn
from eqvlp.losses import clip_loss, normalize, sigmoid_loss
from eqvlp.train.accumulate import accumulated_value_and_grad

BATCH, MICRO = 32, 4


# Both sides of each comparison compile the same way; without the backend optimiser and with
# XLA:CPU's older elemental emitters the tiny models compile about six times faster.
_QUICK_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def _jit(fn, model):
    """`fn(model, *args)` jitted over the model's arrays, compiled with `_QUICK_COMPILE`."""
    params, static = eqx.partition(model, eqx.is_array)
    compiled = jax.jit(lambda p, *args: fn(eqx.combine(p, static), *args),
                       compiler_options=_QUICK_COMPILE)
    return lambda *args: compiled(params, *args)


def _random_model(make, seed):
    """`make()`'s structure with random weights. The values do not matter for an equality test,
    and drawing them with NumPy costs no XLA compilation, unlike the eager initialisers."""
    rng = np.random.default_rng(seed)
    fill = lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape), s.dtype)  # noqa: E731
    return jax.tree.map(fill, jax.eval_shape(make))


def _assert_grads_close(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    got_leaves = [np.asarray(g) for g in jax.tree.leaves(got)]  # NumPy: no compile per shape
    want_leaves = [np.asarray(w) for w in jax.tree.leaves(want)]
    scale = max(float(np.max(np.abs(w))) for w in want_leaves)
    assert scale > 0
    for a, b in zip(got_leaves, want_leaves, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * scale)


def _softmax(model, emb):
    return clip_loss(normalize(emb[0]), normalize(emb[1]), model.scale())


def _sigmoid(model, emb):
    return sigmoid_loss(normalize(emb[0]), normalize(emb[1]), model.scale(), model.bias())


@pytest.mark.parametrize(("name", "loss"), [("clip-tiny", _softmax), ("siglip-tiny", _sigmoid)])
def test_accumulated_equals_large_batch(name, loss):
    model = _random_model(lambda: models.create(name, key=jax.random.key(0)), seed=0)
    rng = np.random.default_rng(1)
    images = rng.standard_normal((BATCH, 32, 32, 3), np.float32)
    ids = rng.integers(3, 1000, (BATCH, 16), np.int32)
    seen = []  # batch sizes embed is traced with

    def embed(m, batch):
        seen.append((batch[0].shape[0], batch[1].shape[0]))
        return m.encode_image(batch[0]), m.encode_text(batch[1])

    def both(m, batch):
        accumulated = accumulated_value_and_grad(embed, loss, m, batch, micro_batches=MICRO)
        reference = eqx.filter_value_and_grad(lambda m: loss(m, embed(m, batch)))(m)
        return accumulated, reference

    (value, grads), (ref_value, ref_grads) = _jit(both, model)((images, ids))
    # pass 1 (lax.map) and pass 3 (lax.scan) each trace embed once, on one micro-batch
    assert seen == [(BATCH // MICRO,) * 2] * 2 + [(BATCH,) * 2]
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    _assert_grads_close(grads, ref_grads)
    assert np.abs(grads.logit_scale) > 0  # the direct gradient through the loss arrived


class _Toy(eqx.Module):
    """A tiny two-tower model: one Linear per modality and a learned log-scale."""

    left: nn.Linear
    right: nn.Linear
    log_scale: jax.Array

    def __init__(self, key):
        kl, kr = jax.random.split(key)
        self.left, self.right = nn.Linear(3, 4, key=kl), nn.Linear(5, 4, key=kr)
        self.log_scale = jnp.asarray(1.0, jnp.float32)


def _toy_loss(model, emb):
    return clip_loss(normalize(emb[0]), normalize(emb[1]), jnp.exp(model.log_scale))


def test_one_micro_batch_is_plain_value_and_grad_and_keys_ride_in_the_batch(getkey):
    model = _random_model(lambda: _Toy(jax.random.key(0)), seed=0)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((6, 3), np.float32), rng.standard_normal((6, 5), np.float32)
    keys = jax.random.split(getkey(), 6)  # one key per example: random draws follow the example
    seen = []

    def embed(m, batch):
        x, y, k = batch
        seen.append(x.shape[0])
        noise = jax.vmap(lambda k: jax.random.normal(k, (4,)))(k)
        return m.left(x) + noise, m.right(y)

    def all_three(m, batch):
        plain = eqx.filter_value_and_grad(lambda m: _toy_loss(m, embed(m, batch)))(m)
        one = accumulated_value_and_grad(embed, _toy_loss, m, batch, micro_batches=1)
        three = accumulated_value_and_grad(embed, _toy_loss, m, batch, micro_batches=3)
        return plain, one, three

    (want_value, want_grads), one, three = _jit(all_three, model)((x, y, keys))
    assert seen == [6, 6, 2, 2]  # plain, one micro-batch (the full batch), then 3 x 2 examples
    for value, grads in (one, three):
        np.testing.assert_allclose(value, want_value, rtol=1e-6)
        _assert_grads_close(grads, want_grads)


def test_micro_batches_must_divide_the_batch():
    model = jax.eval_shape(lambda: _Toy(jax.random.key(0)))  # the checks come before any work
    batch = (jnp.zeros((6, 3)), jnp.zeros((6, 5)))

    def embed(m, b):
        return m.left(b[0]), m.right(b[1])

    with pytest.raises(ValueError, match="batch of 6 does not split into micro_batches=4.*e.g. 3"):
        accumulated_value_and_grad(embed, _toy_loss, model, batch, micro_batches=4)
    with pytest.raises(ValueError, match="same leading batch axis"):
        accumulated_value_and_grad(
            embed, _toy_loss, model, (jnp.zeros((6, 3)), jnp.zeros((4, 5))), micro_batches=2
        )
    with pytest.raises(ValueError, match="must be an array"):  # e.g. raw caption strings
        accumulated_value_and_grad(embed, _toy_loss, model, (batch, ["a cat"] * 6), micro_batches=2)
    with pytest.raises(ValueError, match="micro_batches=0"):
        accumulated_value_and_grad(embed, _toy_loss, model, batch, micro_batches=0)
