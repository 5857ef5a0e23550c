"""Flash attention in Pallas, its pure-jnp reference, and the `attention` dispatcher.

Layout as `jax.nn.dot_product_attention`: `(batch, seq, heads, head_dim)`. The kernel tiles
queries into blocks of `block_q` and streams keys/values in blocks of `block_k` with an online
softmax (running max `m`, normaliser `l`, accumulator), so the `T x S` score matrix is never
written to memory. The forward pass also stores the row log-sum-exp; the backward pass
(`jax.custom_vjp`) recomputes each score tile from it: one kernel accumulates `dq` per query
block, another `dk` and `dv` per key block. Any sequence length works: inputs are padded to the
block sizes and padded keys masked.

Backends: on CPU the kernels run with `interpret=True` (for tests); on GPU they compile through
Pallas' generic (Triton-lowered) path. See docs/kernels.md for the choice of backend.
"""

import dataclasses
import functools
import math
import warnings

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jaxtyping import Array, Bool, Float

NEG_INF = -1e30  # finite: a fully masked row gives uniform weights instead of NaN


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes along the query and key sequence (powers of two; clipped to the sequence)."""

    block_q: int = 128
    block_k: int = 128


def attention_reference(
    q: Float[Array, "batch q_seq heads head_dim"],
    k: Float[Array, "batch kv_seq heads head_dim"],
    v: Float[Array, "batch kv_seq heads head_dim"],
    *,
    causal: bool = False,
    mask: Bool[Array, "batch kv_seq"] | None = None,
) -> Float[Array, "batch q_seq heads head_dim"]:
    """Plain softmax attention in float32 (logits, softmax), output in `q`'s dtype."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    logits = logits * (q.shape[-1] ** -0.5)
    allowed = jnp.ones(logits.shape[-2:], bool)[None, None]
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    if causal:
        allowed = allowed & jnp.tril(jnp.ones(logits.shape[-2:], bool))[None, None]
    logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v).astype(q.dtype)


def _allowed(valid, q_start, k_start, bq, bk, causal):
    allowed = valid[None, :] > 0
    if causal:
        rows = q_start + jax.lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
        cols = k_start + jax.lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
        allowed = allowed & (rows >= cols)
    return allowed


def _masked_scores(s, valid, allowed):
    """Masked keys get NEG_INF; padding keys (valid < 0) twice that, so that a row whose keys
    are all masked averages the real keys only, as the reference does."""
    return jnp.where(allowed, s, jnp.where(valid[None, :] < 0, 2 * NEG_INF, NEG_INF))


def _dot(a, b, trans_b=False):
    dims = (((1,), (1,)), ((), ())) if trans_b else (((1,), (0,)), ((), ()))
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _num_k_blocks(q_block, bq, bk, total, causal):
    if not causal:
        return total
    return jnp.minimum(pl.cdiv((q_block + 1) * bq, bk), total)


def _fwd_kernel(q_ref, k_ref, v_ref, valid_ref, o_ref, lse_ref, *, scale, causal, bq, bk):
    iq = pl.program_id(2)
    q = q_ref[...]
    total = k_ref.shape[0] // bk

    def body(j, carry):
        m, l, acc = carry
        k = k_ref[pl.ds(j * bk, bk), :]
        v = v_ref[pl.ds(j * bk, bk), :]
        valid = valid_ref[pl.ds(j * bk, bk)]
        allowed = _allowed(valid, iq * bq, j * bk, bq, bk, causal)
        s = _masked_scores(_dot(q, k, trans_b=True) * scale, valid, allowed)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        p = jnp.exp(s - m_new[:, None])
        alpha = jnp.exp(m - m_new)
        l = alpha * l + jnp.sum(p, axis=1)
        acc = alpha[:, None] * acc + _dot(p.astype(v.dtype), v)
        return m_new, l, acc

    init = (jnp.full((bq,), 4 * NEG_INF, jnp.float32), jnp.zeros((bq,), jnp.float32),
            jnp.zeros((bq, q.shape[-1]), jnp.float32))
    m, l, acc = jax.lax.fori_loop(0, _num_k_blocks(iq, bq, bk, total, causal), body, init)
    o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
    lse_ref[...] = m + jnp.log(l)


