"""Sharded tensorstore checkpoints: round trips across meshes, atomicity under SIGKILL."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from eqvlp import models, sharding
from eqvlp.train import checkpoint


def state_on(mesh, rules_name="fsdp"):
    model = models.create("clip-tiny", key=jax.random.key(0))
    rules = sharding.rules(rules_name)
    rng = jax.random.key_data(jax.random.key(42))
    tree = {"model": model, "rng": rng, "half": jnp.arange(16, dtype=jnp.bfloat16),
            "count": jnp.asarray(7, jnp.int32)}
    return sharding.shard(tree, rules, mesh), rules


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))


def test_round_trip_onto_another_mesh(tmp_path):
    saved_mesh = sharding.make_mesh(fsdp=4, tensor=2)
    tree, rules = state_on(saved_mesh, "fsdp_tp")
    checkpoint.save(tmp_path, 10, tree, {"step": 10, "data_position": 1234})
    assert checkpoint.committed_steps(tmp_path) == [10]
    for target_mesh in (sharding.make_mesh(fsdp=8), sharding.make_mesh(data=2, fsdp=4),
                        sharding.make_mesh(devices=jax.devices()[:1])):
        target_sh = sharding.shardings(tree, sharding.rules("fsdp"), target_mesh)
        restored, extra = checkpoint.restore(tmp_path, tree, target_sh)
        assert extra == {"step": 10, "data_position": 1234}
        assert_trees_equal(restored, tree)
        fc1 = restored["model"].image.encoder.layers.mlp.fc1.weight
        assert fc1.sharding == target_sh["model"].image.encoder.layers.mlp.fc1.weight
    key = jax.random.wrap_key_data(restored["rng"])
    np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(jax.random.key(42)))


def test_restore_into_abstract_target(tmp_path):
    mesh = sharding.make_mesh(fsdp=8)
    tree, rules = state_on(mesh)
    checkpoint.save(tmp_path, 1, tree)
    abstract = jax.eval_shape(lambda: tree)
    restored, _ = checkpoint.restore(tmp_path, abstract, sharding.shardings(abstract, rules, mesh))
    assert_trees_equal(restored, tree)


def test_latest_step_and_errors(tmp_path):
    mesh = sharding.make_mesh(fsdp=8)
    tree = {"x": jax.device_put(jnp.arange(8.0), NamedSharding(mesh, P("fsdp")))}
    with pytest.raises(FileNotFoundError, match="no committed checkpoint"):
        checkpoint.restore(tmp_path, tree, {"x": tree["x"].sharding})
    checkpoint.save(tmp_path, 1, tree)
    checkpoint.save(tmp_path, 2, {"x": tree["x"] * 2})
    assert checkpoint.latest_step(tmp_path) == 2
    older, _ = checkpoint.restore(tmp_path, tree, {"x": tree["x"].sharding}, step=1)
    np.testing.assert_array_equal(older["x"], np.arange(8.0))
    with pytest.raises(ValueError, match="shape"):
        checkpoint.restore(tmp_path, {"x": jnp.zeros(4)}, {"x": tree["x"].sharding})
    with pytest.raises(ValueError, match="no array"):
        checkpoint.restore(tmp_path, {"y": tree["x"]}, {"y": tree["x"].sharding})


CHILD = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp
    from eqvlp import sharding
    from eqvlp.train import checkpoint
    mesh = sharding.make_mesh(fsdp=8)
    small = {"w": jnp.arange(64.0).reshape(8, 8)}
    small = sharding.shard(small, sharding.rules("fsdp"), mesh)
    checkpoint.save(sys.argv[1], 1, small, {"step": 1})
    big = {f"w{i:02d}": jnp.full((512, 1024), float(i)) for i in range(96)}
    big = sharding.shard(big, sharding.rules("fsdp"), mesh)
    print("saving", flush=True)
    checkpoint.save(sys.argv[1], 2, big, {"step": 2})
    print("done", flush=True)
""")


def test_sigkill_mid_save_leaves_previous_checkpoint(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)],
                             stdout=subprocess.PIPE, text=True,
                             env=os.environ | {"JAX_PLATFORMS": "cpu"})
    partial = tmp_path / "step_00000002.tmp"
    deadline = time.time() + 120
    while not (partial / "arrays").exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    assert partial.exists() and not (partial / "COMMIT").exists()
    assert checkpoint.committed_steps(tmp_path) == [1]
    mesh = sharding.make_mesh(fsdp=8)
    target = {"w": jnp.zeros((8, 8))}
    restored, extra = checkpoint.restore(tmp_path, target, sharding.shardings(
        target, sharding.rules("fsdp"), mesh))
    np.testing.assert_array_equal(restored["w"], np.arange(64.0).reshape(8, 8))
    assert extra == {"step": 1}
    # a later save of the same step clears the leftover and commits
    checkpoint.save(tmp_path, 2, restored)
    assert checkpoint.committed_steps(tmp_path) == [1, 2] and not partial.exists()
