"""Parity with a peer: eqvlp's clip_loss / sigmoid_loss vs open_clip's ClipLoss / SigLipLoss.

open_clip is a test-only peer, installed without its dependencies
(`pip install --no-deps open_clip_torch==3.3.0`). Importing the `open_clip` package pulls in
torchvision (which has no build matching this CPU torch); its `loss.py` needs only torch, so it is
loaded by path, without running the package's `__init__`. Skipped when open_clip is absent.
"""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqvlp.losses import clip_loss, normalize, sigmoid_loss

torch = pytest.importorskip("torch")


def _open_clip_loss_module():
    spec = importlib.util.find_spec("open_clip")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("open_clip_torch is not installed: pip install --no-deps open_clip_torch==3.3.0 (.ci/run does)")
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / "loss.py"
    mod_spec = importlib.util.spec_from_file_location("_open_clip_loss", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


oc = _open_clip_loss_module()


def _inputs(seed, batch, dim):
    k1, k2 = jax.random.split(jax.random.key(seed))
    zi = normalize(jax.random.normal(k1, (batch, dim)))
    zt = normalize(jax.random.normal(k2, (batch, dim)))
    return zi, zt


def _torch_grads(loss_module, zi, zt, *scalars):
    tensors = [torch.tensor(np.asarray(x), dtype=torch.float32, requires_grad=True) for x in (zi, zt, *scalars)]
    loss = loss_module(*tensors)
    loss.backward()
    return float(loss.detach()), [t.grad.numpy() for t in tensors]


@pytest.mark.parametrize("batch,dim,scale", [(1, 4, 1.0), (8, 16, 1 / 0.07), (33, 24, 100.0)])
def test_clip_loss_matches_open_clip(batch, dim, scale):
    zi, zt = _inputs(batch, batch, dim)
    value, grads = jax.jit(jax.value_and_grad(clip_loss, argnums=(0, 1, 2)))(zi, zt, jnp.float32(scale))
    t_value, t_grads = _torch_grads(oc.ClipLoss(), zi, zt, np.float32(scale))
    np.testing.assert_allclose(value, t_value, rtol=1e-5, atol=1e-6)
    for g, t in zip(grads, t_grads):
        np.testing.assert_allclose(g, t, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("batch,dim,scale,bias", [(1, 4, 10.0, -10.0), (8, 16, 10.0, -10.0), (33, 24, 30.0, 2.0)])
def test_sigmoid_loss_matches_open_clip(batch, dim, scale, bias):
    zi, zt = _inputs(batch + 100, batch, dim)
    value, grads = jax.jit(jax.value_and_grad(sigmoid_loss, argnums=(0, 1, 2, 3)))(
        zi, zt, jnp.float32(scale), jnp.float32(bias)
    )
    t_value, t_grads = _torch_grads(oc.SigLipLoss(), zi, zt, np.float32(scale), np.float32(bias))
    np.testing.assert_allclose(value, t_value, rtol=1e-5)
    for g, t in zip(grads, t_grads):
        np.testing.assert_allclose(g, t, rtol=1e-5, atol=1e-6 * (scale + abs(bias)))
