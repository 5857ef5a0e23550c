"""Pallas kernels in interpret mode against their jnp references: forward and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqvlp.kernels import (
    AttentionBlockSizes,
    LossBlockSizes,
    attention,
    attention_reference,
    flash_attention,
    fused_sigmoid_loss,
    sigmoid_block_pallas,
    sigmoid_loss_reference,
)
from eqvlp.losses.chunked import sigmoid_block

TOL = {jnp.float32: 2e-5, jnp.bfloat16: 3e-2}


def rel(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-6))


ATTENTION_CASES = [
    # batch, q_seq, kv_seq, heads, head_dim, causal, masked, block sizes
    (2, 37, 37, 2, 16, True, True, AttentionBlockSizes(16, 16)),
    (1, 20, 50, 3, 8, False, True, AttentionBlockSizes(16, 32)),
    (2, 64, 64, 1, 32, True, False, AttentionBlockSizes(32, 16)),
    (1, 5, 9, 2, 8, False, False, None),
]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("case", ATTENTION_CASES)
def test_flash_attention_matches_reference(case, dtype):
    b, t, s, h, d, causal, masked, sizes = case
    keys = jax.random.split(jax.random.key(t * s + h), 5)
    q = jax.random.normal(keys[0], (b, t, h, d)).astype(dtype)
    k = jax.random.normal(keys[1], (b, s, h, d)).astype(dtype)
    v = jax.random.normal(keys[2], (b, s, h, d)).astype(dtype)
    mask = jax.random.bernoulli(keys[3], 0.7, (b, s)).at[:, 0].set(True) if masked else None
    do = jax.random.normal(keys[4], (b, t, h, d)).astype(dtype)
    kernel = lambda q, k, v: flash_attention(q, k, v, causal=causal, mask=mask,  # noqa: E731
                                             block_sizes=sizes, interpret=True)
    reference = lambda q, k, v: attention_reference(q, k, v, causal=causal, mask=mask)  # noqa: E731
    out, vjp = jax.vjp(kernel, q, k, v)
    ref_out, ref_vjp = jax.vjp(reference, q, k, v)
    assert out.shape == q.shape and out.dtype == dtype
    assert rel(out, ref_out) < TOL[dtype]
    for got, want in zip(vjp(do), ref_vjp(do)):
        assert got.dtype == dtype
        assert rel(got, want) < TOL[dtype] * (3 if dtype == jnp.bfloat16 else 1)


def test_fully_masked_rows_average_values_like_reference():
    q = jax.random.normal(jax.random.key(0), (1, 4, 1, 8))
    v = jax.random.normal(jax.random.key(1), (1, 4, 1, 8))
    mask = jnp.zeros((1, 4), bool)
    out = flash_attention(q, q, v, mask=mask, interpret=True)
    np.testing.assert_allclose(out, attention_reference(q, q, v, mask=mask), atol=1e-5)
    assert np.isfinite(np.asarray(out)).all()


def test_attention_dispatcher_on_cpu():
    q = jax.random.normal(jax.random.key(0), (1, 6, 2, 8))
    xla = attention(q, q, q, causal=True)
    np.testing.assert_allclose(attention(q, q, q, causal=True, impl="pallas"), xla, atol=1e-5)
    with pytest.warns(UserWarning, match="cuDNN"):
        np.testing.assert_allclose(attention(q, q, q, causal=True, impl="cudnn"), xla, atol=1e-6)
    with pytest.raises(ValueError, match="unknown attention impl"):
        attention(q, q, q, impl="flash3")
    with pytest.raises(ValueError, match="q_seq == kv_seq"):
        flash_attention(q, q[:, :3], q[:, :3], causal=True)


def unit(key, shape, dtype=jnp.float32):
    z = jax.random.normal(key, shape)
    return (z / jnp.linalg.norm(z, axis=-1, keepdims=True)).astype(dtype)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("batch, dim, sizes", [(37, 16, LossBlockSizes(32, 16)),
                                               (8, 4, None), (70, 32, LossBlockSizes(32, 64))])
def test_fused_sigmoid_loss_matches_reference(batch, dim, sizes, dtype):
    k1, k2 = jax.random.split(jax.random.key(batch))
    zimg, ztxt = unit(k1, (batch, dim), dtype), unit(k2, (batch, dim), dtype)
    args = (zimg, ztxt, jnp.float32(10.0), jnp.float32(-10.0))
    kernel = lambda *a: fused_sigmoid_loss(*a, block_sizes=sizes, interpret=True)  # noqa: E731
    assert rel(kernel(*args), sigmoid_loss_reference(*args)) < 1e-5
    grads = jax.grad(kernel, argnums=(0, 1, 2, 3))(*args)
    ref_grads = jax.grad(sigmoid_loss_reference, argnums=(0, 1, 2, 3))(*args)
    for got, want in zip(grads, ref_grads):
        assert got.dtype == want.dtype
        assert rel(got, want) < TOL[dtype]


@pytest.mark.parametrize("diag_offset", [0, 3, None])
def test_pallas_block_matches_jnp_block(diag_offset):
    zi, zt = unit(jax.random.key(0), (12, 8)), unit(jax.random.key(1), (20, 8))
    s, b = jnp.float32(7.0), jnp.float32(-3.0)
    got = sigmoid_block_pallas(zi, zt, s, b, diag_offset, True,
                               block_sizes=LossBlockSizes(16, 16), interpret=True)
    want = sigmoid_block(zi, zt, s, b, diag_offset, True)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-6)


def test_fused_loss_rejects_mismatched_batches():
    # jaxtyping's signature check fires first in the suite; eqvlp's own check otherwise
    with pytest.raises((ValueError, TypeError), match="same shape|batch dim"):
        fused_sigmoid_loss(jnp.ones((4, 8)), jnp.ones((5, 8)), 10.0, -10.0)
