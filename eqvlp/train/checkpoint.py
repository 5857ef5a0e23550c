"""Sharded, atomic checkpoints through tensorstore (zarr v3), one array per pytree leaf.

- Each process writes only the shards it owns (replica 0 of each), into chunks the size of
  one shard, so processes never write the same chunk.
- Restoring reads, for every device of the TARGET sharding, exactly its slice: a checkpoint
  saved on a 4 x 2 mesh restores onto 8 x 1, 2 x 4 or one device.
- Atomic: a save goes to `step_N.tmp/`; only when every process has finished does process 0
  write `COMMIT` and rename the directory to `step_N/`. A save killed at any point leaves the
  previous checkpoint as the latest loadable one; leftover `.tmp` directories are ignored.

A checkpoint holds any pytree of arrays (model, optimizer state, RNG key data) plus a JSON
dict of plain values (step, data position).
"""

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import tensorstore as ts
from jax.experimental import multihost_utils
from jaxtyping import PyTree

from eqvlp.sharding import path_name

_STEP_DIR = re.compile(r"^step_(\d{8})$")


def _leaves(tree: PyTree) -> list[tuple[str, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    names = [path_name(p) or "root" for p, _ in flat]
    if len(set(names)) != len(names):
        raise ValueError("checkpoint leaves need distinct names: wrap lists in dicts")
    return [(n, leaf) for n, (_, leaf) in zip(names, flat)]


def _spec(path: Path, shape=None, dtype=None, chunks=None) -> dict:
    spec: dict = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}
    if shape is not None:
        spec["metadata"] = {
            "shape": list(shape),
            "data_type": np.dtype(dtype).name,
            "chunk_grid": {"name": "regular",
                           "configuration": {"chunk_shape": [max(1, c) for c in chunks]}},
        }
        spec["create"] = True
    return spec


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def save(directory: str | os.PathLike, step: int, tree: PyTree, extra: dict | None = None,
         *, local: dict | None = None) -> Path:
    """Writes `tree` (sharded `jax.Array`s) and `extra` (JSON values) as checkpoint `step`.

    Every process must call it with the same `tree` and `extra`; `local` is this process's
    own JSON state (e.g. its data iterator position), read back by `read_local`. Returns the
    committed directory.
    """
    directory = Path(directory)
    final, tmp = directory / f"step_{step:08d}", directory / f"step_{step:08d}.tmp"
    leaves = _leaves(tree)
    if jax.process_index() == 0:
        if tmp.exists():
            shutil.rmtree(tmp)  # a save that was killed earlier
        (tmp / "arrays").mkdir(parents=True)
    _sync(f"eqvlp-ckpt-mkdir-{step}")
    stores = []
    for name, leaf in leaves:
        leaf = jax.numpy.asarray(leaf) if not isinstance(leaf, jax.Array) else leaf
        chunks = leaf.sharding.shard_shape(leaf.shape)
        if jax.process_index() == 0:
            ts.open(_spec(tmp / "arrays" / name, leaf.shape, leaf.dtype, chunks)).result()
        stores.append((name, leaf))
    _sync(f"eqvlp-ckpt-created-{step}")
    writes = []
    for name, leaf in stores:
        store = ts.open(_spec(tmp / "arrays" / name)).result()
        for shard in leaf.addressable_shards:
            if shard.replica_id == 0:
                writes.append(store[shard.index].write(np.asarray(shard.data)))
    for w in writes:
        w.result()
    if local is not None:
        (tmp / f"local_{jax.process_index():05d}.json").write_text(json.dumps(local))
    _sync(f"eqvlp-ckpt-written-{step}")
    if jax.process_index() == 0:
        meta = {"step": step, "extra": extra or {},
                "leaves": [{"name": n, "shape": list(x.shape), "dtype": np.dtype(x.dtype).name}
                           for n, x in leaves]}
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=1))
        (tmp / "COMMIT").write_text(str(step))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)  # the commit point: atomic on one filesystem
    _sync(f"eqvlp-ckpt-committed-{step}")
    return final


def committed_steps(directory: str | os.PathLike) -> list[int]:
    """Steps of the complete checkpoints in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.exists():
        return []
    steps = []
    for entry in directory.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and (entry / "COMMIT").exists():
            steps.append(int(match.group(1)))
    return sorted(steps)


def read_local(directory: str | os.PathLike, step: int) -> dict | None:
    """This process's `local` state saved with checkpoint `step` (None if it saved none)."""
    path = Path(directory) / f"step_{step:08d}" / f"local_{jax.process_index():05d}.json"
    return json.loads(path.read_text()) if path.exists() else None


def prune(directory: str | os.PathLike, keep: int) -> None:
    """Deletes all but the newest `keep` committed checkpoints (process 0 only)."""
    if jax.process_index() != 0 or keep < 1:
        return
    for step in committed_steps(directory)[:-keep]:
        shutil.rmtree(Path(directory) / f"step_{step:08d}", ignore_errors=True)


def latest_step(directory: str | os.PathLike) -> int | None:
    steps = committed_steps(directory)
    return steps[-1] if steps else None


def restore(
    directory: str | os.PathLike,
    target: PyTree,
    shardings: PyTree,
    *,
    step: int | None = None,
) -> tuple[PyTree, dict]:
    """Reads checkpoint `step` (default: the latest committed) into `target`'s structure.

    **Arguments:**

    - `target`: a pytree with the checkpoint's structure (arrays or `jax.eval_shape` output).
    - `shardings`: a matching pytree of `Sharding`s to place each leaf with; any mesh works.

    **Returns:** `(tree, extra)`.
    """
    directory = Path(directory)
    step = latest_step(directory) if step is None else step
    if step is None:
        raise FileNotFoundError(f"no committed checkpoint in {directory}: save one first")
    root = directory / f"step_{step:08d}"
    if not (root / "COMMIT").exists():
        raise FileNotFoundError(f"{root} is not a committed checkpoint (no COMMIT file)")
    meta = json.loads((root / "metadata.json").read_text())
    saved = {leaf["name"]: leaf for leaf in meta["leaves"]}
    leaves, treedef = jax.tree.flatten(target)
    names = [n for n, _ in _leaves(target)]
    out = []
    for name, leaf, sharding in zip(names, leaves, jax.tree.leaves(shardings), strict=True):
        if name not in saved:
            raise ValueError(f"checkpoint {root} has no array {name!r}: is it the same model?")
        if tuple(saved[name]["shape"]) != tuple(leaf.shape):
            raise ValueError(
                f"{name}: checkpoint shape {tuple(saved[name]['shape'])} != target {tuple(leaf.shape)}"
            )
        store = ts.open(_spec(root / "arrays" / name)).result()
        out.append(jax.make_array_from_callback(
            tuple(leaf.shape), sharding, lambda index, s=store: s[index].read().result()
        ))
    return jax.tree.unflatten(treedef, out), meta["extra"]
