"""Contrastive losses for a batch sharded over data-parallel devices, called inside `jax.shard_map`.

Each device holds `B_l` pairs of the global batch `B = n * B_l`. Every loss here returns the loss of
the *global* batch (the value `sigmoid_loss` / `clip_loss` would give on the gathered batch), the
same on every device, and gradients equal to the global ones, while no device ever holds more than
a `B_l x B_l` block of logits and O(B_l * dim) embeddings.

Embedding blocks travel around the ring of devices with `ppermute`. Gradients come from custom VJPs
rather than autodiff through the ring (which would save one block per step): the gradient of a
text block is accumulated *while it travels* and sent home at the end.

- `distributed_sigmoid_loss(method="ring")`: n - 1 steps, each passing one text block to the
  right neighbour (open_clip's 'shift', clip-jax's ring, with the 1/B normalisation done right).
- `distributed_sigmoid_loss(method="bidir")`: blocks travel both ways at once, about (n - 1) / 2
  steps of two exchanges (open_clip's 'bidir'); fewer latency-bound steps on real interconnects.
- `distributed_clip_loss`: softmax over all B negatives with an online log-sum-exp: row statistics
  stay home, column statistics travel with their text block. Two ring passes (statistics, then
  gradients in the backward rule).

`shard_loss` wraps any of them in a `shard_map` over a mesh for callers outside one.
"""

import functools
import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec
from jaxtyping import Array, ArrayLike, Float, Real

from eqvlp.losses.chunked import sigmoid_block
from eqvlp.losses.contrastive import _check_smoothing, warn_if_single_pair
from eqvlp.losses.validation import check_axis_name, check_finite, check_pair, check_scalar

__all__ = ["distributed_clip_loss", "distributed_sigmoid_loss", "shard_loss"]

AxisName = str | tuple[str, ...]


def distributed_sigmoid_loss(
    zimg: Float[Array, "local_batch dim"],
    ztxt: Float[Array, "local_batch dim"],
    scale: Real[ArrayLike, ""],
    bias: Real[ArrayLike, ""],
    *,
    axis_name: AxisName,
    method: str = "ring",
    impl: str = "xla",
) -> Float[Array, ""]:
    """Global-batch `sigmoid_loss` from this device's shard, inside `shard_map`.

    **Arguments:**

    - `zimg`, `ztxt`: this device's L2-normalised embeddings (its rows of the global batch).
    - `scale`, `bias`: replicated scalars.
    - `axis_name`: the mesh axis (or tuple of axes) the batch is sharded over.
    - `method`: "ring" (n - 1 one-way steps) or "bidir" (about (n - 1) / 2 two-way steps).
    - `impl`: how each block is computed: "xla" (`chunked.sigmoid_block`) or "pallas"
      (`eqvlp.kernels.sigmoid_loss.sigmoid_block_pallas`, logits kept in on-chip tiles; interpreted,
      and slow, on CPU).

    **Returns:** the global loss, identical on every device (use `out_specs=P()`).
    """
    fn = "distributed_sigmoid_loss"
    check_pair(fn, zimg, ztxt)
    check_axis_name(fn, axis_name)
    s = check_scalar(fn, "scale", scale, nonnegative=True)
    b = check_scalar(fn, "bias", bias)
    if method not in ("ring", "bidir"):
        raise ValueError(f"{fn}: method must be 'ring' or 'bidir', got {method!r}")
    if impl == "xla":
        block = sigmoid_block
    elif impl == "pallas":
        from eqvlp.kernels.sigmoid_loss import sigmoid_block_pallas as block  # imports Pallas
    else:
        raise ValueError(f"{fn}: impl must be 'xla' or 'pallas', got {impl!r}")
    axes = _axes(axis_name)
    s_local, b_local = _per_device((s, b), axes)
    loss = jax.lax.psum(_dist_sigmoid(zimg, ztxt, s_local, b_local, axes, method, block), axes)
    inputs = [("zimg", zimg), ("ztxt", ztxt), ("scale", s), ("bias", b)]
    return check_finite(fn, loss, inputs, axis_name=axis_name, nonnegative=[("scale", s)])


