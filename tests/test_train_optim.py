"""The training optimiser: config checks, schedules, the decay mask, AdamW + clipping, the NaN
guard and the EMA. Every optimiser step here runs under the suite's strict dtype promotion
with no promotion block, as the loop will call it."""

import functools
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jaxtyping import Array, Float

from eqvlp import models, nn, sharding
from eqvlp.sharding import path_name
from eqvlp.train.optim import (
    OptimConfig,
    SkipNonfiniteState,
    decay_mask,
    ema_params,
    learning_rate,
    make_optimizer,
    skip_nonfinite,
)


@pytest.mark.parametrize(
    ("field", "value"),
    [("lr", 0.0), ("lr", float("nan")), ("warmup_steps", -1), ("schedule", "linear"),
     ("min_lr_ratio", 1.5), ("rsqrt_timescale", 0), ("b1", 1.0), ("b2", -0.1), ("eps", 0.0),
     ("weight_decay", -1e-4), ("clip_norm", 0.0), ("ema_decay", 1.0)],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    # jaxtyping's signature check (a TypeError) fires first on the `schedule` Literal in the suite
    match = rf"OptimConfig\.{field}=.* is invalid: use|Literal"
    with pytest.raises((ValueError, TypeError), match=match):
        OptimConfig(**{field: value})


def test_learning_rate_warms_up_then_follows_the_schedule():
    steps = jnp.arange(0, 301)
    lr = 2e-3
    config = OptimConfig(lr=lr, warmup_steps=10, min_lr_ratio=0.1)
    cosine = np.asarray(learning_rate(config, 210)(steps))
    np.testing.assert_allclose(cosine[[0, 5, 10]], [0.0, lr / 2, lr], rtol=1e-6)
    np.testing.assert_allclose(cosine[110], lr * (0.1 + 0.9 * 0.5), rtol=1e-5)  # cosine midpoint
    np.testing.assert_allclose(cosine[210:], 0.1 * lr, rtol=1e-5)  # the floor, and it stays there
    assert np.all(np.diff(cosine[10:]) <= 1e-12)

    rsqrt = OptimConfig(lr=lr, warmup_steps=10, schedule="rsqrt", rsqrt_timescale=50)
    values = np.asarray(learning_rate(rsqrt, 300)(steps))
    np.testing.assert_allclose(values[[5, 10, 10 + 3 * 50]], [lr / 2, lr, lr / 2], rtol=1e-6)

    constant = OptimConfig(lr=lr, warmup_steps=0, schedule="constant")
    np.testing.assert_allclose(learning_rate(constant, 300)(steps), lr, rtol=1e-6)
    assert learning_rate(OptimConfig(lr=lr, warmup_steps=0), 100)(0) == pytest.approx(lr)


def test_learning_rate_rejects_warmup_longer_than_the_run():
    with pytest.raises(ValueError, match="warmup_steps=100 is longer than the run \\(50 steps\\)"):
        learning_rate(OptimConfig(warmup_steps=100), 50)


def _decayed(model) -> dict[str, bool]:
    flat, _ = jax.tree_util.tree_flatten_with_path(decay_mask(model))
    return {path_name(path): decays for path, decays in flat}


# The test's oracle for the presets, by name; decay_mask itself never looks at names.
_NO_DECAY = re.compile(
    r"(norm\d?\.(weight|bias)|\.bias|position_embedding\.weight|class_token|probe|logit_scale|"
    r"logit_bias)$"
)


@pytest.mark.parametrize("name", ["clip-tiny", "siglip-tiny", "clippo-tiny", "onetower-clip-tiny"])
def test_decay_mask_on_presets(name):
    model = jax.eval_shape(lambda: models.create(name, key=jax.random.key(0)))
    decayed = _decayed(model)
    assert len(decayed) == len(jax.tree.leaves(model))
    assert all(isinstance(d, bool) for d in decayed.values())
    for leaf, decays in decayed.items():
        assert decays == (not _NO_DECAY.search(leaf)), leaf
    encoder = "image" if name.startswith(("clip-", "siglip")) else "vit"
    stacked_norm = f"{encoder}.encoder.layers.norm1.weight"
    assert decayed[stacked_norm] is False  # 2-D because of the layer axis, still a norm
    assert decayed[f"{encoder}.encoder.layers.mlp.fc1.weight"] is True
    assert decayed[f"{encoder}.patch_embedding.projection.weight"] is True
    assert decayed["logit_scale"] is False
    if name != "clippo-tiny":
        table = "token_embedding" if name.startswith("onetower") else "text.token_embedding"
        assert decayed[table] is True


class _OddTwoTower(eqx.Module):
    """eqvlp blocks (and a few equinox ones) under field names no rule table would know."""

    eyes: nn.PatchEmbedding
    where_eyes: nn.LearnedPositionEmbedding
    trunk: nn.Encoder
    squash: nn.LayerNorm
    gist: nn.MAPHead
    lexicon: Float[Array, "vocab dim"]
    seed_token: Float[Array, "1 dim"]
    heat: Float[Array, ""]
    heads: tuple[nn.Linear, eqx.nn.Linear]
    extras: dict

    def __init__(self, key):
        k = jax.random.split(key, 8)
        self.eyes = nn.PatchEmbedding(4, 8, key=k[0])
        self.where_eyes = nn.LearnedPositionEmbedding(4, 8, key=k[1])
        self.trunk = nn.Encoder(2, 8, 2, 16, key=k[2])
        self.squash = nn.LayerNorm(8)
        self.gist = nn.MAPHead(8, 2, 16, key=k[3])
        self.lexicon = jnp.zeros((10, 8))
        self.seed_token = jnp.zeros((1, 8))
        self.heat = jnp.zeros(())
        self.heads = (nn.Linear(8, 4, key=k[4]), eqx.nn.Linear(8, 4, key=k[5]))
        self.extras = {"words": eqx.nn.Embedding(10, 8, key=k[6]), "calm": eqx.nn.LayerNorm(8)}


def test_decay_mask_judges_leaves_by_their_block_not_their_name():
    decayed = _decayed(jax.eval_shape(lambda: _OddTwoTower(jax.random.key(0))))
    true = {
        "eyes.projection.weight", "lexicon", "heads.0.weight", "heads.1.weight",
        "extras.words.weight", "gist.mlp.fc1.weight", "gist.mlp.fc2.weight",
        *(f"{where}.attention.{p}.weight" for where in ("trunk.layers", "gist")
          for p in ("query", "key", "value", "output")),
        "trunk.layers.mlp.fc1.weight", "trunk.layers.mlp.fc2.weight",
    }
    assert {name for name, decays in decayed.items() if decays} == true
    for name in ("trunk.layers.norm1.weight", "where_eyes.weight", "gist.probe", "seed_token",
                 "heat", "heads.0.bias", "heads.1.bias", "extras.calm.weight", "squash.bias"):
        assert decayed[name] is False, name


class _Toy(eqx.Module):
    linear: nn.Linear
    norm: nn.LayerNorm
    log_scale: Float[Array, ""]

    def __init__(self, key):
        self.linear = nn.Linear(3, 2, key=key)
        self.norm = nn.LayerNorm(2)
        self.log_scale = jnp.asarray(1.5, jnp.float32)


def _step(optimizer, model):
    """A jitted `(grads, opt_state, loss) -> (model, opt_state)` step, with no promotion block."""
    params = eqx.filter(model, eqx.is_array)

    # compile quickly: no backend optimiser, XLA:CPU's older elemental emitters
    @functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0,
                                                  "xla_cpu_use_fusion_emitters": False})
    def step(params, grads, opt_state, loss):
        updates, opt_state = optimizer.update(grads, opt_state, params, loss=loss)
        return eqx.apply_updates(params, updates), opt_state

    return lambda grads, opt_state, loss=0.0: step(params, grads, opt_state, jnp.asarray(loss))


