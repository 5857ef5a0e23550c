"""Damaged checkpoints never restore silently; non-finite state is never committed; step
numbers are validated; `write_png` never truncates on failure; corrupt safetensors files get a
clear error. Tiny trees (no model): the whole file runs in seconds."""

import json
import struct
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from eqvlp import sharding
from eqvlp.convert import read_checkpoint_dir, read_safetensors, write_safetensors
from eqvlp.render import write_png
from eqvlp.train import checkpoint


def tree_at(scale: float):
    """A sharded float leaf (one chunk per device), an all-zero leaf and an int leaf."""
    mesh = sharding.make_mesh(fsdp=8)
    w = jax.device_put(jnp.arange(16.0) * scale, NamedSharding(mesh, P("fsdp")))
    return {"w": w, "zeros": jnp.zeros((3, 2)), "count": jnp.asarray(7, jnp.int32)}


@pytest.fixture
def two_steps(tmp_path):
    """Checkpoints 1 and 2 of the same tree (values 1x and 2x)."""
    checkpoint.save(tmp_path, 1, tree_at(1.0), {"step": 1})
    checkpoint.save(tmp_path, 2, tree_at(2.0), {"step": 2})
    return tmp_path


def restore_latest(directory):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tree, extra = checkpoint.restore(directory, tree_at(0.0))
    return tree, extra, " ".join(str(w.message) for w in caught)


def test_intact_checkpoints_round_trip_with_all_zero_arrays(two_steps):
    tree, extra, warned = restore_latest(two_steps)
    assert extra == {"step": 2} and not warned
    np.testing.assert_array_equal(tree["w"], np.arange(16.0) * 2)
    np.testing.assert_array_equal(tree["zeros"], np.zeros((3, 2)))  # every chunk is stored
    assert tree["w"].sharding == tree_at(0.0)["w"].sharding  # the target's own sharding


def test_a_missing_chunk_falls_back_to_the_older_checkpoint(two_steps):
    (two_steps / "step_00000002" / "arrays" / "w" / "c" / "3").unlink()
    with pytest.raises(checkpoint.CheckpointError, match="w/c/3.*missing"):
        checkpoint.restore(two_steps, tree_at(0.0), step=2)
    tree, extra, warned = restore_latest(two_steps)
    assert extra == {"step": 1} and "step 2 is damaged" in warned and "arrays/w" in warned
    np.testing.assert_array_equal(tree["w"], np.arange(16.0))


def test_flipped_bytes_fail_the_checksum(two_steps):
    chunk = two_steps / "step_00000002" / "arrays" / "w" / "c" / "0"
    data = bytearray(chunk.read_bytes())
    data[0] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match="(?i)digest mismatch"):
        checkpoint.restore(two_steps, tree_at(0.0), step=2)
    assert restore_latest(two_steps)[1] == {"step": 1}


def test_an_edited_dtype_or_a_dropped_checksum_codec_is_refused(two_steps):
    zarr = two_steps / "step_00000002" / "arrays" / "w" / "zarr.json"
    original = json.loads(zarr.read_text())
    zarr.write_text(json.dumps(dict(original, data_type="int32")))
    with pytest.raises(checkpoint.CheckpointError, match="zarr.json says int32"):
        checkpoint.restore(two_steps, tree_at(0.0), step=2)
    zarr.write_text(json.dumps(dict(original, codecs=original["codecs"][:1])))
    with pytest.raises(checkpoint.CheckpointError, match="crc32c"):
        checkpoint.restore(two_steps, tree_at(0.0), step=2)
    # a target of another dtype is the caller's mistake, not damage: no fallback
    with pytest.raises(ValueError, match="dtype float32 != target int32"):
        checkpoint.restore(two_steps, dict(tree_at(0.0), w=jnp.zeros(16, jnp.int32)), step=1)


def test_a_damaged_metadata_json_falls_back_and_none_intact_is_an_error(two_steps):
    meta = two_steps / "step_00000002" / "metadata.json"
    meta.write_text(meta.read_text().replace('"step": 2', '"step": 3'))  # still valid JSON
    with pytest.raises(checkpoint.CheckpointError, match="metadata.json is damaged"):
        checkpoint.read_metadata(two_steps, 2)
    assert restore_latest(two_steps)[1] == {"step": 1}
    (two_steps / "step_00000001" / "metadata.json").write_text("{not json")
    with pytest.raises(checkpoint.CheckpointError, match="no intact checkpoint.*step_00000001"):
        restore_latest(two_steps)
    (two_steps / "step_00000001" / "local_00000.json").write_text("{")
    with pytest.raises(checkpoint.CheckpointError, match="local_00000.json is damaged"):
        checkpoint.read_local(two_steps, 1)
    moved = checkpoint.set_aside(two_steps, 2)
    assert moved.name == "step_00000002.damaged" and checkpoint.committed_steps(two_steps) == [1]