def distributed_clip_loss(
    zimg: Float[Array, "local_batch dim"],
    ztxt: Float[Array, "local_batch dim"],
    scale: Real[ArrayLike, ""],
    *,
    axis_name: AxisName,
    label_smoothing: float = 0.0,
) -> Float[Array, ""]:
    """Global-batch `clip_loss` from this device's shard, inside `shard_map`.

    Every image sees all B texts as candidates and every text all B images, as with open_clip's
    gathered features, but the texts arrive one `B_l` block at a time and the softmax
    normalisers are accumulated online, so memory stays O(B_l^2 + B_l * dim).

    **Arguments:** as `clip_loss`, plus `axis_name` (the batch's mesh axis or axes).

    **Returns:** the global loss, identical on every device.
    """
    fn = "distributed_clip_loss"
    check_pair(fn, zimg, ztxt)
    check_axis_name(fn, axis_name)
    s = check_scalar(fn, "scale", scale, nonnegative=True)
    _check_smoothing(fn, label_smoothing)
    axes = _axes(axis_name)
    warn_if_single_pair(fn, zimg.shape[0] * jax.lax.axis_size(axes))
    (s_local,) = _per_device((s,), axes)
    loss = jax.lax.psum(_dist_clip(zimg, ztxt, s_local, axes, float(label_smoothing)), axes)
    inputs = [("zimg", zimg), ("ztxt", ztxt), ("scale", s)]
    return check_finite(fn, loss, inputs, axis_name=axis_name, nonnegative=[("scale", s)])


def shard_loss(
    loss_fn: Callable[..., Float[Array, ""]],
    mesh: jax.sharding.Mesh,
    data_axes: AxisName = "data",
    **kwargs,
) -> Callable[..., Float[Array, ""]]:
    """Wraps a distributed loss in `shard_map` over `mesh`: the result takes global arrays.

    `shard_loss(distributed_sigmoid_loss, mesh)(zimg, ztxt, scale, bias)` equals
    `sigmoid_loss(zimg, ztxt, scale, bias)`, with the batch split over `data_axes` (any other mesh
    axes see replicated embeddings). Extra keyword arguments go to `loss_fn`. Works on Auto and
    Explicit meshes, eagerly or under `jit`. With `impl="pallas"` the map runs with
    `check_vma=False`: Pallas kernel outputs carry no device-variance types.
    """
    axes = _axes(data_axes)
    for a in axes:
        if a not in mesh.axis_names:
            raise ValueError(f"shard_loss: mesh has axes {mesh.axis_names}, not {a!r}: pass data_axes=")
    n = 1
    for a in axes:
        n *= mesh.shape[a]
    batch_spec = PartitionSpec(axes)

    def body(zimg, ztxt, *scalars):
        return loss_fn(zimg, ztxt, *scalars, axis_name=axes, **kwargs)

    def run(zimg, ztxt, *scalars):
        if zimg.shape[0] % n:
            raise ValueError(
                f"shard_loss: the batch ({zimg.shape[0]}) must divide evenly over the {n} devices "
                f"of mesh axes {axes}: use a batch size that is a multiple of {n}"
            )
        if all(t == AxisType.Explicit for t in mesh.axis_types):
            zimg, ztxt = (jax.reshard(z, NamedSharding(mesh, batch_spec)) for z in (zimg, ztxt))
        specs = (batch_spec, batch_spec) + (PartitionSpec(),) * len(scalars)
        mapped = jax.shard_map(
            body, mesh=mesh, in_specs=specs, out_specs=PartitionSpec(), check_vma=kwargs.get("impl") != "pallas"
        )
        return mapped(zimg, ztxt, *scalars)

    return run


def _axes(axis_name: AxisName) -> tuple[str, ...]:
    return (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)


def _per_device(scalars, axes):
    """Marks replicated scalars as per-device values before they enter a custom VJP.

    Each custom VJP below returns this device's *share* of the loss, and the caller `psum`s the
    shares. Autodiff then hands every device the same cotangent, with `check_vma` on or off, and
    each device returns its own share of the scalars' gradients, which JAX sums back over the
    devices (the transpose of this cast under `check_vma=True`; of the replicated input otherwise).
    """
    out = []
    for x in scalars:
        missing = tuple(a for a in axes if a not in _varying_axes(x))
        if missing and hasattr(jax.lax, "pcast"):
            x = jax.lax.pcast(x, missing, to="varying")
        elif missing:
            x = jax.lax.pvary(x, missing)  # jax < 0.10
        out.append(x)
    return tuple(out)


