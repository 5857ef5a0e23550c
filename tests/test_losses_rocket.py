"""clip-rocket: the multi-view combination, SiamLIP/BYOLIP, BarLIP, SwALIP, heads and EMA."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec as P

from eqvlp.losses import (
    Predictor,
    Projector,
    Prototypes,
    barlip_loss,
    batch_norm,
    byolip_loss,
    clip_loss,
    clip_rocket_loss,
    ema_update,
    normalize,
    siamlip_loss,
    sinkhorn,
    swalip_loss,
)


def _unit(getkey, *shape):
    return normalize(jax.random.normal(getkey(), shape))


def _mesh(n):
    return jax.make_mesh((n,), ("data",), devices=jax.devices()[:n], axis_types=(AxisType.Auto,))


def test_clip_rocket_combination(getkey):
    b, d, views = 6, 5, 2
    zi, zt = _unit(getkey, b, d), _unit(getkey, b, d)
    hi, ht = _unit(getkey, views, b, d), _unit(getkey, views, b, d)
    loss = jax.jit(clip_rocket_loss)(zi, zt, hi, ht, 10.0, 7.0)
    zi, zt, hi, ht = (np.asarray(x, np.float64) for x in (zi, zt, hi, ht))
    # clip-rocket's own bookkeeping: per modality (global + n * mean of local CEs) / (1 + n).
    def ce_rows(logits, eps):
        q = (1 - eps) * np.eye(b) + eps / b
        lg = np.asarray(logits, np.float64)
        lse = np.log(np.exp(lg - lg.max(1, keepdims=True)).sum(1)) + lg.max(1)
        return np.mean(-(q * (lg - lse[:, None])).sum(1))

    g = 10.0 * zi @ zt.T
    img_local = np.mean([ce_rows(7.0 * hi[a] @ ht[c].T, 0.1) for a in range(views) for c in range(views)])
    txt_local = np.mean([ce_rows(7.0 * ht[c] @ hi[a].T, 0.1) for a in range(views) for c in range(views)])
    img = (ce_rows(g, 0.0) + views * img_local) / (1 + views)
    txt = (ce_rows(g.T, 0.0) + views * txt_local) / (1 + views)
    np.testing.assert_allclose(loss, (img + txt) / 2, rtol=1e-5)
    # label smoothing 0 on the local terms: every term is a plain clip_loss
    zi, zt, hi, ht = (jnp.asarray(x, jnp.float32) for x in (zi, zt, hi, ht))

    @jax.jit
    def both(zi, zt, hi, ht):
        plain = clip_rocket_loss(zi, zt, hi, ht, 10.0, 7.0, label_smoothing=0.0)
        locals_ = jnp.stack([clip_loss(hi[a], ht[c], 7.0) for a in range(views) for c in range(views)])
        return plain, (clip_loss(zi, zt, 10.0) + views * jnp.mean(locals_)) / (1 + views)

    np.testing.assert_allclose(*both(zi, zt, hi, ht), rtol=1e-5)
    # no strong views: plain clip_loss
    no_views = jnp.zeros((0, b, d))
    np.testing.assert_allclose(clip_rocket_loss(zi, zt, no_views, no_views, 10.0, 7.0), clip_loss(zi, zt, 10.0))


def test_clip_rocket_distributed(getkey):
    b, d = 8, 4
    zi, zt = _unit(getkey, b, d), _unit(getkey, b, d)
    hi, ht = _unit(getkey, 2, b, d), _unit(getkey, 2, b, d)
    f = jax.shard_map(
        lambda *a: clip_rocket_loss(*a, axis_name="data"), mesh=_mesh(4),
        in_specs=(P("data"), P("data"), P(None, "data"), P(None, "data"), P(), P()), out_specs=P(),
    )
    args = (zi, zt, hi, ht, jnp.float32(10.0), jnp.float32(7.0))
    v, g = jax.jit(jax.value_and_grad(f, argnums=(0, 2, 5)))(*args)
    vr, gr = jax.jit(jax.value_and_grad(clip_rocket_loss, argnums=(0, 2, 5)))(*args)
    np.testing.assert_allclose(v, vr, rtol=1e-5)
    for a, e in zip(g, gr):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-6)


def test_siamlip(getkey):
    p_img, p_txt, v_img, v_txt = (jax.random.normal(getkey(), (5, 4)) for _ in range(4))
    loss, grads = jax.jit(jax.value_and_grad(siamlip_loss, argnums=(0, 1, 2, 3)))(p_img, p_txt, v_img, v_txt)
    cos = lambda a, b: np.sum(normalize(a) * normalize(b), 1)  # noqa: E731
    expected = 0.5 * ((2 - 2 * cos(p_img, v_txt).mean()) + (2 - 2 * cos(p_txt, v_img).mean()))
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert 0.0 <= float(loss) <= 4.0
    assert np.all(grads[2] == 0) and np.all(grads[3] == 0)  # stop-gradient on the targets
    assert np.any(grads[0] != 0) and np.any(grads[1] != 0)
    assert float(siamlip_loss(v_txt * 3.0, v_img, v_img, v_txt)) == pytest.approx(0.0, abs=1e-6)


def test_byolip_training_step_with_ema(getkey):
    """BYOLIP: predictions from the online heads, targets from an EMA copy of the whole model."""
    proj = Projector(6, 16, 4, key=getkey())
    pred = Predictor(4, 16, key=getkey())
    online = (proj, pred)
    target = online
    x_img, x_txt = jax.random.normal(getkey(), (8, 6)), jax.random.normal(getkey(), (8, 6))

    def loss_fn(model, target):
        proj, pred = model
        t_proj, _ = target
        v_img_ema, v_txt_ema = t_proj(x_img), t_proj(x_txt)
        return byolip_loss(pred(proj(x_img)), pred(proj(x_txt)), v_img_ema, v_txt_ema)

    loss, grads = eqx.filter_jit(eqx.filter_value_and_grad(loss_fn))(online, target)
    assert jnp.isfinite(loss)
    online = jax.tree.map(lambda p, g: p - 0.1 * g, online, grads)
    new_target = ema_update(target, online, tau=0.99)
    w_t, w_o, w_new = target[0].linear1.weight, online[0].linear1.weight, new_target[0].linear1.weight
    np.testing.assert_allclose(w_new, 0.99 * w_t + 0.01 * w_o, rtol=1e-6, atol=1e-7)


def test_ema_update_semantics():
    target = {"w": jnp.ones(3), "step": jnp.int32(1), "half": jnp.ones(2, jnp.bfloat16), "name": "a"}
    online = {"w": jnp.zeros(3), "step": jnp.int32(7), "half": jnp.zeros(2, jnp.bfloat16), "name": "a"}
    out = ema_update(target, online, tau=0.75)
    np.testing.assert_allclose(out["w"], 0.75)
    assert int(out["step"]) == 7 and out["half"].dtype == jnp.bfloat16 and out["name"] == "a"
    np.testing.assert_allclose(ema_update(target, online, tau=1.0)["w"], 1.0)
    np.testing.assert_allclose(ema_update(target, online, tau=0.0)["w"], 0.0)
    np.testing.assert_allclose(jax.jit(ema_update)(target["w"], online["w"], jnp.float32(0.5)), 0.5)
    with pytest.raises(ValueError, match="same structure"):
        ema_update({"w": jnp.ones(3)}, {"w": jnp.ones(3), "v": jnp.ones(1)})


def test_barlip_formula(getkey):
    zi, zt = jax.random.normal(getkey(), (16, 5)), jax.random.normal(getkey(), (16, 5))
    a = (zi - zi.mean(0)) / np.sqrt(zi.var(0) + 1e-5)
    b = (zt - zt.mean(0)) / np.sqrt(zt.var(0) + 1e-5)
    c = np.asarray(a.T @ b / 16, np.float64)
    off = c - np.diag(np.diag(c))
    expected = 0.025 * (np.sum((1 - np.diag(c)) ** 2) + 5e-3 * np.sum(off**2))
    np.testing.assert_allclose(barlip_loss(zi, zt), expected, rtol=1e-5)
    # identical, decorrelated inputs: C = I (up to the eps in the std), loss ~ 0
    q = jnp.asarray(np.linalg.qr(np.random.default_rng(0).normal(size=(16, 5)))[0]) * 4.0
    assert float(barlip_loss(q - q.mean(0), q - q.mean(0))) < 1e-3


@pytest.mark.parametrize("name", ["barlip", "siamlip", "swalip", "sinkhorn"])
def test_rocket_terms_distributed(getkey, name):
    """With axis_name each term uses the global batch: equal to the single-device value."""
    b, d = 8, 6
    x, y = jax.random.normal(getkey(), (b, d)), jax.random.normal(getkey(), (b, d))
    fns = {
        "barlip": (lambda a, c, **k: barlip_loss(a, c, **k)),
        "siamlip": (lambda a, c, **k: siamlip_loss(a, c, c, a, **k)),
        "swalip": (lambda a, c, **k: swalip_loss(normalize(a), normalize(c), 10.0, **k)),
        "sinkhorn": (lambda a, c, **k: sinkhorn(normalize(a)[:, :4] * normalize(c)[:, :4], **k)),
    }
    f = fns[name]
    out_spec = P("data") if name == "sinkhorn" else P()
    sharded = jax.shard_map(
        lambda a, c: f(a, c, axis_name="data"), mesh=_mesh(4), in_specs=(P("data"), P("data")), out_specs=out_spec
    )
    np.testing.assert_allclose(jax.jit(sharded)(x, y), jax.jit(f)(x, y), rtol=1e-5, atol=1e-6)
    if name != "sinkhorn":
        g1 = jax.jit(jax.grad(sharded))(x, y)
        g2 = jax.jit(jax.grad(f))(x, y)
        np.testing.assert_allclose(g1, g2, rtol=1e-4, atol=1e-6)


def test_sinkhorn_marginals(getkey):
    scores = normalize(jax.random.normal(getkey(), (12, 6))) @ normalize(jax.random.normal(getkey(), (4, 6))).T
    q = sinkhorn(scores)
    np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-5)  # each sample's assignment sums to 1
    # clip-rocket's procedure, on the (prototypes, batch) transpose, in float64
    ref = np.exp(np.asarray(scores, np.float64) / 0.05).T
    ref /= ref.sum()
    for _ in range(3):
        ref /= ref.sum(1, keepdims=True) * 4
        ref /= ref.sum(0, keepdims=True) * 12
    np.testing.assert_allclose(q, (ref * 12).T, rtol=1e-4, atol=1e-7)
    # Iterating evens out the prototypes' shares (B / K each); 3 iterations go part of the way.
    greedy = jax.nn.softmax(scores / 0.05, axis=1).sum(0)
    assert float(jnp.std(q.sum(0))) < float(jnp.std(greedy))
    np.testing.assert_allclose(sinkhorn(scores, iterations=200).sum(0), 12 / 4, rtol=1e-3)
    np.testing.assert_allclose(sinkhorn(scores + 100.0), q, rtol=1e-3, atol=1e-6)  # no exp overflow
    assert np.all(jax.grad(lambda s: sinkhorn(s).sum())(scores) == 0)  # targets carry no gradient


def test_swalip_uses_the_other_modality_as_targets(getkey):
    s_img = normalize(jax.random.normal(getkey(), (8, 5)))
    s_txt = normalize(jax.random.normal(getkey(), (8, 5)))
    loss = swalip_loss(s_img, s_txt, 10.0)
    logp = lambda s: jax.nn.log_softmax(10.0 * s, axis=1)  # noqa: E731
    expected = 0.5 * (-(sinkhorn(s_txt) * logp(s_img)).sum(1).mean() - (sinkhorn(s_img) * logp(s_txt)).sum(1).mean())
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_heads_and_prototypes(getkey):
    x = jax.random.normal(getkey(), (10, 6)) * 5 + 3
    proj = Projector(6, 32, 8, key=getkey())
    v = eqx.filter_jit(lambda p, x: p(x))(proj, x)
    assert v.shape == (10, 8)
    np.testing.assert_allclose(v.mean(0), 0.0, atol=1e-5)  # last BN has no affine: standardised
    np.testing.assert_allclose(v.std(0), 1.0, rtol=1e-3)
    assert Predictor(8, 32, key=getkey())(v).shape == (10, 8)
    protos = Prototypes(8, 3, key=getkey())
    scores = protos(v)
    assert scores.shape == (10, 3) and float(jnp.max(jnp.abs(scores))) <= 1.0 + 1e-6
    grad = jax.jit(lambda frozen: jax.grad(lambda p: p(v, frozen=frozen).sum())(protos).weight)
    assert np.all(grad(True) == 0) and np.any(grad(False) != 0)
    assert np.all(grad(jnp.int32(50) < 100) == 0)  # a traced "step < 100" works too


def test_batch_norm_sync_equals_global(getkey):
    x = jax.random.normal(getkey(), (8, 3)) * 2 + 1
    sharded = jax.shard_map(
        lambda a: batch_norm(a, axis_name="data"), mesh=_mesh(4), in_specs=P("data"), out_specs=P("data")
    )
    np.testing.assert_allclose(sharded(x), batch_norm(x), rtol=1e-5, atol=1e-6)


def test_rocket_terms_reject_nan(getkey):
    x = jax.random.normal(getkey(), (4, 3))
    bad = x.at[1, 1].set(jnp.nan)
    with pytest.raises(Exception, match="siamlip_loss: p_txt contains NaN or inf"):
        jax.block_until_ready(jax.jit(siamlip_loss)(x, bad, x, x))
    with pytest.raises(Exception, match="barlip_loss: z_img contains NaN or inf"):
        jax.block_until_ready(jax.jit(jax.grad(barlip_loss))(bad, x))
    with pytest.raises(Exception, match="swalip_loss: scores_txt contains NaN or inf"):
        jax.block_until_ready(jax.jit(swalip_loss)(x, bad, 1.0))