def test_non_finite_state_is_never_committed(tmp_path):
    checkpoint.save(tmp_path, 1, tree_at(1.0))
    bad = dict(tree_at(1.0), zeros=jnp.full((3, 2), jnp.nan))
    with pytest.raises(checkpoint.NonFiniteError, match="zeros.*step 1 stays the latest"):
        checkpoint.save(tmp_path, 2, bad)
    with pytest.raises(checkpoint.NonFiniteError, match="w"):
        checkpoint.save(tmp_path, 2, dict(tree_at(1.0), w=tree_at(1.0)["w"] / 0.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000001"]


@pytest.mark.parametrize("step", [-1, 10**8, 1.5, "3"])
def test_out_of_range_steps_are_refused(tmp_path, step):
    with pytest.raises((ValueError, TypeError), match="step"):
        checkpoint.save(tmp_path, step, tree_at(1.0))
    assert not list(tmp_path.iterdir())
    with pytest.raises((ValueError, TypeError), match="out of range: steps are 0|an integer"):
        checkpoint.check_step(step)


def test_numpy_steps_and_the_largest_step_round_trip(tmp_path):
    checkpoint.save(tmp_path, np.int64(checkpoint.MAX_STEP), {"x": jnp.ones(2)})
    assert checkpoint.latest_step(tmp_path) == checkpoint.MAX_STEP
    restored, _ = checkpoint.restore(tmp_path, {"x": jnp.zeros(2)})  # no shardings: one device
    assert restored["x"].sharding == jax.sharding.SingleDeviceSharding(jax.devices()[0])


def test_write_png_validates_before_touching_the_file(tmp_path):
    path = tmp_path / "out.png"
    write_png(path, np.zeros((4, 4), np.uint8))
    before = path.read_bytes()
    with pytest.raises(TypeError, match="uint8"):
        write_png(path, np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="shape"):
        write_png(path, np.zeros((4, 4, 2), np.uint8))
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_png(tmp_path / "missing" / "x.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(IsADirectoryError, match="is a directory"):
        write_png(tmp_path, np.zeros((4, 4), np.uint8))


def test_corrupt_or_truncated_safetensors_get_a_clear_error(tmp_path):
    path = tmp_path / "model.safetensors"
    write_safetensors(path, {"a": np.arange(6, dtype=np.float32).reshape(2, 3)})
    good = path.read_bytes()
    np.testing.assert_array_equal(read_safetensors(path)["a"], np.arange(6).reshape(2, 3))
    header_size = struct.unpack("<Q", good[:8])[0]
    cases = {
        "truncated": good[:-4],                       # data cut short
        "empty": good[:3],                            # struct.error before
        "huge header": struct.pack("<Q", 2**62) + good[8:],  # MemoryError before
        "not json": good[:8] + b"\xff" * header_size + good[8 + header_size:],
        "no offsets": good[:8] + json.dumps({"a": {"dtype": "F32", "shape": [2, 3]}}).encode()
        .ljust(header_size) + good[8 + header_size:],  # KeyError before
    }
    for what, data in cases.items():
        path.write_bytes(data)
        with pytest.raises(ValueError, match="not a valid .safetensors file") as raised:
            read_safetensors(path)
        assert str(path) in str(raised.value), what
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "model.safetensors.index.json").write_text("{")
    with pytest.raises(ValueError, match="index.json is damaged"):
        read_checkpoint_dir(tmp_path)


def test_reliability_page_save_restore_example_runs():
    """docs/reliability.md's python blocks (those above the validation table) run as written."""
    import re

    from doc_pages import DOCS

    text = (DOCS / "reliability.md").read_text().split("## What is validated where")[0]
    blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)
    assert blocks, "docs/reliability.md lost its save/restore example"
    namespace: dict = {}
    with jax.numpy_dtype_promotion("standard"):  # doc code is user code
        for block in blocks:
            exec(compile(block, "reliability.md", "exec"), namespace)  # noqa: S102
    assert namespace["extra"]["note"] == "any JSON values"
