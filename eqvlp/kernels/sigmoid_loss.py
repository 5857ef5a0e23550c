"""Fused sigmoid (SigLIP) loss in Pallas, beside its pure-jnp reference.

The logits `L = scale * zimg @ ztxt.T + bias` are computed tile by tile (`block_i` images x
`block_j` texts) and never written to memory:

- the forward kernel (grid over image blocks) streams text blocks and accumulates each image
  row's loss `sum_j softplus(-m_ij L_ij)`;
- the backward pass recomputes each tile and forms `G = sigmoid(L) - I` in registers: one
  kernel (grid over image blocks) accumulates `G @ ztxt` and the row sums of `G`, another (grid
  over text blocks) accumulates `G.T @ zimg`. Then `dzimg = scale/B G ztxt`,
  `dztxt = scale/B G.T zimg`, `dscale = sum(zimg * G ztxt)/B`, `dbias = sum(G)/B`.

`sigmoid_block_pallas` exposes the same per-block contract as `eqvlp.losses.chunked.sigmoid_block`
(loss sum and raw gradient pieces, positives on a diagonal or none), so the distributed ring in
`eqvlp.losses` can use it for every block (`distributed_sigmoid_loss(..., impl="pallas")`).

Lowering (`eqvlp.kernels.lowering`): the interpreter on CPU (tests), Triton on GPU. The embedding
width is zero-padded to a power of two (logits unchanged); blocks default to the largest that
fit an H100's shared memory for that width.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jaxtyping import Array, ArrayLike, Float, Real

from eqvlp.kernels import lowering
from eqvlp.losses.chunked import BlockTerms


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes: image rows per program and text rows per inner step (powers of two >= 16)."""

    block_i: int = 128
    block_j: int = 128

    def __post_init__(self):
        lowering.check_block("LossBlockSizes", "block_i", self.block_i)
        lowering.check_block("LossBlockSizes", "block_j", self.block_j)


def gpu_shared_memory_bytes(block_i: int, block_j: int, dim: int,
                            stages: int = lowering.NUM_STAGES) -> int:
    """Shared memory of the hungrier backward kernel, per program (float32 tiles, `dim` as padded).

    Counted as for attention: the resident tile once, the streamed tile `stages` times, the
    `G` tile once (docs/kernels.md).
    """
    d = lowering.padded_dim(dim)
    dzimg = 4 * (block_i * d + stages * block_j * d + block_i * block_j)
    dztxt = 4 * (block_j * d + stages * block_i * d + block_i * block_j)
    return max(dzimg, dztxt)


def block_sizes_for(rows: int, cols: int, dim: int,
                    block_sizes: BlockSizes | None = None) -> BlockSizes:
    """The blocks the kernels use: clipped to the batch and, when not given, halved from
    128 x 128 until they fit an H100's shared memory (32 x 32 at dim 512)."""
    sizes = block_sizes or BlockSizes()
    bi, bj = _block(sizes.block_i, rows), _block(sizes.block_j, cols)
    if block_sizes is None:
        bi, bj = lowering.shrink_to_fit(lambda a, b: gpu_shared_memory_bytes(a, b, dim), bi, bj)
    return BlockSizes(bi, bj)


def sigmoid_loss_reference(
    zimg: Float[Array, "batch dim"],
    ztxt: Float[Array, "batch dim"],
    scale: Real[ArrayLike, ""],
    bias: Real[ArrayLike, ""],
) -> Float[Array, ""]:
    """`-(1/B) sum_ij log_sigmoid(m_ij L_ij)` with the whole B x B matrix (float32)."""
    logits = scale * jnp.dot(zimg, ztxt.T, preferred_element_type=jnp.float32) + bias
    signs = 2 * jnp.eye(zimg.shape[0], dtype=jnp.float32) - 1
    return -jnp.sum(jax.nn.log_sigmoid(signs * logits)) / zimg.shape[0]


def _tile(zi, zt, scale, bias, row0, col0, n_rows, n_cols, diag_offset):
    """u = -m * L for one tile, the positives mask, and the validity mask (padding)."""
    logits = scale * jax.lax.dot_general(
        zi, zt, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32) + bias
    rows = row0 + jax.lax.broadcasted_iota(jnp.int32, logits.shape, 0)
    cols = col0 + jax.lax.broadcasted_iota(jnp.int32, logits.shape, 1)
    valid = (rows < n_rows) & (cols < n_cols)
    if diag_offset is None:
        positive = jnp.zeros(logits.shape, bool)
    else:
        positive = cols == rows + diag_offset
    u = jnp.where(positive, -logits, logits)
    return u, positive, valid


def _softplus(u):
    return jnp.maximum(u, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(u)))


