"""clip-rocket's losses: the multi-view CLIP objective and the self-supervised terms added to it.

- `clip_rocket_loss`: a global CLIP term on the weak views plus local CLIP terms over every pair of
  strong image view x strong text view (their own projector and temperature, label smoothing 0.1
  on the local terms only), `L = (L_glob + n * L_loc) / (1 + n)` with n views per modality.
- `siamlip_loss`: `D(p, v) = 2 - 2 cos(p, stop_grad(v))` between one modality's prediction and the
  other's projection, both directions averaged. With targets `v` from an EMA model
  (`ema_update`) the same function is BYOLIP; `byolip_loss` is the name for that use.
- `barlip_loss`: Barlow Twins across modalities on the cross-correlation of batch-standardised
  projections, `0.025 * (sum_i (1 - C_ii)^2 + 5e-3 * sum_{i != j} C_ij^2)`.
- `swalip_loss`: SwAV across modalities: Sinkhorn-Knopp assignments of one modality's prototype
  scores are the targets of the other's (3 iterations, epsilon 0.05). clip-rocket weights it 0.2.

The self-supervised terms are added to `clip_rocket_loss` by the caller
(`total = clip_rocket_loss(...) + siamlip_loss(...)`); each takes `axis_name` to use the global
batch inside `shard_map`. For several views, average a term over the view pairs as
`clip_rocket_loss` does.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Real

from eqvlp.losses.contrastive import clip_loss
from eqvlp.losses.distributed import distributed_clip_loss
from eqvlp.losses.heads import batch_norm
from eqvlp.losses.validation import (
    check_axis_name,
    check_finite,
    check_pair,
    check_scalar,
    normalize,
)

__all__ = ["barlip_loss", "byolip_loss", "clip_rocket_loss", "siamlip_loss", "sinkhorn", "swalip_loss"]


def clip_rocket_loss(
    zimg: Float[Array, "batch dim"],
    ztxt: Float[Array, "batch dim"],
    himg: Float[Array, "views batch hdim"],
    htxt: Float[Array, "views batch hdim"],
    scale: Real[ArrayLike, ""],
    local_scale: Real[ArrayLike, ""],
    *,
    label_smoothing: float = 0.1,
    axis_name=None,
) -> Float[Array, ""]:
    """clip-rocket's CLIP objective over one weak view and n strong views per modality.

    `L = (clip_loss(zimg, ztxt, scale) + n * mean_ab clip_loss(himg[a], htxt[b], local_scale,
    label_smoothing)) / (1 + n)`. With n = 0 views it is `clip_loss`.

    **Arguments:**

    - `zimg`, `ztxt`: L2-normalised embeddings of the weak (global) views.
    - `himg`, `htxt`: L2-normalised local-projector embeddings of the n strong views of each.
    - `scale`, `local_scale`: the two logit multipliers (global and local temperatures).
    - `label_smoothing`: applied to the local terms only (clip-rocket: 0.1).
    - `axis_name`: inside `shard_map`, the batch's mesh axes (uses `distributed_clip_loss`).

    **Returns:** the scalar loss.
    """
    fn = "clip_rocket_loss"
    check_pair(fn, zimg, ztxt)
    check_axis_name(fn, axis_name)
    if himg.ndim != 3 or himg.shape != htxt.shape or himg.shape[1] != zimg.shape[0]:
        raise ValueError(
            f"{fn}: himg and htxt must both have shape (views, batch, hdim) with batch "
            f"{zimg.shape[0]}, got {tuple(himg.shape)} and {tuple(htxt.shape)}: stack the same "
            "number of strong views of each modality"
        )
    if axis_name is None:

        def pair(a, b, s, eps):
            return clip_loss(a, b, s, label_smoothing=eps)
    else:

        def pair(a, b, s, eps):
            return distributed_clip_loss(a, b, s, axis_name=axis_name, label_smoothing=eps)

    views = himg.shape[0]
    glob = pair(zimg, ztxt, scale, 0.0)
    if views == 0:
        return glob
    local = jnp.mean(
        jnp.stack([pair(himg[a], htxt[b], local_scale, label_smoothing) for a in range(views) for b in range(views)])
    )
    return (glob + views * local) / (1 + views)


def siamlip_loss(
    p_img: Float[Array, "batch dim"],
    p_txt: Float[Array, "batch dim"],
    v_img: Float[Array, "batch dim"],
    v_txt: Float[Array, "batch dim"],
    *,
    axis_name=None,
) -> Float[Array, ""]:
    """SiamLIP: `(D(p_img, v_txt) + D(p_txt, v_img)) / 2`, `D(p, v) = 2 - 2 mean cos(p, sg(v))`.

    `p_*` are predictor outputs, `v_*` projector outputs; no gradient flows into `v_*`. Inputs need
    not be normalised (cosines are taken here). Zero in [0, 4]; 0 when predictions align.
    """
    fn = "siamlip_loss"
    check_axis_name(fn, axis_name)
    check_pair(fn, p_img, v_txt, ("p_img", "v_txt"))
    check_pair(fn, p_txt, v_img, ("p_txt", "v_img"))
    loss = 0.5 * (_neg_cos(p_img, v_txt, axis_name) + _neg_cos(p_txt, v_img, axis_name))
    inputs = [("p_img", p_img), ("p_txt", p_txt), ("v_img", v_img), ("v_txt", v_txt)]
    return check_finite(fn, loss, inputs, axis_name=axis_name)


def byolip_loss(
    p_img: Float[Array, "batch dim"],
    p_txt: Float[Array, "batch dim"],
    v_img_ema: Float[Array, "batch dim"],
    v_txt_ema: Float[Array, "batch dim"],
    *,
    axis_name=None,
) -> Float[Array, ""]:
    """BYOLIP: `siamlip_loss` with targets from the EMA model (`ema_update`, tau 0.99)."""
    return siamlip_loss(p_img, p_txt, v_img_ema, v_txt_ema, axis_name=axis_name)


def barlip_loss(
    z_img: Float[Array, "batch dim"],
    z_txt: Float[Array, "batch dim"],
    *,
    off_diagonal_weight: float = 5e-3,
    weight: float = 0.025,
    axis_name=None,
) -> Float[Array, ""]:
    """BarLIP: Barlow Twins between the modalities' projections.

    Each feature is standardised over the (global) batch, then `C = z_img.T @ z_txt / N` and
    `L = weight * (sum_i (1 - C_ii)^2 + off_diagonal_weight * sum_{i != j} C_ij^2)`.
    Standardising here makes the loss independent of the projector's output scale.
    """
    fn = "barlip_loss"
    check_axis_name(fn, axis_name)
    check_pair(fn, z_img, z_txt, ("z_img", "z_txt"))
    zi = batch_norm(z_img.astype(jnp.float32), axis_name=axis_name)
    zt = batch_norm(z_txt.astype(jnp.float32), axis_name=axis_name)
    count = zi.shape[0] * (1 if axis_name is None else jax.lax.axis_size(axis_name))
    corr = zi.T @ zt
    if axis_name is not None:
        corr = jax.lax.psum(corr, axis_name)
    corr = corr / count
    diag = jnp.diagonal(corr)
    off = jnp.sum(jnp.square(corr)) - jnp.sum(jnp.square(diag))
    loss = weight * (jnp.sum(jnp.square(1.0 - diag)) + off_diagonal_weight * off)
    return check_finite(fn, loss, [("z_img", z_img), ("z_txt", z_txt)], axis_name=axis_name)


def sinkhorn(
    scores: Float[Array, "batch prototypes"],
    *,
    epsilon: float = 0.05,
    iterations: int = 3,
    axis_name=None,
) -> Float[Array, "batch prototypes"]:
    """Sinkhorn-Knopp: soft assignments of samples to prototypes with equal prototype mass.

    `Q = exp(scores / epsilon)`, then `iterations` rounds of: each prototype's total mass made
    1/K, each sample's made 1/B; returned scaled so each row sums to 1. No gradient flows back.
    Computed from `scores - max(scores)` so large scores cannot overflow (the normalisations
    cancel the shift). An `epsilon` so small that a whole column underflows to 0 gives NaN
    assignments: that raises at run time (like a loss's NaN input) instead of passing silently.
    """
    fn = "sinkhorn"
    check_axis_name(fn, axis_name)
    q = _sinkhorn(fn, scores, epsilon, iterations, axis_name)
    return check_finite(fn, q, [("scores", scores)], axis_name=axis_name,
                        overflow_hint=_epsilon_hint(epsilon))


def _sinkhorn(fn, scores, epsilon, iterations, axis_name):
    """`sinkhorn` without its run-time check (the caller checks its own result)."""
    if not epsilon > 0:
        raise ValueError(f"{fn}: epsilon must be > 0, got {epsilon}: SwAV uses 0.05")
    if iterations < 0:
        raise ValueError(f"{fn}: iterations must be >= 0, got {iterations}: SwAV uses 3")
    scores = jax.lax.stop_gradient(scores.astype(jnp.float32))
    batch, k = scores.shape
    top = jnp.max(scores)
    if axis_name is not None:
        top = jax.lax.pmax(top, axis_name)
        batch = batch * jax.lax.axis_size(axis_name)

    def total(x, axis):
        s = jnp.sum(x, axis=axis, keepdims=True)
        return s if axis_name is None or axis == 1 else jax.lax.psum(s, axis_name)

    q = jnp.exp((scores - top) / epsilon)
    q = q / total(total(q, 0), 1)
    for _ in range(iterations):
        q = q / (total(q, 0) * k)  # each prototype (column) gets mass 1/K
        q = q / (total(q, 1) * batch)  # each sample (row) gets mass 1/B
    return q * batch


def _epsilon_hint(epsilon: float) -> str:
    return (f"Sinkhorn's epsilon={epsilon} is too small for these scores (exp(score / epsilon) "
            "underflows to 0 for a whole prototype): use a larger epsilon, e.g. 0.05")


def swalip_loss(
    scores_img: Float[Array, "batch prototypes"],
    scores_txt: Float[Array, "batch prototypes"],
    scale: Real[ArrayLike, ""],
    *,
    epsilon: float = 0.05,
    iterations: int = 3,
    axis_name=None,
) -> Float[Array, ""]:
    """SwALIP: each modality predicts the other's Sinkhorn assignments over shared prototypes.

    `L = (CE(scale * scores_img, SK(scores_txt)) + CE(scale * scores_txt, SK(scores_img))) / 2`,
    cross-entropies averaged over the (global) batch. `scores_*` are `Prototypes` outputs (cosines).
    """
    fn = "swalip_loss"
    check_axis_name(fn, axis_name)
    check_pair(fn, scores_img, scores_txt, ("scores_img", "scores_txt"))
    s = check_scalar(fn, "scale", scale, nonnegative=True)
    q_img = _sinkhorn(fn, scores_img, epsilon, iterations, axis_name)
    q_txt = _sinkhorn(fn, scores_txt, epsilon, iterations, axis_name)

    def xent(scores, q):
        logp = jax.nn.log_softmax(s * scores.astype(jnp.float32), axis=1)
        total = -jnp.sum(q * logp)
        count = scores.shape[0]
        if axis_name is not None:
            total = jax.lax.psum(total, axis_name)
            count = count * jax.lax.axis_size(axis_name)
        return total / count

    loss = 0.5 * (xent(scores_img, q_txt) + xent(scores_txt, q_img))
    inputs = [("scores_img", scores_img), ("scores_txt", scores_txt), ("scale", s)]
    return check_finite(fn, loss, inputs, axis_name=axis_name, nonnegative=[("scale", s)],
                        overflow_hint=_epsilon_hint(epsilon))


def _neg_cos(p: Float[Array, "batch dim"], v: Float[Array, "batch dim"], axis_name) -> Float[Array, ""]:
    cos = jnp.sum(normalize(p.astype(jnp.float32)) * jax.lax.stop_gradient(normalize(v.astype(jnp.float32))), axis=1)
    total, count = jnp.sum(cos), cos.shape[0]
    if axis_name is not None:
        total = jax.lax.psum(total, axis_name)
        count = count * jax.lax.axis_size(axis_name)
    return 2.0 - 2.0 * total / count