def _like(model, fill):
    return jax.tree.map(lambda p: jnp.full_like(p, fill), eqx.filter(model, eqx.is_array))


def test_weight_decay_reaches_only_masked_leaves(getkey):
    assert jax.config.jax_numpy_dtype_promotion == "strict"
    model = _Toy(getkey())
    config = OptimConfig(lr=0.1, warmup_steps=0, schedule="constant", weight_decay=0.5)
    optimizer = make_optimizer(config, model, total_steps=10)
    # zero gradients: Adam's step is 0 / (0 + eps) = 0, so only the decay moves parameters
    state = optimizer.init(eqx.filter(model, eqx.is_array))
    new, _ = _step(optimizer, model)(_like(model, 0.0), state)
    np.testing.assert_allclose(new.linear.weight, model.linear.weight * (1 - 0.1 * 0.5), rtol=1e-6)
    for keep in (lambda m: m.linear.bias, lambda m: m.norm.weight, lambda m: m.norm.bias,
                 lambda m: m.log_scale):
        np.testing.assert_array_equal(keep(new), keep(model))


@pytest.mark.parametrize("clip_norm", [1.0, None])
def test_adam_step_on_clipped_gradients(clip_norm, getkey):
    # eps large enough that Adam's first step g / (|g| + eps) shows the gradient's size
    model, lr, eps = _Toy(getkey()), 0.1, 1e3
    config = OptimConfig(lr=lr, warmup_steps=0, schedule="constant", weight_decay=0.0, eps=eps,
                         clip_norm=clip_norm)
    optimizer = make_optimizer(config, model, total_steps=10)
    grads = _like(model, 0.0)
    g = jnp.asarray([[30.0, -40.0], [0.0, 0.0], [0.0, 0.0]])  # global norm 50
    grads = eqx.tree_at(lambda t: t.linear.weight, grads, g)
    new, state = _step(optimizer, model)(grads, optimizer.init(eqx.filter(model, eqx.is_array)))
    clipped = g / 50.0 if clip_norm else g
    want = model.linear.weight - lr * clipped / (jnp.abs(clipped) + eps)
    np.testing.assert_allclose(new.linear.weight, want, rtol=1e-6)
    np.testing.assert_array_equal(new.norm.weight, model.norm.weight)


