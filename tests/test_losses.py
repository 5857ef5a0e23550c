"""Unit tests for eqvlp.losses: formulas, chunked and distributed equality, bad input, clip-rocket."""

import json
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import AxisType, PartitionSpec as P

from eqvlp.losses import (
    chunked_sigmoid_loss,
    clip_loss,
    distributed_clip_loss,
    distributed_sigmoid_loss,
    normalize,
    shard_loss,
    sigmoid_loss,
)
from eqvlp.testing import assert_close
from eqvlp.testing import strategies as sts


def _pair(getkey, batch, dim, dtype=jnp.float32):
    zi = normalize(jax.random.normal(getkey(), (batch, dim))).astype(dtype)
    zt = normalize(jax.random.normal(getkey(), (batch, dim))).astype(dtype)
    return zi, zt


def _mesh(n, names=("data",), shape=None, axis_type=AxisType.Auto):
    shape = shape or (n,)
    return jax.make_mesh(shape, names, devices=jax.devices()[:n], axis_types=(axis_type,) * len(names))


def _grads(f, *args):
    return jax.jit(jax.value_and_grad(f, argnums=tuple(range(len(args)))))(*args)


def _assert_same(a, b, rtol=1e-5):
    (va, ga), (vb, gb) = a, b
    assert_close("value", va, vb, rtol=rtol, atol=1e-6)
    for x, y in zip(ga, gb):
        assert_close("grad", x, y, rtol=rtol, atol=1e-6)


# -- the references against independent formulas -------------------------------------------------


def _clip_numpy(zi, zt, s, eps=0.0):
    logits = s * np.asarray(zi, np.float64) @ np.asarray(zt, np.float64).T
    b = logits.shape[0]
    target = (1 - eps) * np.eye(b) + eps / b

    def xent(lg):
        lse = np.log(np.sum(np.exp(lg - lg.max(1, keepdims=True)), 1)) + lg.max(1)
        return np.mean(-np.sum(target * (lg - lse[:, None]), 1))

    return 0.5 * (xent(logits) + xent(logits.T))


def _sigmoid_numpy(zi, zt, s, b):
    logits = s * np.asarray(zi, np.float64) @ np.asarray(zt, np.float64).T + b
    m = 2 * np.eye(logits.shape[0]) - 1
    return np.sum(np.logaddexp(0, -m * logits)) / logits.shape[0]


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_clip_loss_formula(getkey, eps):
    zi, zt = _pair(getkey, 7, 5)
    np.testing.assert_allclose(clip_loss(zi, zt, 3.0, label_smoothing=eps), _clip_numpy(zi, zt, 3.0, eps), rtol=1e-6)


def test_sigmoid_loss_formula(getkey):
    zi, zt = _pair(getkey, 7, 5)
    np.testing.assert_allclose(sigmoid_loss(zi, zt, 10.0, -10.0), _sigmoid_numpy(zi, zt, 10.0, -10.0), rtol=1e-6)


def _plain_clip(zi, zt, s):
    logits = s * zi @ zt.T
    labels = jnp.arange(zi.shape[0])
    return 0.5 * (
        optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
    )


@settings(max_examples=200, deadline=None)
@given(pairs=sts.embedding_pairs(max_batch=6, dim=8), scale=sts.scales())
def test_label_smoothing_zero_is_plain_loss(pairs, scale):
    """clip_loss(label_smoothing=0) is plain cross-entropy, and the smoothed path tends to it."""
    zi, zt = (jnp.asarray(z) for z in pairs)
    plain = _jit_plain(zi, zt, scale)
    assert_close("ls=0 vs optax", _jit_clip(zi, zt, scale, 0.0), plain, rtol=1e-5, atol=1e-6 * (1 + scale))
    assert_close("ls=1e-9 vs optax", _jit_clip(zi, zt, scale, 1e-9), plain, rtol=1e-5, atol=1e-6 * (1 + scale))