def _dq_kernel(q_ref, k_ref, v_ref, valid_ref, do_ref, lse_ref, delta_ref, dq_ref, *,
               scale, causal, bq, bk):
    iq = pl.program_id(2)
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]
    total = k_ref.shape[0] // bk

    def body(j, dq):
        k = k_ref[pl.ds(j * bk, bk), :]
        v = v_ref[pl.ds(j * bk, bk), :]
        valid = valid_ref[pl.ds(j * bk, bk)]
        allowed = _allowed(valid, iq * bq, j * bk, bq, bk, causal)
        s = _masked_scores(_dot(q, k, trans_b=True) * scale, valid, allowed)
        p = jnp.exp(s - lse[:, None])
        ds = jnp.where(allowed, p * (_dot(do, v, trans_b=True) - delta[:, None]), 0.0)
        return dq + _dot(ds.astype(k.dtype), k)

    dq = jax.lax.fori_loop(0, _num_k_blocks(iq, bq, bk, total, causal), body,
                           jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, valid_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *,
                scale, causal, bq, bk):
    jk = pl.program_id(2)
    k, v = k_ref[...], v_ref[...]
    valid = valid_ref[...]
    total = q_ref.shape[0] // bq
    first = (jk * bk) // bq if causal else 0

    def body(i, carry):
        dk, dv = carry
        q = q_ref[pl.ds(i * bq, bq), :]
        do = do_ref[pl.ds(i * bq, bq), :]
        lse, delta = lse_ref[pl.ds(i * bq, bq)], delta_ref[pl.ds(i * bq, bq)]
        allowed = _allowed(valid, i * bq, jk * bk, bq, bk, causal)
        s = _masked_scores(_dot(q, k, trans_b=True) * scale, valid, allowed)
        p = jnp.exp(s - lse[:, None])
        dv = dv + _dot(p.T.astype(do.dtype), do)
        ds = jnp.where(allowed, p * (_dot(do, v, trans_b=True) - delta[:, None]), 0.0)
        dk = dk + _dot(ds.T.astype(q.dtype), q)
        return dk, dv

    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = jax.lax.fori_loop(first, total, body, (zeros, zeros))
    dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _specs(bq, bk, t, s, d):
    """BlockSpecs for (batch, heads, seq, dim) arrays on a grid (batch, heads, blocks)."""
    q_block = pl.BlockSpec((None, None, bq, d), lambda b, h, i: (b, h, i, 0))
    q_full = pl.BlockSpec((None, None, t, d), lambda b, h, i: (b, h, 0, 0))
    kv_block = pl.BlockSpec((None, None, bk, d), lambda b, h, j: (b, h, j, 0))
    kv_full = pl.BlockSpec((None, None, s, d), lambda b, h, i: (b, h, 0, 0))
    row_block = pl.BlockSpec((None, None, bq), lambda b, h, i: (b, h, i))
    row_full = pl.BlockSpec((None, None, t), lambda b, h, i: (b, h, 0))
    valid_full = pl.BlockSpec((None, s), lambda b, h, i: (b, 0))
    valid_block = pl.BlockSpec((None, bk), lambda b, h, j: (b, j))
    return q_block, q_full, kv_block, kv_full, row_block, row_full, valid_full, valid_block


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _flash(q, k, v, valid, causal, bq, bk, interpret):
    return _flash_fwd(q, k, v, valid, causal, bq, bk, interpret)[0]


def _flash_fwd(q, k, v, valid, causal, bq, bk, interpret):
    b, h, t, d = q.shape
    s = k.shape[2]
    q_block, _, _, kv_full, row_block, _, valid_full, _ = _specs(bq, bk, t, s, d)
    kernel = functools.partial(_fwd_kernel, scale=d**-0.5, causal=causal, bq=bq, bk=bk)
    out, lse = pl.pallas_call(
        kernel,
        grid=(b, h, t // bq),
        in_specs=[q_block, kv_full, kv_full, valid_full],
        out_specs=[q_block, row_block],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                   jax.ShapeDtypeStruct((b, h, t), jnp.float32)],
        interpret=interpret,
        name="eqvlp_flash_attention_fwd",
    )(q, k, v, valid)
    return out, (q, k, v, valid, out, lse)


def _flash_bwd(causal, bq, bk, interpret, residuals, do):
    q, k, v, valid, out, lse = residuals
    b, h, t, d = q.shape
    s = k.shape[2]
    delta = jnp.sum(out.astype(jnp.float32) * do.astype(jnp.float32), axis=-1)
    q_block, q_full, kv_block, kv_full, row_block, row_full, valid_full, valid_block = _specs(
        bq, bk, t, s, d)
    common = dict(scale=d**-0.5, causal=causal, bq=bq, bk=bk)
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, **common),
        grid=(b, h, t // bq),
        in_specs=[q_block, kv_full, kv_full, valid_full, q_block, row_block, row_block],
        out_specs=q_block,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        interpret=interpret,
        name="eqvlp_flash_attention_dq",
    )(q, k, v, valid, do, lse, delta)
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, **common),
        grid=(b, h, s // bk),
        in_specs=[q_full, kv_block, kv_block, valid_block, q_full, row_full, row_full],
        out_specs=[kv_block, kv_block],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        interpret=interpret,
        name="eqvlp_flash_attention_dkv",
    )(q, k, v, valid, do, lse, delta)
    return dq, dk, dv, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def _block(requested: int, length: int) -> int:
    """A power-of-two block no larger than needed for `length` (at least 16)."""
    return max(16, min(requested, pl.next_power_of_2(length)))


