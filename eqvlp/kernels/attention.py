"""Flash attention in Pallas, its pure-jnp reference, and the `attention` dispatcher.

Layout as `jax.nn.dot_product_attention`: `(batch, seq, heads, head_dim)`. The kernel tiles
queries into blocks of `block_q` and streams keys/values in blocks of `block_k` with an online
softmax (running max `m`, normaliser `l`, accumulator), so the `T x S` score matrix is never
written to memory. The forward pass also stores the row log-sum-exp; the backward pass
(`jax.custom_vjp`) recomputes each score tile from it: one kernel accumulates `dq` per query
block, another `dk` and `dv` per key block. Any sequence length works: inputs are padded to the
block sizes and padded keys masked; head dims are zero-padded to a power of two.

Lowering (`eqvlp.kernels.lowering`): the interpreter on CPU (tests), Triton on GPU with
`num_warps`/`num_stages` from the blocks, which default to the largest that fit an H100's
shared memory. See docs/kernels.md.
"""

import dataclasses
import functools
import math
import warnings

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jaxtyping import Array, Bool, Float

from eqvlp.kernels import lowering

NEG_INF = -1e30  # finite: a fully masked row gives uniform weights instead of NaN


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes along the query and key sequence (powers of two >= 16; clipped to sequences)."""

    block_q: int = 128
    block_k: int = 128

    def __post_init__(self):
        lowering.check_block("AttentionBlockSizes", "block_q", self.block_q)
        lowering.check_block("AttentionBlockSizes", "block_k", self.block_k)


def gpu_shared_memory_bytes(block_q: int, block_k: int, head_dim: int, itemsize: int,
                            stages: int = lowering.NUM_STAGES) -> int:
    """Shared memory of the hungriest of the three kernels (the two backward ones), per program.

    Every `dot` operand is counted as staged in shared memory: tiles loaded once count once,
    tiles streamed by the pipelined loop `stages` times, and the score tiles cast for the second
    `dot` once each (`head_dim` as padded, `itemsize` of q/k/v). docs/kernels.md has the sums.
    """
    d, e = lowering.padded_dim(head_dim), itemsize
    dq = e * (2 * block_q * d + stages * 2 * block_k * d + block_q * block_k) + stages * 4 * block_k
    dkv = (e * (2 * block_k * d + stages * 2 * block_q * d + 2 * block_q * block_k)
           + stages * 2 * 4 * block_q)
    return max(dq, dkv)


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


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Everything static about one call: tiles, softmax scale, mask kind, lowering."""

    bq: int
    bk: int
    scale: float
    causal: bool
    interpret: bool | None
    warps: int

    def call(self, kernel, name, **kwargs):
        common = dict(scale=self.scale, causal=self.causal, bq=self.bq, bk=self.bk)
        return lowering.pallas_call(functools.partial(kernel, **common), interpret=self.interpret,
                                    warps=self.warps, name=name, **kwargs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _flash(q, k, v, valid, plan):
    return _flash_fwd(q, k, v, valid, plan)[0]


def _flash_fwd(q, k, v, valid, plan):
    b, h, t, d = q.shape
    s = k.shape[2]
    q_block, _, _, kv_full, row_block, _, valid_full, _ = _specs(plan.bq, plan.bk, t, s, d)
    out, lse = plan.call(
        _fwd_kernel, "eqvlp_flash_attention_fwd",
        grid=(b, h, t // plan.bq),
        in_specs=[q_block, kv_full, kv_full, valid_full],
        out_specs=[q_block, row_block],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                   jax.ShapeDtypeStruct((b, h, t), jnp.float32)],
    )(q, k, v, valid)
    return out, (q, k, v, valid, out, lse)


def _flash_bwd(plan, residuals, do):
    q, k, v, valid, out, lse = residuals
    b, h, t, d = q.shape
    s = k.shape[2]
    delta = jnp.sum(out.astype(jnp.float32) * do.astype(jnp.float32), axis=-1)
    q_block, q_full, kv_block, kv_full, row_block, row_full, valid_full, valid_block = _specs(
        plan.bq, plan.bk, t, s, d)
    dq = plan.call(
        _dq_kernel, "eqvlp_flash_attention_dq",
        grid=(b, h, t // plan.bq),
        in_specs=[q_block, kv_full, kv_full, valid_full, q_block, row_block, row_block],
        out_specs=q_block,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
    )(q, k, v, valid, do, lse, delta)
    dk, dv = plan.call(
        _dkv_kernel, "eqvlp_flash_attention_dkv",
        grid=(b, h, s // plan.bk),
        in_specs=[q_full, kv_block, kv_block, valid_block, q_full, row_full, row_full],
        out_specs=[kv_block, kv_block],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
    )(q, k, v, valid, do, lse, delta)
    return dq, dk, dv, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def _block(requested: int, length: int) -> int:
    """A power-of-two block no larger than needed for `length` (at least 16)."""
    return max(lowering.MIN_BLOCK, min(requested, pl.next_power_of_2(length)))


def block_sizes_for(
    q_seq: int, kv_seq: int, head_dim: int, dtype, block_sizes: BlockSizes | None = None
) -> BlockSizes:
    """The blocks `flash_attention` uses: clipped to the sequences and, when not given, halved
    from 128 x 128 until the kernels fit an H100's shared memory."""
    itemsize = jnp.dtype(dtype).itemsize
    sizes = block_sizes or BlockSizes()
    bq, bk = _block(sizes.block_q, q_seq), _block(sizes.block_k, kv_seq)
    if block_sizes is None:
        bq, bk = lowering.shrink_to_fit(
            lambda a, b: gpu_shared_memory_bytes(a, b, head_dim, itemsize), bq, bk)
    return BlockSizes(bq, bk)


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
    - `block_sizes`: query/key tile sizes; `None` picks them (`block_sizes_for`).
    - `interpret`: `True` the Pallas interpreter, `False` Triton (GPU); `None` chooses when
      lowering: the interpreter on CPU, Triton on GPU (`eqvlp.kernels.lowering`).
    """
    if q.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(
            f"flash_attention expects q (batch, q_seq, heads, head_dim) and k, v (batch, kv_seq, "
            f"heads, head_dim) with equal batch, heads and head_dim, got {q.shape}, {k.shape}, "
            f"{v.shape}"
        )
    if causal and q.shape[1] != k.shape[1]:
        raise ValueError(f"causal attention needs q_seq == kv_seq, got {q.shape[1]} and {k.shape[1]}")
    t, s, d = q.shape[1], k.shape[1], q.shape[3]
    sizes = block_sizes_for(t, s, d, q.dtype, block_sizes)
    bq, bk, dp = sizes.block_q, sizes.block_k, lowering.padded_dim(d)
    lowering.warn_if_over_budget(
        f"flash_attention with blocks {bq} x {bk} and head_dim {d} ({q.dtype})",
        gpu_shared_memory_bytes(bq, bk, d, q.dtype.itemsize), interpret,
        "pass smaller block_sizes, or block_sizes=None to have them picked")
    tp, sp = math.ceil(t / bq) * bq, math.ceil(s / bk) * bk
    valid = jnp.ones((q.shape[0], s), jnp.int32) if mask is None else mask.astype(jnp.int32)
    valid = jnp.pad(valid, ((0, 0), (0, sp - s)), constant_values=-1)  # -1 marks padding
    to_heads = lambda x, n: jnp.pad(  # noqa: E731
        x, ((0, 0), (0, n - x.shape[1]), (0, 0), (0, dp - d))).transpose(0, 2, 1, 3)
    plan = _Plan(bq, bk, d**-0.5, causal, interpret,
                 lowering.num_warps(max(bq * bk, bq * dp, bk * dp)))
    out = _flash(to_heads(q, tp), to_heads(k, sp), to_heads(v, sp), valid, plan)
    return out.transpose(0, 2, 1, 3)[:, :t, :, :d]


IMPLEMENTATIONS = ("xla", "cudnn", "pallas")
_HALF = (jnp.bfloat16, jnp.float16)
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)


def _cudnn_fits(q: Array, mask: Array | None) -> bool:
    """Where `impl=None` trusts cuDNN on a GPU: half precision, no key mask, and a head_dim that
    every GPU's cuDNN flash attention takes (a multiple of 8, at most 128)."""
    d = q.shape[-1]
    return q.dtype in _HALF and mask is None and d % 8 == 0 and d <= 128


def _cudnn_attention(q, k, v, causal, mask):
    """`jax.nn.dot_product_attention(implementation="cudnn")` for any sequence length, under vmap.

    cuDNN's training kernels reject odd sequence lengths (ViT's 197 tokens, CLIP's 77), so an
    odd length is padded by one and the padding masked with sequence lengths; a key mask becomes
    a `(batch, heads, q_seq, kv_seq)` bias. JAX's batching rule for cuDNN attention needs every
    operand batched alike, and the models call this per example under `jax.vmap` (MAP pooling's
    query is a parameter, not batched), so all operands are tied to one batched zero.
    """
    b, t, h, _ = q.shape
    s = k.shape[1]
    tp, sp = t + t % 2, s + s % 2
    zero = sum(jax.lax.stop_gradient(x[:, :1, :1, :1]).astype(jnp.int32) * 0  # NaN -> 0 too
               for x in (q, k, v))
    if mask is not None:
        zero = zero + mask[:, :1, None, None].astype(jnp.int32) * 0
    pad = lambda x, n: jnp.pad(x + zero.astype(x.dtype),  # noqa: E731
                               ((0, 0), (0, n - x.shape[1]), (0, 0), (0, 0)))
    lengths = {}
    if (tp, sp) != (t, s):
        lengths = dict(query_seq_lengths=zero[:, 0, 0, 0] + t,
                       key_value_seq_lengths=zero[:, 0, 0, 0] + s)
    full = None
    if mask is not None:
        full = jnp.broadcast_to(jnp.pad(mask, ((0, 0), (0, sp - s)))[:, None, None, :],
                                (b, h, tp, sp))
    out = jax.nn.dot_product_attention(pad(q, tp), pad(k, sp), pad(v, sp), mask=full,
                                       is_causal=causal, implementation="cudnn", **lengths)
    return out[:, :t]


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

    `impl=None` stays on paths validated on the hardware: on GPU cuDNN for bf16/fp16 (no key
    mask, head_dim a multiple of 8 up to 128), XLA otherwise; on CPU XLA. The Pallas kernel runs
    only when asked for (`impl="pallas"`) until it has been run on a GPU. A requested
    implementation that cannot run here falls back to XLA with a one-time warning.
    """
    if impl is not None and impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention impl {impl!r}: use None or one of {IMPLEMENTATIONS}")
    backend = jax.default_backend()
    if impl is None:
        impl = "cudnn" if backend == "gpu" and _cudnn_fits(q, mask) else "xla"
    if impl == "cudnn":
        if backend != "gpu" or q.dtype not in _HALF:
            _warn_once(f"cuDNN attention needs a GPU and bf16/fp16 (have {backend}, {q.dtype}); "
                       "using the XLA implementation")
            impl = "xla"
        else:
            return _cudnn_attention(q, k, v, causal, mask)
    if impl == "pallas":
        return flash_attention(q, k, v, causal=causal, mask=mask, block_sizes=block_sizes)
    return attention_reference(q, k, v, causal=causal, mask=mask)
