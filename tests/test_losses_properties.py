"""The eqvlp.testing property suite, run on every eqvlp loss (200 hypothesis examples each).

Each loss is adapted to the suite's `loss(zimg, ztxt, scale, bias)` signature at module level, so
the jitted function is the same object across examples and compiles once per batch size.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eqvlp.losses import (
    barlip_loss,
    chunked_sigmoid_loss,
    clip_loss,
    clip_rocket_loss,
    distributed_clip_loss,
    distributed_sigmoid_loss,
    shard_loss,
    siamlip_loss,
    sigmoid_loss,
    swalip_loss,
)
from eqvlp.testing import LossProperties, check_matches_reference, closed_forms
from eqvlp.testing import strategies as sts


def _mesh(n):
    return jax.make_mesh((n,), ("data",), devices=jax.devices()[:n], axis_types=(jax.sharding.AxisType.Auto,))


def clip(zi, zt, s, b):
    return clip_loss(zi, zt, s)


def sigmoid(zi, zt, s, b):
    return sigmoid_loss(zi, zt, s, b)


def chunked3(zi, zt, s, b):
    return chunked_sigmoid_loss(zi, zt, s, b, chunk_size=3)


_ring8 = shard_loss(distributed_sigmoid_loss, _mesh(8), method="ring")
_bidir8 = shard_loss(distributed_sigmoid_loss, _mesh(8), method="bidir")
_clip8 = shard_loss(distributed_clip_loss, _mesh(8))


def ring8(zi, zt, s, b):
    return _ring8(zi, zt, s, b)


def bidir8(zi, zt, s, b):
    return _bidir8(zi, zt, s, b)


def dist_clip8(zi, zt, s, b):
    return _clip8(zi, zt, s)


def rocket(zi, zt, s, b):
    # Two strong views per modality built from the inputs, so permutations act on them too.
    return clip_rocket_loss(zi, zt, jnp.stack([zi, zt]), jnp.stack([zt, zi]), s, s)


def rocket_aligned(batch, s, b):
    # zimg = ztxt and every view equal: global term plus 2 smoothed local terms, weights 1 : 2.
    glob = closed_forms.clip_aligned(batch, s)
    local = closed_forms.clip_aligned(batch, s, label_smoothing=0.1)
    return (glob + 2 * local) / 3


def siamlip(zi, zt, s, b):
    return siamlip_loss(zi, zt, zi, zt)


def barlip(zi, zt, s, b):
    return barlip_loss(zi, zt)


def swalip(zi, zt, s, b):
    # Unit rows stand in for prototype scores (cosines to 16 prototypes).
    return swalip_loss(zi, zt, s)


class TestClipLoss(LossProperties):
    loss = staticmethod(clip)
    aligned_value = staticmethod(closed_forms.clip_aligned)
    orthogonal_value = staticmethod(closed_forms.clip_orthogonal)


class TestSigmoidLoss(LossProperties):
    loss = staticmethod(sigmoid)
    aligned_value = staticmethod(closed_forms.sigmoid_aligned)
    orthogonal_value = staticmethod(closed_forms.sigmoid_orthogonal)


class TestChunkedSigmoidLoss(LossProperties):
    loss = staticmethod(chunked3)
    reference = staticmethod(sigmoid)
    aligned_value = staticmethod(closed_forms.sigmoid_aligned)
    orthogonal_value = staticmethod(closed_forms.sigmoid_orthogonal)


class TestRingSigmoidLoss8(LossProperties):
    loss = staticmethod(ring8)
    reference = staticmethod(sigmoid)
    aligned_value = staticmethod(closed_forms.sigmoid_aligned)
    orthogonal_value = staticmethod(closed_forms.sigmoid_orthogonal)
    # One shape (two rows per device) on 8 simulated devices, which are slow to run on 2 cores;
    # other shapes and device counts: test_distributed_equals_single_device and test_losses.py.
    batch_multiple = 8
    min_batch = max_batch = 16
    dim = 32


class TestBidirSigmoidLoss8(TestRingSigmoidLoss8):
    loss = staticmethod(bidir8)


class TestDistributedClipLoss8(LossProperties):
    loss = staticmethod(dist_clip8)
    reference = staticmethod(clip)
    aligned_value = staticmethod(closed_forms.clip_aligned)
    orthogonal_value = staticmethod(closed_forms.clip_orthogonal)
    # One shape (two rows per device) on 8 simulated devices, which are slow to run on 2 cores;
    # other shapes and device counts: test_distributed_equals_single_device and test_losses.py.
    batch_multiple = 8
    min_batch = max_batch = 16
    dim = 32


class TestClipRocketLoss(LossProperties):
    loss = staticmethod(rocket)
    aligned_value = staticmethod(rocket_aligned)
    max_batch = 4  # five clip terms per call: compile fewer shapes


class TestSiamLIPLoss(LossProperties):
    loss = staticmethod(siamlip)
    aligned_value = staticmethod(lambda batch, s, b: 0.0)
    # `2 - 2 cos` cancels to near 0 for aligned rows, so float32 rounding of the terms (size 2)
    # decides the error: a few ulps of 2 (hypothesis found 1.34e-6), not a few ulps of the result.
    atol = 4e-6


class TestBarLIPLoss(LossProperties):
    loss = staticmethod(barlip)


class TestSwALIPLoss(LossProperties):
    loss = staticmethod(swalip)


# -- chunked == reference for any batch AND chunk size --------------------------------------------


@functools.cache
def _chunked(chunk):
    def f(zi, zt, s, b):
        return chunked_sigmoid_loss(zi, zt, s, b, chunk_size=chunk)

    return f


@settings(max_examples=200, deadline=None)
@given(pairs=sts.embedding_pairs(max_batch=6, dim=8), chunk=st.sampled_from([2, 5]),
       scale=sts.scales(), bias=sts.biases())
def test_chunked_equals_reference_any_chunk(pairs, chunk, scale, bias):
    check_matches_reference(_chunked(chunk), sigmoid, *pairs, scale, bias, rtol=1e-5)


# -- distributed == single device on 1, 2, 4 and 8 devices ----------------------------------------


@functools.cache
def _distributed(kind, n):
    if kind == "clip":
        f = shard_loss(distributed_clip_loss, _mesh(n))
        return lambda zi, zt, s, b: f(zi, zt, s)
    f = shard_loss(distributed_sigmoid_loss, _mesh(n), method=kind)
    return lambda zi, zt, s, b: f(zi, zt, s, b)


@pytest.mark.parametrize("kind", ["ring", "bidir", "clip"])
@pytest.mark.parametrize("n", [1, 2, 4])
def test_distributed_equals_single_device(kind, n):
    reference = clip if kind == "clip" else sigmoid

    @settings(max_examples=200, deadline=None)
    # One batch size per device count (two rows per device) keeps this to one compilation each;
    # one row per device and uneven shapes are covered by the 8-device suites and test_losses.py.
    @given(pairs=sts.embedding_pairs(min_batch=2 * n, max_batch=2 * n, dim=8, multiple_of=n),
           scale=sts.scales(), bias=sts.biases())
    def run(pairs, scale, bias):
        check_matches_reference(_distributed(kind, n), reference, *pairs, scale, bias, rtol=1e-5)

    run()


def test_siglip_at_init_random_high_dim(getkey):
    """Random unit vectors in high dim are nearly orthogonal: the loss is near its init closed form."""
    batch, dim = 16, 4096
    zi = jax.random.normal(getkey(), (batch, dim))
    zt = jax.random.normal(getkey(), (batch, dim))
    zi, zt = (z / jnp.linalg.norm(z, axis=1, keepdims=True) for z in (zi, zt))
    expected = closed_forms.softplus(10.0) + (batch - 1) * closed_forms.softplus(-10.0)
    assert expected == pytest.approx(10.0000454 + 4.54e-5 * (batch - 1), rel=1e-6)
    # |cos| ~ 1/sqrt(dim) = 0.016 moves each positive logit by ~0.16 and the loss by about as much.
    for loss in (sigmoid, chunked3):
        assert float(loss(zi, zt, 10.0, -10.0)) == pytest.approx(expected, abs=0.5)
    zi, zt = (jnp.asarray(z) for z in closed_forms.orthogonal_batch(batch, 2 * batch))
    np.testing.assert_allclose(float(sigmoid(zi, zt, 10.0, -10.0)), expected, rtol=1e-6)