def _varying_axes(x) -> frozenset:
    """The manual axes `x` is typed as varying over (empty when `check_vma=False`)."""
    aval = jax.typeof(x)
    for get in (lambda a: a.vma, lambda a: a.mat.varying, lambda a: a.manual_axis_type.varying):
        try:
            return frozenset(get(aval))
        except AttributeError:
            continue
    return frozenset()


def _shift(x, axes: tuple[str, ...], k: int):
    """Sends `x` from device i to device i + k along the ring of `axes`.

    `x` may be a tuple of float32 arrays with the same leading (local batch) axis: they travel
    packed in one `ppermute`, since each exchange costs a synchronisation whatever its size.
    """
    n = jax.lax.axis_size(axes)
    perm = [(i, (i + k) % n) for i in range(n)]
    if not isinstance(x, tuple):
        return jax.lax.ppermute(x, axes, perm)
    parts = [p.reshape(p.shape[0], -1) for p in x]
    packed = jax.lax.ppermute(jnp.concatenate(parts, axis=1), axes, perm)
    splits = list(itertools.accumulate(p.shape[1] for p in parts))[:-1]
    return tuple(q.reshape(p.shape) for q, p in zip(jnp.split(packed, splits, axis=1), x))


# ----------------------------------------------------------------------------------------------
# Sigmoid: one ring pass computes loss and gradients (the forward rule keeps the gradients).


def _sigmoid_sweep(zimg, ztxt, scale, bias, axes, method, block, with_grads):
    n = jax.lax.axis_size(axes)
    local = zimg.shape[0]
    total = n * local
    zi = zimg.astype(jnp.float32)
    zt = ztxt.astype(jnp.float32)
    own = block(zi, zt, scale, bias, 0, with_grads)
    # A stream is a text block on its way round the ring, with the gradient it has gathered.
    dt0 = own.dztxt if with_grads else None
    streams = [(zt, dt0)]
    acc = (own.loss, own.dzimg, own.gsum)

    def visit(acc, t, dt):
        loss, dzi, gsum = acc
        blk = block(zi, t, scale, bias, None, with_grads)
        if not with_grads:
            return (loss + blk.loss, dzi, gsum), dt
        return (loss + blk.loss, dzi + blk.dzimg, gsum + blk.gsum), dt + blk.dztxt

    def round_(carry, dirs):
        acc, streams = carry
        new = []
        for (t, dt), k in zip(streams, dirs):
            if dt is None:
                t = _shift(t, axes, k)
            else:
                t, dt = _shift((t, dt), axes, k)
            acc, dt = visit(acc, t, dt)
            new.append((t, dt))
        return acc, new

    if method == "ring":
        rounds, tail = n - 1, 0
        dirs = (1,)
    else:
        rounds, tail = divmod(n - 1, 2)
        dirs = (1, -1)
        if rounds:
            # The left-going copy starts with no gradient: the home block's is in the other one.
            streams = streams + [(zt, None if dt0 is None else jnp.zeros_like(dt0))]
    if rounds:
        carry = jax.lax.fori_loop(0, rounds, lambda _, c: round_(c, dirs), (acc, streams))
        acc, streams = carry
    offsets = [rounds * k for k in dirs]
    if tail:
        acc, first = round_((acc, streams[:1]), (1,))
        streams = first + streams[1:]
        offsets[0] += 1
    loss, dzi_raw, gsum = acc
    if not with_grads:
        return loss / total, None
    dzt_raw = sum(_shift(dt, axes, -off) if off % n else dt for (_, dt), off in zip(streams, offsets))
    # Gradients of the global loss for this device's rows; for the scalars, this device's share.
    grads = ((scale / total) * dzi_raw, (scale / total) * dzt_raw, jnp.sum(zi * dzi_raw) / total, gsum / total)
    return loss / total, grads


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _dist_sigmoid(zimg, ztxt, scale, bias, axes, method, block):
    return _sigmoid_sweep(zimg, ztxt, scale, bias, axes, method, block, with_grads=False)[0]