_jit_plain = jax.jit(_plain_clip)
_jit_clip = jax.jit(lambda zi, zt, s, eps: clip_loss(zi, zt, s, label_smoothing=eps), static_argnums=3)


def test_text_text_contrastive(getkey):
    """CLIPPO co-training: image/text pairs and text/text pairs in one batch, one clip_loss."""
    img, txt = _pair(getkey, 4, 8)
    txt_a, txt_b = _pair(getkey, 2, 8)
    left = jnp.concatenate([img, txt_a])
    right = jnp.concatenate([txt, txt_b])
    loss = jax.jit(clip_loss)
    np.testing.assert_allclose(loss(left, right, 10.0), _clip_numpy(left, right, 10.0), rtol=1e-6)
    np.testing.assert_allclose(loss(txt_a, txt_b, 10.0), _clip_numpy(txt_a, txt_b, 10.0), rtol=1e-6)


def test_bf16_inputs_give_f32_loss(getkey):
    zi, zt = _pair(getkey, 6, 8, jnp.bfloat16)
    chunked = lambda a, b: chunked_sigmoid_loss(a, b, 10.0, -10.0, chunk_size=4)  # noqa: E731
    reference = lambda a, b: sigmoid_loss(a, b, 10.0, -10.0)  # noqa: E731
    for f in (lambda a, b: clip_loss(a, b, 10.0), reference, chunked):
        v, (ga, gb) = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(zi, zt)
        assert v.dtype == jnp.float32 and ga.dtype == jnp.bfloat16 and gb.dtype == jnp.bfloat16
    np.testing.assert_allclose(jax.jit(chunked)(zi, zt), jax.jit(reference)(zi, zt), rtol=1e-6)


# -- chunked --------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch,chunk", [(64, 16), (70, 16), (70, 64), (5, 1), (5, 5), (5, 512)])
def test_chunked_equals_reference(getkey, batch, chunk):
    zi, zt = _pair(getkey, batch, 12)
    args = (zi, zt, jnp.float32(10.0), jnp.float32(-10.0))
    ref = _grads(sigmoid_loss, *args)
    out = _grads(lambda *a: chunked_sigmoid_loss(*a, chunk_size=chunk), *args)
    _assert_same(out, ref)
    # the primal alone (no gradient) takes the forward-only sweep
    primal = jax.jit(chunked_sigmoid_loss, static_argnames="chunk_size")(*args, chunk_size=chunk)
    np.testing.assert_allclose(primal, ref[0], rtol=1e-6)


def _all_shapes(jaxpr):
    for eqn in jaxpr.eqns:
        for v in list(eqn.invars) + list(eqn.outvars):
            if hasattr(v, "aval") and hasattr(v.aval, "shape"):
                yield tuple(v.aval.shape)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from _all_shapes(sub)


def test_chunked_never_holds_batch_squared(getkey):
    batch, chunk = 48, 8
    zi, zt = _pair(getkey, batch, 12)
    grad_fn = jax.value_and_grad(lambda *a: chunked_sigmoid_loss(*a, chunk_size=chunk), argnums=(0, 1, 2, 3))
    shapes = set(_all_shapes(jax.make_jaxpr(grad_fn)(zi, zt, 10.0, -10.0).jaxpr))
    assert (chunk, batch) in shapes  # the blocks are there ...
    assert all(np.prod(s) < batch * batch for s in shapes), sorted(shapes)  # ... and nothing B x B
    ref_shapes = set(_all_shapes(jax.make_jaxpr(jax.grad(sigmoid_loss))(zi, zt, 10.0, -10.0).jaxpr))
    assert (batch, batch) in ref_shapes


def test_chunked_rejects_bad_chunk(getkey):
    zi, zt = _pair(getkey, 4, 3)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        chunked_sigmoid_loss(zi, zt, 1.0, 0.0, chunk_size=0)


# -- distributed ----------------------------------------------------------------------------------