def _sigmoid(u):
    e = jnp.exp(-jnp.abs(u))
    return jnp.where(u >= 0, 1.0, e) / (1.0 + e)


def _loss_kernel(zi_ref, zt_ref, sb_ref, out_ref, *, bi, bj, n_rows, n_cols, diag_offset):
    i = pl.program_id(0)
    zi = zi_ref[...]
    scale, bias = sb_ref[0], sb_ref[1]

    def body(j, acc):
        zt = zt_ref[pl.ds(j * bj, bj), :]
        u, _, valid = _tile(zi, zt, scale, bias, i * bi, j * bj, n_rows, n_cols, diag_offset)
        return acc + jnp.sum(jnp.where(valid, _softplus(u), 0.0), axis=1)

    out_ref[...] = jax.lax.fori_loop(0, zt_ref.shape[0] // bj, body, jnp.zeros((bi,), jnp.float32))


def _grad_g(u, positive, valid):
    """G = sigmoid(L) - positives, from u = -m L; zero on padding."""
    sig = _sigmoid(u)
    return jnp.where(valid, jnp.where(positive, -sig, sig), 0.0)


def _dzimg_kernel(zi_ref, zt_ref, sb_ref, dzi_ref, gsum_ref, *, bi, bj, n_rows, n_cols,
                  diag_offset):
    i = pl.program_id(0)
    zi = zi_ref[...]
    scale, bias = sb_ref[0], sb_ref[1]

    def body(j, carry):
        dzi, gsum = carry
        zt = zt_ref[pl.ds(j * bj, bj), :]
        g = _grad_g(*_tile(zi, zt, scale, bias, i * bi, j * bj, n_rows, n_cols, diag_offset))
        dzi = dzi + jax.lax.dot_general(g, zt, (((1,), (0,)), ((), ())),
                                        preferred_element_type=jnp.float32)
        return dzi, gsum + jnp.sum(g, axis=1)

    init = (jnp.zeros(zi.shape, jnp.float32), jnp.zeros((bi,), jnp.float32))
    dzi, gsum = jax.lax.fori_loop(0, zt_ref.shape[0] // bj, body, init)
    dzi_ref[...] = dzi
    gsum_ref[...] = gsum


def _dztxt_kernel(zi_ref, zt_ref, sb_ref, dzt_ref, *, bi, bj, n_rows, n_cols, diag_offset):
    j = pl.program_id(0)
    zt = zt_ref[...]
    scale, bias = sb_ref[0], sb_ref[1]

    def body(i, dzt):
        zi = zi_ref[pl.ds(i * bi, bi), :]
        g = _grad_g(*_tile(zi, zt, scale, bias, i * bi, j * bj, n_rows, n_cols, diag_offset))
        return dzt + jax.lax.dot_general(g, zi, (((0,), (0,)), ((), ())),
                                         preferred_element_type=jnp.float32)

    dzt_ref[...] = jax.lax.fori_loop(0, zi_ref.shape[0] // bi, body,
                                     jnp.zeros(zt.shape, jnp.float32))


def _block(requested: int, length: int) -> int:
    return max(lowering.MIN_BLOCK, min(requested, pl.next_power_of_2(length)))


def sigmoid_block_pallas(
    zimg: Float[Array, "rows dim"],
    ztxt: Float[Array, "cols dim"],
    scale: Float[Array, ""],
    bias: Float[Array, ""],
    diag_offset: int | None,
    with_grads: bool,
    *,
    block_sizes: BlockSizes | None = None,
    interpret: bool | None = None,
) -> BlockTerms:
    """`eqvlp.losses.chunked.sigmoid_block` computed by the Pallas kernels (static offset).

    `interpret=None` chooses when lowering: the interpreter on CPU, Triton on GPU.
    """
    (n_rows, dim), n_cols = zimg.shape, ztxt.shape[0]
    sizes = block_sizes_for(n_rows, n_cols, dim, block_sizes)
    bi, bj, dp = sizes.block_i, sizes.block_j, lowering.padded_dim(dim)
    lowering.warn_if_over_budget(
        f"the fused sigmoid loss with blocks {bi} x {bj} and dim {dim}",
        gpu_shared_memory_bytes(bi, bj, dim), interpret,
        "pass smaller block_sizes, or block_sizes=None to have them picked")
    rp, cp = math.ceil(n_rows / bi) * bi, math.ceil(n_cols / bj) * bj
    zi = jnp.pad(zimg.astype(jnp.float32), ((0, rp - n_rows), (0, dp - dim)))
    zt = jnp.pad(ztxt.astype(jnp.float32), ((0, cp - n_cols), (0, dp - dim)))
    sb = jnp.stack([jnp.asarray(scale, jnp.float32), jnp.asarray(bias, jnp.float32)])
    static = dict(bi=bi, bj=bj, n_rows=n_rows, n_cols=n_cols, diag_offset=diag_offset)
    launch = dict(interpret=interpret, warps=lowering.num_warps(max(bi, bj) * dp))
    rows_block = pl.BlockSpec((bi, dp), lambda i: (i, 0))
    cols_block = pl.BlockSpec((bj, dp), lambda j: (j, 0))
    rows_full = pl.BlockSpec((rp, dp), lambda _: (0, 0))
    cols_full = pl.BlockSpec((cp, dp), lambda _: (0, 0))
    scalars = pl.BlockSpec((2,), lambda _: (0,))
    row_losses = lowering.pallas_call(
        functools.partial(_loss_kernel, **static),
        grid=(rp // bi,),
        in_specs=[rows_block, cols_full, scalars],
        out_specs=pl.BlockSpec((bi,), lambda i: (i,)),
        out_shape=jax.ShapeDtypeStruct((rp,), jnp.float32),
        name="eqvlp_sigmoid_loss_fwd",
        **launch,
    )(zi, zt, sb)
    loss = jnp.sum(row_losses)
    if not with_grads:
        return BlockTerms(loss, None, None, None)
    dzi, gsum = lowering.pallas_call(
        functools.partial(_dzimg_kernel, **static),
        grid=(rp // bi,),
        in_specs=[rows_block, cols_full, scalars],
        out_specs=[rows_block, pl.BlockSpec((bi,), lambda i: (i,))],
        out_shape=[jax.ShapeDtypeStruct((rp, dp), jnp.float32),
                   jax.ShapeDtypeStruct((rp,), jnp.float32)],
        name="eqvlp_sigmoid_loss_dzimg",
        **launch,
    )(zi, zt, sb)
    dzt = lowering.pallas_call(
        functools.partial(_dztxt_kernel, **static),
        grid=(cp // bj,),
        in_specs=[rows_full, cols_block, scalars],
        out_specs=cols_block,
        out_shape=jax.ShapeDtypeStruct((cp, dp), jnp.float32),
        name="eqvlp_sigmoid_loss_dztxt",
        **launch,
    )(zi, zt, sb)
    return BlockTerms(loss, dzi[:n_rows, :dim], dzt[:n_cols, :dim], jnp.sum(gsum))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _fused(zimg, ztxt, scale, bias, block_sizes, interpret):
    terms = sigmoid_block_pallas(zimg, ztxt, scale, bias, 0, False,
                                 block_sizes=block_sizes, interpret=interpret)
    return terms.loss / zimg.shape[0]


def _fused_fwd(zimg, ztxt, scale, bias, block_sizes, interpret):
    return _fused(zimg, ztxt, scale, bias, block_sizes, interpret), (zimg, ztxt, scale, bias)


def _fused_bwd(block_sizes, interpret, residuals, g):
    zimg, ztxt, scale, bias = residuals
    t = sigmoid_block_pallas(zimg, ztxt, scale, bias, 0, True,
                             block_sizes=block_sizes, interpret=interpret)
    b = zimg.shape[0]
    zi = zimg.astype(jnp.float32)
    return (
        (g * scale / b * t.dzimg).astype(zimg.dtype),
        (g * scale / b * t.dztxt).astype(ztxt.dtype),
        (g * jnp.sum(zi * t.dzimg) / b).astype(jnp.result_type(scale)),
        (g * t.gsum / b).astype(jnp.result_type(bias)),
    )


_fused.defvjp(_fused_fwd, _fused_bwd)


def fused_sigmoid_loss(
    zimg: Float[Array, "batch dim"],
    ztxt: Float[Array, "batch dim"],
    scale: Real[ArrayLike, ""],
    bias: Real[ArrayLike, ""],
    *,
    block_sizes: BlockSizes | None = None,
    interpret: bool | None = None,
) -> Float[Array, ""]:
    """The sigmoid loss of `eqvlp.losses.sigmoid_loss` with logits kept in on-chip tiles.

    Equal to `sigmoid_loss_reference` in value and in gradients for all four arguments; any
    batch size (padded internally to the block sizes). `interpret=None` chooses when lowering:
    the Pallas interpreter on CPU, Triton on GPU (`eqvlp.kernels.lowering`).
    """
    if zimg.ndim != 2 or zimg.shape != ztxt.shape:
        raise ValueError(
            f"fused_sigmoid_loss expects zimg and ztxt of the same shape (batch, dim), got "
            f"{zimg.shape} and {ztxt.shape}: pass matching pairs"
        )
    return _fused(zimg, ztxt, jnp.asarray(scale, jnp.float32), jnp.asarray(bias, jnp.float32),
                  block_sizes, interpret)
