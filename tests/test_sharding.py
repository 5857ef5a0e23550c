"""Sharding rules on 8 simulated CPU devices: specs, bytes per device, and equal training steps."""

import math
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from eqvlp import models, sharding
from eqvlp.train import make_train_step, sharded_train_step

MESHES = {"dp": dict(data=8), "fsdp": dict(fsdp=8), "fsdp_tp": dict(fsdp=4, tensor=2)}


def test_make_mesh_axes_and_errors():
    mesh = sharding.make_mesh(fsdp=4, tensor=2)
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    assert dict(sharding.make_mesh().shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    one = sharding.make_mesh(devices=jax.devices()[:1])
    assert math.prod(one.shape.values()) == 1
    with pytest.raises(ValueError, match="device"):
        sharding.make_mesh(data=3)
    with pytest.raises(ValueError, match="unknown sharding rules"):
        sharding.rules("zero3")


def test_spec_rules_first_match_right_aligned_and_divisibility():
    mesh = sharding.make_mesh(fsdp=4, tensor=2)
    table = ((r"special", P("tensor")), (r"\.weight$", P("fsdp", "tensor")), (r".*", P()))
    assert sharding.spec_for("a.special.weight", (6, 8), table, mesh) == P(None, "tensor")
    assert sharding.spec_for("a.weight", (12, 8, 6), table, mesh) == P(None, "fsdp", "tensor")
    assert sharding.spec_for("a.weight", (6, 8), table, mesh) == P(None, "tensor")  # 6 % 4 != 0
    assert sharding.spec_for("a.weight", (8,), table, mesh) == P("tensor")
    assert sharding.spec_for("a.bias", (8,), table, mesh) == P(None)
    with pytest.raises(ValueError, match="no sharding rule"):
        sharding.spec_for("x", (2,), ((r"y", P()),), mesh)


def test_param_specs_same_on_arrays_and_abstract(getkey):
    mesh = sharding.make_mesh(fsdp=8)
    model = models.create("clip-tiny", key=getkey())
    abstract = jax.eval_shape(lambda: models.create("clip-tiny", key=jax.random.key(0)))
    rules = sharding.rules("fsdp")
    specs, abstract_specs = (sharding.param_specs(t, rules, mesh) for t in (model, abstract))
    is_spec = lambda x: isinstance(x, P)  # noqa: E731
    assert jax.tree.leaves(specs, is_leaf=is_spec) == jax.tree.leaves(abstract_specs, is_leaf=is_spec)
    assert specs.image.encoder.layers.mlp.fc1.weight == P(None, "fsdp", None)


@pytest.mark.parametrize("preset, mesh_shape", [("fsdp", MESHES["fsdp"]), ("fsdp_tp", MESHES["fsdp_tp"])])
def test_vit_b16_bytes_per_device(preset, mesh_shape):
    mesh = sharding.make_mesh(**mesh_shape)
    abstract = jax.eval_shape(lambda: models.create("clip-vit-b16", key=jax.random.key(0)))
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))
    per_device = sharding.bytes_per_device(abstract, sharding.rules(preset), mesh)
    assert per_device <= 1.1 * total / 8
    sharding.check_fsdp(abstract, sharding.rules(preset), mesh)  # nothing large replicated


@pytest.mark.parametrize("name", sorted(models.PRESETS))
def test_fsdp_rules_cover_every_preset(name):
    abstract = jax.eval_shape(lambda: models.create(name, key=jax.random.key(0)))
    for preset in ("fsdp", "fsdp_tp"):
        mesh = sharding.make_mesh(**MESHES[preset])
        assert sharding.replicated_above(abstract, sharding.rules(preset), mesh,
                                         min_bytes=1 << 20) == []


def test_check_fsdp_catches_replicated_parameters():
    abstract = jax.eval_shape(lambda: models.create("clip-vit-b32", key=jax.random.key(0)))
    with pytest.raises(ValueError, match="replicated"):
        sharding.check_fsdp(abstract, sharding.rules("dp"), sharding.make_mesh(fsdp=8))


def test_sharded_init_matches_plain_init_and_holds_shards_only():
    mesh = sharding.make_mesh(fsdp=8)
    make = lambda: models.create("clip-tiny", key=jax.random.key(3))  # noqa: E731
    sharded = sharding.init_sharded(make, sharding.rules("fsdp"), mesh)
    plain = make()
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(plain)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-8)
    fc1 = sharded.image.encoder.layers.mlp.fc1.weight
    assert fc1.addressable_shards[0].data.shape == (2, 64 // 8, 128)
    held = sum(s.data.nbytes for leaf in jax.tree.leaves(sharded) for s in leaf.addressable_shards
               if s.device == jax.devices()[0])
    expected = sharding.bytes_per_device(plain, sharding.rules("fsdp"), mesh)
    assert held == expected


def test_report_lists_every_parameter():
    mesh = sharding.make_mesh(fsdp=4, tensor=2)
    abstract = jax.eval_shape(lambda: models.create("clip-tiny", key=jax.random.key(0)))
    text = sharding.report(abstract, sharding.rules("fsdp_tp"), mesh)
    assert "image.encoder.layers.mlp.fc2.weight" in text and "(None, 'tensor', 'fsdp')" in text
    assert len(text.splitlines()) == len(jax.tree.leaves(abstract)) + 3


def training_batch(model, n=8):
    key = jax.random.key(11)
    images = jax.random.normal(key, (n, *model.config.vision.image_shape))
    ids = jax.random.randint(key, (n, model.config.text.context_length), 4, 1000)
    return images, ids.at[:, 6].set(2)


@pytest.mark.parametrize(
    "preset, model_name",
    [("dp", "clip-tiny"), ("fsdp", "clip-tiny"), ("fsdp_tp", "clip-tiny"), ("fsdp_tp", "siglip-tiny")],
)
def test_sharded_step_equals_single_device(preset, model_name):
    # SGD with momentum: Adam's first step is g / (|g| + eps), which turns reduction-order
    # rounding in near-zero gradients into 1e-3-sized parameter differences.
    optimizer = optax.sgd(0.1, momentum=0.9)
    step = make_train_step(optimizer)
    model = models.create(model_name, key=jax.random.key(5))
    state = optimizer.init(eqx.filter(model, eqx.is_array))
    images, ids = training_batch(model)
    ref_model, _, ref_loss = jax.jit(step)(model, state, images, ids)

    mesh = sharding.make_mesh(**MESHES[preset])
    rules = sharding.rules(preset)
    with jax.set_mesh(mesh):
        sharded = sharded_train_step(step, model, state, rules, mesh, donate=False)
        new_model, new_state, loss = sharded(sharding.shard(model, rules, mesh),
                                             sharding.shard(state, rules, mesh), images, ids)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(new_model), jax.tree.leaves(ref_model)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # the optimizer state is sharded alongside the parameters
    mu = new_state[0].trace.image.encoder.layers.mlp.fc1.weight
    assert mu.sharding.spec == sharding.param_specs(model, rules, mesh).image.encoder.layers.mlp.fc1.weight


def test_docs_show_the_full_preset_tables():
    page = (Path(__file__).resolve().parents[1] / "docs" / "sharding.md").read_text()
    for name in ("fsdp", "fsdp_tp"):
        assert sharding.describe(sharding.rules(name)) in page, f"docs/sharding.md: {name} table"
