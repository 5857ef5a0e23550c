"""eqvlp.testing itself: the strategies draw what they promise and the properties catch bugs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eqvlp.losses import sigmoid_loss
from eqvlp.testing import (
    LossProperties,
    assert_close,
    check_closed_form,
    check_finite_at,
    check_matches_reference,
    check_norm_invariance,
    check_permutation_equivariance,
    check_swap_symmetry,
    closed_forms,
)
from eqvlp.testing import strategies as sts


@settings(max_examples=200, deadline=None)
@given(pairs=sts.embedding_pairs(min_batch=2, max_batch=8, dim=5, multiple_of=2))
def test_embedding_pairs_are_unit_norm(pairs):
    zi, zt = pairs
    assert zi.shape == zt.shape and zi.shape[0] % 2 == 0 and 2 <= zi.shape[0] <= 8 and zi.shape[1] == 5
    assert zi.dtype == np.float32 and zt.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(zi, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(zt, axis=1), 1.0, rtol=1e-6)


@settings(max_examples=100, deadline=None)
@given(mode=st.sampled_from(sts.MODES), data=st.data())
def test_each_mode_has_its_structure(mode, data):
    zi, zt = data.draw(sts.embedding_pairs(min_batch=3, max_batch=3, dim=4, modes=(mode,)))
    if mode == "aligned":
        np.testing.assert_array_equal(zi, zt)
    elif mode == "antipodal":
        np.testing.assert_array_equal(zi, -zt)
    elif mode == "repeated_rows":
        assert np.all(zi == zi[0]) and np.all(zt == zt[0])
    elif mode == "near_duplicate":
        assert np.all(np.sum(zi * zt, axis=1) > 0.5)


def test_strategy_bounds():
    with pytest.raises(ValueError, match="no multiple of 8"):
        sts.batch_sizes(1, 6, 8)
    assert sts.unit_rows(np.zeros((2, 3))).tolist() == [[1, 0, 0], [0, 1, 0]]


@settings(max_examples=50, deadline=None)
@given(s=sts.extreme_scales(), b=sts.extreme_biases(), n=sts.row_norms(3))
def test_extreme_strategies_ranges(s, b, n):
    assert 0 <= s <= 1e5 and -1e5 <= b <= 1e5
    assert np.all(n >= 1e-3 * 0.99) and np.all(n <= 1e3 * 1.01)


# -- the checks catch broken losses ----------------------------------------------------------------


def _sig(zi, zt, s, b):
    return sigmoid_loss(zi, zt, s, b)


def _first_row_weighted(zi, zt, s, b):  # not permutation-equivariant
    return sigmoid_loss(zi, zt, s, b) + 0.1 * jnp.sum(zi[0] * zt[0])


def _image_side_only(zi, zt, s, b):  # not swap-symmetric
    return sigmoid_loss(zi, zt, s, b) + jnp.sum(zi[:, 0])


def _unnormalised_dot(zi, zt, s, b):  # sees norms
    return jnp.sum(zi * zt) * s


def _naive_sigmoid(zi, zt, s, b):  # log(sigmoid(x)) underflows to log(0)
    logits = s * zi @ zt.T + b
    m = 2 * jnp.eye(zi.shape[0]) - 1
    return -jnp.sum(jnp.log(jax.nn.sigmoid(m * logits))) / zi.shape[0]


def _pair(n=4, d=6, seed=0):
    rng = np.random.default_rng(seed)
    zi = sts.unit_rows(rng.normal(size=(n, d)))
    zt = sts.unit_rows(rng.normal(size=(n, d)))
    return zi, zt


def test_checks_pass_on_a_correct_loss():
    zi, zt = _pair()
    check_permutation_equivariance(_sig, zi, zt, 10.0, -10.0, np.array([2, 0, 3, 1]))
    check_swap_symmetry(_sig, zi, zt, 10.0, -10.0)
    check_norm_invariance(_sig, zi, zt, 10.0, -10.0, np.full((4, 1), 7.0, np.float32), np.ones((4, 1), np.float32))
    check_finite_at(_sig, zi, zt, 1e5, -1e5)
    check_closed_form(_sig, closed_forms.sigmoid_aligned, 4, 8, 10.0, -10.0)
    check_closed_form(_sig, closed_forms.sigmoid_orthogonal, 4, 8, 10.0, -10.0, kind="orthogonal")


def test_checks_catch_bugs():
    zi, zt = _pair()
    with pytest.raises(AssertionError, match="after permuting pairs"):
        check_permutation_equivariance(_first_row_weighted, zi, zt, 1.0, 0.0, np.array([1, 0, 2, 3]))
    with pytest.raises(AssertionError, match="after swapping"):
        check_swap_symmetry(_image_side_only, zi, zt, 1.0, 0.0)
    with pytest.raises(AssertionError, match="not finite"):
        check_finite_at(_naive_sigmoid, zi, zt, 1e4, -1e4)
    with pytest.raises(AssertionError, match="vs reference"):
        check_matches_reference(_first_row_weighted, _sig, zi, zt, 1.0, 0.5)
    with pytest.raises(AssertionError, match="aligned batch"):
        check_closed_form(_sig, closed_forms.clip_aligned, 4, 8, 10.0, -10.0)
    norms = np.full((4, 1), 3.0, np.float32)
    check_norm_invariance(_unnormalised_dot, zi, zt, 2.0, 0.0, norms, norms)  # normalize() makes it hold
    with pytest.raises(AssertionError):
        assert_close("x", np.array([1.0, np.nan]), np.array([1.0, 2.0]), rtol=1e-5, atol=1e-6)


class TestSuiteFindsBrokenLoss(LossProperties):
    """The suite itself, pointed at a loss that is broken at extreme scales, must fail."""

    loss = staticmethod(_naive_sigmoid)
    max_examples = 30
    # at ordinary scales the naive loss is fine: the other properties must pass
    scales = st.floats(0.1, 5.0)
    biases = st.floats(-2.0, 2.0)

    def test_finite_at_extremes(self):
        with pytest.raises(AssertionError, match="not finite"):
            super().test_finite_at_extremes()

    # the other properties hold for the naive loss at ordinary scales: run them too (30 examples)


def test_closed_forms_values():
    assert closed_forms.sigmoid_orthogonal(1, 10.0, -10.0) == pytest.approx(10.0000454, rel=1e-7)
    assert closed_forms.clip_aligned(1, 5.0) == pytest.approx(0.0, abs=1e-12)
    assert closed_forms.clip_aligned(3, 0.0) == pytest.approx(np.log(3))
    assert closed_forms.clip_orthogonal(5, 3.0) == pytest.approx(np.log(5))
    with pytest.raises(ValueError, match="dim >= 2"):
        closed_forms.orthogonal_batch(4, 6)