def _dist_sigmoid_fwd(zimg, ztxt, scale, bias, axes, method, block):
    loss, (dzi, dzt, ds, db) = _sigmoid_sweep(zimg, ztxt, scale, bias, axes, method, block, with_grads=True)
    return loss, (dzi.astype(zimg.dtype), dzt.astype(ztxt.dtype), ds, db)


def _dist_sigmoid_bwd(axes, method, block, residuals, g):
    return _scale_grads(residuals, g)


_dist_sigmoid.defvjp(_dist_sigmoid_fwd, _dist_sigmoid_bwd)


def _scale_grads(residuals, g):
    return tuple((r.astype(jnp.float32) * g).astype(r.dtype) for r in residuals)



# ----------------------------------------------------------------------------------------------
# Softmax: pass 1 gathers log-sum-exp statistics (rows at home, columns travelling); pass 2, in the
# backward rule, recomputes each block's probabilities and gathers gradients the same way.


def _lse_update(m, s, block_max, block_sumexp):
    """Merges running (max, sum exp(x - max)) with a block's; returns the new pair."""
    new_m = jnp.maximum(m, block_max)
    return new_m, s * jnp.exp(m - new_m) + block_sumexp * jnp.exp(block_max - new_m)


def _clip_stats(zi, zt, scale, axes):
    """Pass 1: per-row and per-column log-sum-exp of the global logits for this device's rows/cols."""

    def block_stats(t):
        logits = scale * jnp.einsum("id,jd->ij", zi, t, preferred_element_type=jnp.float32)
        rmax = jnp.max(logits, axis=1)
        cmax = jnp.max(logits, axis=0)
        rsum = jnp.sum(jnp.exp(logits - rmax[:, None]), axis=1)
        csum = jnp.sum(jnp.exp(logits - cmax[None, :]), axis=0)
        return rmax, rsum, cmax, csum

    rm, rs, cm, cs = block_stats(zt)
    n = jax.lax.axis_size(axes)

    def step(_, carry):
        rm, rs, t, cm, cs = carry
        t, cm, cs = _shift((t, cm, cs), axes, 1)
        brm, brs, bcm, bcs = block_stats(t)
        rm, rs = _lse_update(rm, rs, brm, brs)
        cm, cs = _lse_update(cm, cs, bcm, bcs)
        return rm, rs, t, cm, cs

    if n > 1:
        rm, rs, _, cm, cs = jax.lax.fori_loop(0, n - 1, step, (rm, rs, zt, cm, cs))
        cm, cs = _shift((cm, cs), axes, 1)
    # Kept as (max, log-sum) pairs: `exp((L - max) - logsum)` in the backward pass is exact where
    # `exp(L - lse)` would lose the low bits of a large `lse` (ulp(100) ~ 8e-6).
    return (rm, jnp.log(rs)), (cm, jnp.log(cs))


def _clip_value(zi, zt, scale, axes, smoothing, stats_r, stats_c):
    n = jax.lax.axis_size(axes)
    total = n * zi.shape[0]
    pos = (1 - smoothing) * scale * jnp.sum(zi * zt, axis=1)
    # (max - positive) first: both are large when the batch is well aligned, their difference not.
    (m_r, ls_r), (m_c, ls_c) = stats_r, stats_c
    loss = jnp.sum((m_r - pos) + ls_r) + jnp.sum((m_c - pos) + ls_c)
    if smoothing:
        # The uniform part of the targets needs sum_ij L_ij = scale * sum_i zimg_i . (sum_j ztxt_j);
        # this device's share is its own rows i.
        zt_sum = jax.lax.psum(jnp.sum(zt, axis=0), axes)
        loss = loss - 2 * smoothing * scale * jnp.dot(jnp.sum(zi, axis=0), zt_sum) / total
    return loss / (2 * total)  # this device's share; the caller sums the shares


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _dist_clip(zimg, ztxt, scale, axes, smoothing):
    zi, zt = zimg.astype(jnp.float32), ztxt.astype(jnp.float32)
    stats_r, stats_c = _clip_stats(zi, zt, scale, axes)
    return _clip_value(zi, zt, scale, axes, smoothing, stats_r, stats_c)