# Without label smoothing, equality on 1, 2, 4 and 8 devices is a hypothesis property
# (tests/test_losses_properties.py); here the cases it does not draw.
@pytest.mark.parametrize("n,kind", [(2, "clip_smooth"), (8, "clip_smooth"), (8, "ring"), (8, "bidir")])
def test_distributed_equals_global(getkey, n, kind):
    zi, zt = _pair(getkey, 3 * n, 6)
    s, b = jnp.float32(4.0), jnp.float32(-3.0)
    if kind.startswith("clip"):
        eps = 0.1 if kind == "clip_smooth" else 0.0
        ref = _grads(lambda *a: clip_loss(*a, label_smoothing=eps), zi, zt, s)
        out = _grads(shard_loss(distributed_clip_loss, _mesh(n), label_smoothing=eps), zi, zt, s)
    else:
        ref = _grads(sigmoid_loss, zi, zt, s, b)
        out = _grads(shard_loss(distributed_sigmoid_loss, _mesh(n), method=kind), zi, zt, s, b)
    _assert_same(out, ref)


@pytest.mark.parametrize("kind", ["ring", "bidir", "clip"])
def test_distributed_memory_is_local(getkey, kind):
    """Inside shard_map no array has the global batch as a dimension: blocks are B_l x B_l."""
    n, local, dim = 4, 3, 7  # dim chosen so that no packed width equals the batch
    batch = n * local
    zi, zt = _pair(getkey, batch, dim)
    if kind == "clip":
        f = shard_loss(distributed_clip_loss, _mesh(n))
        args = (zi, zt, 2.0)
    else:
        f = shard_loss(distributed_sigmoid_loss, _mesh(n), method=kind)
        args = (zi, zt, 2.0, -1.0)
    jaxpr = jax.make_jaxpr(jax.value_and_grad(f, argnums=(0, 1)))(*args).jaxpr
    body_shapes = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "shard_map":
            body_shapes |= set(_all_shapes(eqn.params["jaxpr"]))
    assert body_shapes and (local, local) in body_shapes
    assert not any(batch in s for s in body_shapes), sorted(body_shapes)


def test_distributed_on_2d_mesh_and_explicit_axes(getkey):
    zi, zt = _pair(getkey, 8, 6)
    ref = _grads(sigmoid_loss, zi, zt, 3.0, -2.0)
    # batch over data only, replicated over model
    mesh = _mesh(8, ("data", "model"), (4, 2))
    _assert_same(_grads(shard_loss(distributed_sigmoid_loss, mesh, "data"), zi, zt, 3.0, -2.0), ref)
    # batch over two axes at once
    _assert_same(_grads(shard_loss(distributed_sigmoid_loss, mesh, ("data", "model"), method="bidir"),
                        zi, zt, 3.0, -2.0), ref)
    # an Explicit mesh (jax.make_mesh's default)
    explicit = _mesh(4, axis_type=AxisType.Explicit)
    _assert_same(_grads(shard_loss(distributed_sigmoid_loss, explicit), zi, zt, 3.0, -2.0), ref)


def test_distributed_inside_user_shard_map(getkey):
    """Called from the user's own shard_map, with and without check_vma."""
    zi, zt = _pair(getkey, 8, 6)
    mesh = _mesh(4)
    ref = _grads(lambda a, b, s: clip_loss(a, b, s), zi, zt, 5.0)
    ref_sig = _grads(lambda a, b, s: sigmoid_loss(a, b, s, -1.0), zi, zt, 5.0)
    for check_vma in (True, False):
        f = jax.shard_map(
            lambda a, b, s: distributed_clip_loss(a, b, s, axis_name="data"),
            mesh=mesh, in_specs=(P("data"), P("data"), P()), out_specs=P(), check_vma=check_vma,
        )
        _assert_same(_grads(f, zi, zt, jnp.float32(5.0)), ref)
        f = jax.shard_map(
            lambda a, b, s: distributed_sigmoid_loss(a, b, s, -1.0, axis_name="data", method="bidir"),
            mesh=mesh, in_specs=(P("data"), P("data"), P()), out_specs=P(), check_vma=check_vma,
        )
        _assert_same(_grads(f, zi, zt, jnp.float32(5.0)), ref_sig)


