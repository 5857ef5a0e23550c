"""A reusable property suite for contrastive losses: point it at your loss, get ~7 pytest tests.

A loss under test is any function `loss(zimg, ztxt, scale, bias) -> scalar` of two `(batch, dim)`
embedding batches (row i of each is a positive pair) and two scalars. Adapt other signatures with
a lambda, e.g. `lambda zi, zt, s, b: clip_loss(zi, zt, s)`.

Use it by subclassing (pytest collects classes named `Test*`):

    class TestMyLoss(LossProperties):
        loss = staticmethod(my_loss)
        reference = staticmethod(my_slow_but_obvious_loss)   # optional
        aligned_value = staticmethod(closed_forms.sigmoid_aligned)  # optional

Each property is also a plain `check_*` function on concrete inputs, for use outside pytest or
with your own strategies. The loss and its gradient are jitted once per batch shape, so 200
examples cost a handful of compilations.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eqvlp.losses.validation import normalize
from eqvlp.testing import strategies as sts
from eqvlp.testing.closed_forms import aligned_batch, orthogonal_batch

__all__ = [
    "LossProperties",
    "assert_close",
    "check_closed_form",
    "check_finite_at",
    "check_matches_reference",
    "check_norm_invariance",
    "check_permutation_equivariance",
    "check_swap_symmetry",
    "value_and_grads",
]

LossFn = Callable[..., jax.Array]


_normalize = jax.jit(normalize)


@functools.cache
def _compiled(loss: LossFn):
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))


def value_and_grads(loss: LossFn, zimg, ztxt, scale, bias):
    """`(value, (d_zimg, d_ztxt, d_scale, d_bias))` as numpy float64, from a cached jitted grad."""
    args = (jnp.asarray(zimg), jnp.asarray(ztxt), jnp.float32(scale), jnp.float32(bias))
    value, grads = _compiled(loss)(*args)
    return np.float64(value), tuple(np.asarray(g, np.float64) for g in grads)


def assert_close(what: str, actual, expected, *, rtol: float, atol: float) -> None:
    """Array-wise closeness: `max|a - e| <= atol + rtol * max|e|`.

    Relative to the largest entry, not entry by entry: a gradient entry that is 1e-12 by
    cancellation cannot be expected to match to 1e-5 of itself.
    """
    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    err = float(np.max(np.abs(a - e), initial=0.0))
    bound = atol + rtol * float(np.max(np.abs(e), initial=0.0))
    if not err <= bound:  # written so that NaN fails
        raise AssertionError(f"{what}: max abs error {err:.3g} > {bound:.3g}\nactual={a}\nexpected={e}")


def _tol(rtol, atol, scale, bias):
    # Rounding in a logit of size |s| + |b| is about (|s| + |b|) * eps, and so is the error it
    # leaves in values and gradients: `atol` is per unit of logit size.
    return dict(rtol=rtol, atol=atol * (1.0 + abs(float(scale)) + abs(float(bias))))


def check_permutation_equivariance(loss, zimg, ztxt, scale, bias, perm, *, rtol=1e-5, atol=1e-6):
    """Reordering the pairs leaves the loss unchanged and reorders the embedding gradients."""
    tol = _tol(rtol, atol, scale, bias)
    v, g = value_and_grads(loss, zimg, ztxt, scale, bias)
    vp, gp = value_and_grads(loss, zimg[perm], ztxt[perm], scale, bias)
    assert_close("loss after permuting pairs", vp, v, **tol)
    assert_close("d_zimg after permuting pairs", gp[0], g[0][perm], **tol)
    assert_close("d_ztxt after permuting pairs", gp[1], g[1][perm], **tol)
    assert_close("d_scale after permuting pairs", gp[2], g[2], **tol)
    assert_close("d_bias after permuting pairs", gp[3], g[3], **tol)


def check_swap_symmetry(loss, zimg, ztxt, scale, bias, *, rtol=1e-5, atol=1e-6):
    """Swapping the modalities leaves the loss unchanged and swaps the embedding gradients."""
    tol = _tol(rtol, atol, scale, bias)
    v, g = value_and_grads(loss, zimg, ztxt, scale, bias)
    vs, gs = value_and_grads(loss, ztxt, zimg, scale, bias)
    assert_close("loss after swapping zimg and ztxt", vs, v, **tol)
    assert_close("d_zimg after swap vs d_ztxt", gs[0], g[1], **tol)
    assert_close("d_ztxt after swap vs d_zimg", gs[1], g[0], **tol)


def check_norm_invariance(loss, zimg, ztxt, scale, bias, norms_img, norms_txt, *, rtol=1e-5, atol=1e-6):
    """Rescaling rows before `normalize` changes nothing: the loss sees directions only."""
    tol = _tol(rtol, atol, scale, bias)
    base = value_and_grads(loss, _normalize(zimg), _normalize(ztxt), scale, bias)
    scaled = value_and_grads(loss, _normalize(zimg * norms_img), _normalize(ztxt * norms_txt), scale, bias)
    assert_close("loss after rescaling rows", scaled[0], base[0], **tol)
    assert_close("d_scale after rescaling rows", scaled[1][2], base[1][2], **tol)


def check_finite_at(loss, zimg, ztxt, scale, bias):
    """The loss and all four gradients are finite (at any scale and bias)."""
    v, g = value_and_grads(loss, zimg, ztxt, scale, bias)
    names = ("loss", "d_zimg", "d_ztxt", "d_scale", "d_bias")
    for name, x in zip(names, (v, *g)):
        if not np.all(np.isfinite(x)):
            raise AssertionError(f"{name} is not finite at scale={scale}, bias={bias}: {x}")


def check_matches_reference(loss, reference, zimg, ztxt, scale, bias, *, rtol=1e-5, atol=1e-6):
    """Values and all four gradients equal those of `reference` (e.g. a fast kernel vs its spec)."""
    tol = _tol(rtol, atol, scale, bias)
    v, g = value_and_grads(loss, zimg, ztxt, scale, bias)
    vr, gr = value_and_grads(reference, zimg, ztxt, scale, bias)
    assert_close("loss vs reference", v, vr, **tol)
    for name, a, e in zip(("d_zimg", "d_ztxt", "d_scale", "d_bias"), g, gr):
        assert_close(f"{name} vs reference", a, e, **tol)


def check_closed_form(loss, expected: Callable, batch, dim, scale, bias, *, kind="aligned", rtol=1e-5, atol=1e-6):
    """The loss on `closed_forms.aligned_batch` / `orthogonal_batch` equals `expected(B, s, b)`."""
    tol = _tol(rtol, atol, scale, bias)
    zimg, ztxt = (aligned_batch if kind == "aligned" else orthogonal_batch)(batch, dim)
    v, _ = value_and_grads(loss, zimg, ztxt, scale, bias)
    assert_close(f"loss on the {kind} batch (B={batch}, s={scale}, b={bias})", v, expected(batch, scale, bias), **tol)


class LossProperties:
    """Property tests for `loss(zimg, ztxt, scale, bias)`; subclass as `Test...` and set `loss`.

    Class attributes (override as needed):

    - `loss`: the function under test (wrap it in `staticmethod`).
    - `reference`: a function it must equal, values and gradients; None leaves that test out.
    - `aligned_value`, `orthogonal_value`: `f(batch, scale, bias)` giving the exact loss on the
      closed-form batches (see `eqvlp.testing.closed_forms`); None leaves the test out.
    - `swap_symmetric`: whether swapping the modalities must leave the loss unchanged.
    - `min_batch`, `max_batch`, `batch_multiple`, `dim`: the shapes drawn (keep them few: each
      batch size compiles once). `batch_multiple` is for sharded losses (number of devices).
    - `scales`, `biases`: strategies for ordinary inputs; `max_examples`, `rtol`, `atol`.
    """

    loss: LossFn | None = None
    reference: LossFn | None = None
    aligned_value: Callable | None = None
    orthogonal_value: Callable | None = None
    swap_symmetric: bool = True
    min_batch: int = 1
    max_batch: int = 5
    batch_multiple: int = 1
    dim: int = 10
    max_examples: int = 200
    rtol: float = 1e-5
    atol: float = 1e-6
    scales: st.SearchStrategy = sts.scales()
    biases: st.SearchStrategy = sts.biases()

    def __init_subclass__(cls, **kwargs):
        """A property the loss does not declare is not collected at all (rather than skipped)."""
        super().__init_subclass__(**kwargs)
        if not cls.swap_symmetric:
            cls.test_swap_symmetry = None
        if cls.reference is None:
            cls.test_matches_reference = None
        if cls.aligned_value is None:
            cls.test_closed_form_aligned = None
        if cls.orthogonal_value is None:
            cls.test_closed_form_orthogonal = None

    # -- helpers -------------------------------------------------------------------------------

    def _settings(self):
        return settings(
            max_examples=self.max_examples,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )

    def _pairs(self):
        return sts.embedding_pairs(
            min_batch=self.min_batch, max_batch=self.max_batch, dim=self.dim, multiple_of=self.batch_multiple
        )

    def _batches(self, need: int = 1):
        hi = min(self.max_batch, self.dim // need)
        return sts.batch_sizes(self.min_batch, hi, self.batch_multiple)

    def _tol(self):
        return dict(rtol=self.rtol, atol=self.atol)

    def _fn(self, name):
        # Read from the class so a plain function attribute is not bound to the instance.
        return getattr(type(self), name)

    # -- the properties ------------------------------------------------------------------------

    def test_permutation_equivariance(self):
        @self._settings()
        @given(pairs=self._pairs(), scale=self.scales, bias=self.biases, data=st.data())
        def run(pairs, scale, bias, data):
            zimg, ztxt = pairs
            perm = np.asarray(data.draw(st.permutations(range(zimg.shape[0]))), np.int64)
            check_permutation_equivariance(self._fn("loss"), zimg, ztxt, scale, bias, perm, **self._tol())

        run()

    def test_swap_symmetry(self):
        @self._settings()
        @given(pairs=self._pairs(), scale=self.scales, bias=self.biases)
        def run(pairs, scale, bias):
            check_swap_symmetry(self._fn("loss"), *pairs, scale, bias, **self._tol())

        run()

    def test_norm_invariance(self):
        @self._settings()
        @given(pairs=self._pairs(), scale=self.scales, bias=self.biases, data=st.data())
        def run(pairs, scale, bias, data):
            zimg, ztxt = pairs
            ni = data.draw(sts.row_norms(zimg.shape[0]))
            nt = data.draw(sts.row_norms(zimg.shape[0]))
            check_norm_invariance(self._fn("loss"), zimg, ztxt, scale, bias, ni, nt, **self._tol())

        run()

    def test_finite_at_extremes(self):
        @self._settings()
        @given(pairs=self._pairs(), scale=sts.extreme_scales(), bias=sts.extreme_biases())
        def run(pairs, scale, bias):
            check_finite_at(self._fn("loss"), *pairs, scale, bias)

        run()

    def test_matches_reference(self):
        @self._settings()
        @given(pairs=self._pairs(), scale=self.scales, bias=self.biases)
        def run(pairs, scale, bias):
            check_matches_reference(self._fn("loss"), self._fn("reference"), *pairs, scale, bias, **self._tol())

        run()

    def test_closed_form_aligned(self):
        self._closed_form("aligned", self.aligned_value, 1)

    def test_closed_form_orthogonal(self):
        self._closed_form("orthogonal", self.orthogonal_value, 2)

    def _closed_form(self, kind, expected, need):
        expected = self._fn(f"{kind}_value")

        @self._settings()
        @given(batch=self._batches(need), scale=self.scales, bias=self.biases)
        def run(batch, scale, bias):
            check_closed_form(self._fn("loss"), expected, batch, self.dim, scale, bias, kind=kind, **self._tol())

        run()