def _dist_clip_fwd(zimg, ztxt, scale, axes, smoothing):
    zi, zt = zimg.astype(jnp.float32), ztxt.astype(jnp.float32)
    stats_r, stats_c = _clip_stats(zi, zt, scale, axes)
    loss = _clip_value(zi, zt, scale, axes, smoothing, stats_r, stats_c)
    return loss, (zimg, ztxt, scale, stats_r, stats_c)


def _dist_clip_bwd(axes, smoothing, residuals, g):
    zimg, ztxt, scale, (m_r, ls_r), stats_c = residuals
    zi, zt = zimg.astype(jnp.float32), ztxt.astype(jnp.float32)
    n = jax.lax.axis_size(axes)
    total = n * zi.shape[0]

    def block(t, stats_t, home=False):
        # W = softmax over rows + softmax over columns of this block's logits. On the home block
        # the diagonal is left out and restored below from the off-diagonal mass: p_ii - 1 is
        # -sum_{j != i} p_ij exactly, while computing it as exp(...) - 1 would cancel, and the
        # logits recomputed here may differ from the forward pass's by an ulp (~8e-6 at 100).
        m_t, ls_t = stats_t
        logits = scale * jnp.einsum("id,jd->ij", zi, t, preferred_element_type=jnp.float32)
        p = jnp.exp((logits - m_r[:, None]) - ls_r[:, None])
        q = jnp.exp((logits - m_t[None, :]) - ls_t[None, :])
        if home:
            off = ~jnp.eye(p.shape[0], dtype=bool)
            p, q = jnp.where(off, p, 0.0), jnp.where(off, q, 0.0)
        w = p + q
        return (
            jnp.einsum("ij,jd->id", w, t, preferred_element_type=jnp.float32),
            jnp.einsum("ij,id->jd", w, zi, preferred_element_type=jnp.float32),
            jnp.sum(p, axis=1),
            jnp.sum(q, axis=0),
        )

    r, dt, p_off, q_off = block(zt, stats_c, home=True)

    def step(_, carry):
        r, p_off, t, stats_t, dt, q_off = carry
        t, m_t, ls_t, dt, q_off = _shift((t, *stats_t, dt, q_off), axes, 1)
        stats_t = (m_t, ls_t)
        br, bdt, bp, bq = block(t, stats_t)
        return r + br, p_off + bp, t, stats_t, dt + bdt, q_off + bq

    if n > 1:
        r, p_off, _, _, dt, q_off = jax.lax.fori_loop(0, n - 1, step, (r, p_off, zt, stats_c, dt, q_off))
        dt, q_off = _shift((dt, q_off), axes, 1)
    # The diagonal: p_ii + q_ii - 2 (1 - eps) = 2 eps - sum_{j != i} p_ij - sum_{j != i} q_ji.
    diag = 2 * smoothing - p_off - q_off
    r = r + diag[:, None] * zt
    dt = dt + diag[:, None] * zi
    # dL/dL_ij = (W_ij - 2 eps / B) / 2B; the uniform smoothing term in closed form.
    gi, gt = r, dt
    ds = jnp.sum(zi * r)  # this device's share of the scale's gradient
    if smoothing:
        zi_sum = jax.lax.psum(jnp.sum(zi, axis=0), axes)
        zt_sum = jax.lax.psum(jnp.sum(zt, axis=0), axes)
        gi = gi - (2 * smoothing / total) * zt_sum
        gt = gt - (2 * smoothing / total) * zi_sum
        ds = ds - (2 * smoothing / total) * jnp.dot(jnp.sum(zi, axis=0), zt_sum)
    c = g / (2 * total)
    return (
        (c * scale * gi).astype(zimg.dtype),
        (c * scale * gt).astype(ztxt.dtype),
        c * ds,
    )


_dist_clip.defvjp(_dist_clip_fwd, _dist_clip_bwd)