def test_distributed_sigmoid_with_pallas_blocks(getkey):
    """impl="pallas" computes every ring block with eqvlp.kernels' fused kernel (interpreted here)."""
    zi, zt = _pair(getkey, 8, 8)
    ref = _grads(sigmoid_loss, zi, zt, 3.0, -1.0)
    _assert_same(_grads(shard_loss(distributed_sigmoid_loss, _mesh(2), method="bidir", impl="pallas"),
                        zi, zt, 3.0, -1.0), ref)
    with pytest.raises(ValueError, match="impl must be 'xla' or 'pallas'"):
        shard_loss(distributed_sigmoid_loss, _mesh(2), impl="triton")(zi, zt, 3.0, -1.0)


def test_shard_loss_rejects_uneven_batch(getkey):
    zi, zt = _pair(getkey, 6, 4)
    with pytest.raises(ValueError, match="multiple of 4"):
        shard_loss(distributed_sigmoid_loss, _mesh(4))(zi, zt, 1.0, 0.0)
    with pytest.raises(ValueError, match="not 'batch'"):
        shard_loss(distributed_sigmoid_loss, _mesh(4), "batch")


# -- bad input --------------------------------------------------------------------------------------


def _losses_for_nan():
    return {
        "clip_loss": lambda a, b, s, c: clip_loss(a, b, s),
        "sigmoid_loss": sigmoid_loss,
        "chunked_sigmoid_loss": lambda a, b, s, c: chunked_sigmoid_loss(a, b, s, c, chunk_size=2),
    }


@pytest.mark.parametrize("name", list(_losses_for_nan()))
@pytest.mark.parametrize("where", ["zimg", "ztxt", "scale"])
def test_non_finite_input_raises(getkey, name, where):
    f = jax.jit(_losses_for_nan()[name])
    zi, zt = _pair(getkey, 4, 3)
    args = {"zimg": zi, "ztxt": zt, "scale": jnp.float32(2.0), "bias": jnp.float32(0.0)}
    args[where] = args[where].at[(0,) * args[where].ndim].set(jnp.inf if where == "scale" else jnp.nan)
    for fn in (f, jax.grad(f)):
        with pytest.raises(Exception, match=f"{name}: {where} contains NaN or inf"):
            jax.block_until_ready(fn(*args.values()))