def test_nonfinite_loss_or_gradient_skips_the_step(getkey):
    model = _Toy(getkey())
    config = OptimConfig(lr=0.1, warmup_steps=0, schedule="constant")
    optimizer = make_optimizer(config, model, total_steps=10)
    step = _step(optimizer, model)
    state = optimizer.init(eqx.filter(model, eqx.is_array))
    assert isinstance(state, SkipNonfiniteState) and int(state.skipped) == 0
    nan_grads = eqx.tree_at(lambda t: t.linear.bias, _like(model, 1.0), jnp.asarray([1.0, jnp.nan]))
    for grads, loss, skipped in [(nan_grads, 0.0, 1), (_like(model, 1.0), jnp.inf, 2)]:
        new, state = step(grads, state, jnp.asarray(loss))
        assert int(state.skipped) == skipped
        for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(model), strict=True):
            np.testing.assert_array_equal(a, b)
        # Adam's moments and step count are untouched
        assert all(int(c) == 0 for c in jax.tree.leaves(state.inner_state) if c.dtype == jnp.int32)
        assert all(float(jnp.max(jnp.abs(x))) == 0.0 for x in jax.tree.leaves(state.inner_state)
                   if x.dtype == jnp.float32)
    new, state = step(_like(model, 1.0), state, jnp.asarray(0.5))
    assert int(state.skipped) == 2
    assert not np.allclose(new.linear.weight, model.linear.weight)
    assert np.all(np.isfinite(new.linear.weight))


def test_skip_nonfinite_without_a_loss_checks_gradients():
    optimizer = skip_nonfinite(optax.sgd(1.0))
    params = {"w": jnp.ones(2)}
    state = optimizer.init(params)
    updates, state = optimizer.update({"w": jnp.asarray([jnp.inf, 1.0])}, state, params)
    np.testing.assert_array_equal(updates["w"], [0.0, 0.0])
    assert int(state.skipped) == 1


def test_optimizer_state_shards_with_the_rule_tables():
    model = jax.eval_shape(lambda: models.create("clip-tiny", key=jax.random.key(0)))
    optimizer = make_optimizer(OptimConfig(), model, total_steps=1000)
    state = jax.eval_shape(optimizer.init, model)  # abstract: every leaf is an array
    # an update on the model's structure (logit_bias is None for CLIP) goes through the mask
    updates, new_state = jax.eval_shape(optimizer.update, model, state, model)
    assert jax.tree.structure(updates) == jax.tree.structure(model)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    mesh = sharding.make_mesh(data=1, fsdp=8)
    specs = sharding.param_specs(state, sharding.rules("fsdp"), mesh)
    flat = {path_name(p): s for p, s in jax.tree_util.tree_flatten_with_path(
        specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0]}
    mu = [spec for name, spec in flat.items()
          if name.endswith("mu.text.encoder.layers.mlp.fc1.weight")]
    assert mu == [jax.sharding.PartitionSpec(None, "fsdp", None)]  # sharded like the weight


def test_ema_params_moves_towards_the_weights(getkey):
    ema, model = _Toy(getkey()), _Toy(getkey())
    new = ema_params(ema, model, 0.9)
    want = 0.9 * np.asarray(ema.linear.weight) + 0.1 * np.asarray(model.linear.weight)
    np.testing.assert_allclose(new.linear.weight, want, rtol=1e-6)
    assert jax.tree.structure(new) == jax.tree.structure(model)