def flash_attention(
    q: Float[Array, "batch q_seq heads head_dim"],
    k: Float[Array, "batch kv_seq heads head_dim"],
    v: Float[Array, "batch kv_seq heads head_dim"],
    *,
    causal: bool = False,
    mask: Bool[Array, "batch kv_seq"] | None = None,
    block_sizes: BlockSizes | None = None,
    interpret: bool | None = None,
) -> Float[Array, "batch q_seq heads head_dim"]:
    """Tiled softmax attention; equals `attention_reference` (values and gradients).

    **Arguments:**

    - `q`, `k`, `v`: `(batch, seq, heads, head_dim)`, float32 or bfloat16.
    - `causal`: query `i` attends to keys `j <= i` (needs `q_seq == kv_seq`).
    - `mask`: `(batch, kv_seq)` key padding mask, `True` = attend.
    - `block_sizes`: query/key tile sizes (see docs/kernels.md for picking them).
    - `interpret`: run the kernel in the Pallas interpreter; `None` = on CPU only.
    """
    if q.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(
            f"flash_attention expects q (batch, q_seq, heads, head_dim) and k, v (batch, kv_seq, "
            f"heads, head_dim) with equal batch, heads and head_dim, got {q.shape}, {k.shape}, "
            f"{v.shape}"
        )
    if causal and q.shape[1] != k.shape[1]:
        raise ValueError(f"causal attention needs q_seq == kv_seq, got {q.shape[1]} and {k.shape[1]}")
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    sizes = block_sizes or BlockSizes()
    t, s = q.shape[1], k.shape[1]
    bq, bk = _block(sizes.block_q, t), _block(sizes.block_k, s)
    tp, sp = math.ceil(t / bq) * bq, math.ceil(s / bk) * bk
    valid = jnp.ones((q.shape[0], s), jnp.int32) if mask is None else mask.astype(jnp.int32)
    valid = jnp.pad(valid, ((0, 0), (0, sp - s)), constant_values=-1)  # -1 marks padding
    to_heads = lambda x, n: jnp.pad(x, ((0, 0), (0, n - x.shape[1]), (0, 0), (0, 0))).transpose(  # noqa: E731
        0, 2, 1, 3)
    out = _flash(to_heads(q, tp), to_heads(k, sp), to_heads(v, sp), valid, causal, bq, bk,
                 interpret)
    return out.transpose(0, 2, 1, 3)[:, :t]


IMPLEMENTATIONS = ("xla", "cudnn", "pallas")
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)


def attention(
    q: Float[Array, "batch q_seq heads head_dim"],
    k: Float[Array, "batch kv_seq heads head_dim"],
    v: Float[Array, "batch kv_seq heads head_dim"],
    *,
    causal: bool = False,
    mask: Bool[Array, "batch kv_seq"] | None = None,
    impl: str | None = None,
    block_sizes: BlockSizes | None = None,
) -> Float[Array, "batch q_seq heads head_dim"]:
    """Attention with a chosen implementation; the models' attention layer calls this.

    `impl=None` picks the best available: on GPU cuDNN (bf16/fp16), else the Pallas kernel;
    on CPU the XLA reference. A requested implementation that cannot run here falls back to
    XLA with a one-time warning.
    """
    if impl is not None and impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention impl {impl!r}: use None or one of {IMPLEMENTATIONS}")
    backend = jax.default_backend()
    if impl is None:
        if backend == "gpu":
            impl = "cudnn" if q.dtype in (jnp.bfloat16, jnp.float16) else "pallas"
        else:
            impl = "xla"
    if impl == "cudnn":
        if backend != "gpu" or q.dtype not in (jnp.bfloat16, jnp.float16):
            _warn_once(f"cuDNN attention needs a GPU and bf16/fp16 (have {backend}, {q.dtype}); "
                       "using the XLA implementation")
            impl = "xla"
        else:
            full = None if mask is None else mask[:, None, None, :]
            return jax.nn.dot_product_attention(q, k, v, mask=full, is_causal=causal,
                                                implementation="cudnn")
    if impl == "pallas":
        return flash_attention(q, k, v, causal=causal, mask=mask, block_sizes=block_sizes)
    return attention_reference(q, k, v, causal=causal, mask=mask)