def test_non_finite_input_raises_under_shard_map():
    """In a subprocess: inside shard_map every device raises, and JAX keeps the other devices'
    errors in its effect tokens and reports them again at interpreter exit (harmless, but noise
    that does not belong in this test run's output)."""
    script = textwrap.dedent(
        """
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
        import json, jax, jax.numpy as jnp
        from eqvlp.losses import distributed_clip_loss, distributed_sigmoid_loss, shard_loss
        mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
        fns = {
            "distributed_sigmoid_loss": shard_loss(distributed_sigmoid_loss, mesh, method="bidir"),
            "distributed_clip_loss": lambda a, b, s, c: shard_loss(distributed_clip_loss, mesh)(a, b, s),
        }
        out = {}
        for name, f in fns.items():
            for where in ("zimg", "ztxt", "scale"):
                args = {"zimg": jnp.ones((4, 3)), "ztxt": jnp.ones((4, 3)), "scale": jnp.float32(2.0),
                        "bias": jnp.float32(0.0)}
                args[where] = args[where].at[(0,) * args[where].ndim].set(jnp.nan)
                for tag, fn in (("value", jax.jit(f)), ("grad", jax.jit(jax.grad(f)))):
                    try:
                        jax.block_until_ready(fn(*args.values()))
                        out[f"{name}/{where}/{tag}"] = "no error"
                    except Exception as e:
                        out[f"{name}/{where}/{tag}"] = str(e)
        ok = jnp.ones((4, 3))
        out["after"] = float(jax.jit(fns["distributed_clip_loss"])(ok, ok, 1.0, 0.0))
        print("RESULT " + json.dumps(out))
        """
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    line = next(x for x in res.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    assert out.pop("after") == pytest.approx(np.log(4))  # later calls still work
    for key, msg in out.items():
        name, where, _ = key.split("/")
        assert f"{name}: {where} contains NaN or inf" in msg, (key, msg[:300])


def test_zero_norm_rows_stay_finite(getkey):
    zi, zt = _pair(getkey, 4, 3)
    dead = jnp.zeros((1, 3))
    # normalize: zero row -> zero row, finite gradient; other rows unit norm
    z = jnp.concatenate([zi[:3] * 7.0, dead])
    out = normalize(z)
    np.testing.assert_allclose(jnp.linalg.norm(out, axis=1), [1, 1, 1, 0], atol=1e-6)
    assert jnp.all(jnp.isfinite(jax.jit(jax.jacobian(normalize))(z)))
    zi0 = jnp.concatenate([zi[:3], dead])
    for f in (lambda a: clip_loss(a, zt, 10.0), lambda a: sigmoid_loss(a, zt, 10.0, -10.0),
              lambda a: chunked_sigmoid_loss(a, zt, 10.0, -10.0, chunk_size=3)):
        v, g = jax.jit(jax.value_and_grad(lambda a: f(normalize(a))))(zi0)
        assert jnp.isfinite(v) and jnp.all(jnp.isfinite(g))
    # A zero image row scores 0 against every text: its image->text term is log(B).
    logits = 10.0 * zi0 @ zt.T
    assert float(jax.nn.logsumexp(logits[3]) - logits[3, 3]) == pytest.approx(np.log(4), rel=1e-6)


def test_shape_errors_name_the_fix():
    """The static checks' messages, run without the test suite's jaxtyping hook (which would
    otherwise catch the same mistakes first, with its own message)."""
    script = textwrap.dedent(
        """
        import json, jax.numpy as jnp
        from eqvlp.losses import clip_loss, sigmoid_loss, chunked_sigmoid_loss, clip_rocket_loss
        z8, z6, z8d5 = jnp.ones((8, 4)), jnp.ones((6, 4)), jnp.ones((8, 5))
        cases = {
            "batch": lambda: clip_loss(z8, z6, 1.0),
            "dim": lambda: sigmoid_loss(z8, z8d5, 1.0, 0.0),
            "ndim": lambda: clip_loss(jnp.ones((8,)), z8, 1.0),
            "dtype": lambda: clip_loss(z8, z8.astype(jnp.bfloat16), 1.0),
            "scalar": lambda: sigmoid_loss(z8, z8, jnp.ones((1,)), 0.0),
            "smoothing": lambda: clip_loss(z8, z8, 1.0, label_smoothing=1.5),
            "empty": lambda: clip_loss(jnp.ones((0, 4)), jnp.ones((0, 4)), 1.0),
            "views": lambda: clip_rocket_loss(z8, z8, jnp.ones((2, 8, 4)), jnp.ones((3, 8, 4)), 1.0, 1.0),
        }
        out = {}
        for k, f in cases.items():
            try:
                f()
                out[k] = None
            except ValueError as e:
                out[k] = str(e)
        print(json.dumps(out))
        """
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    msgs = json.loads(res.stdout.strip().splitlines()[-1])
    assert msgs["batch"] == (
        "clip_loss: zimg and ztxt must have the same batch size, got 8 and 6: pass matching pairs"
    )
    assert "same embedding dim, got 4 and 5" in msgs["dim"]
    assert "must have shape (batch, dim), got (8,)" in msgs["ndim"]
    assert "same dtype" in msgs["dtype"] and "cast" in msgs["dtype"]
    assert "scale must be a scalar, got shape (1,)" in msgs["scalar"]
    assert "label_smoothing must be in [0, 1)" in msgs["smoothing"]
    assert "empty batch" in msgs["empty"]
    assert "same number of strong views" in msgs["views"]
