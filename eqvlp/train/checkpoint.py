"""Sharded, atomic, verified checkpoints through tensorstore (zarr v3), one array per pytree leaf.

- Each process writes only the shards it owns (replica 0 of each), into chunks the size of
  one shard, so processes never write the same chunk.
- Restoring reads, for every device of the TARGET sharding, exactly its slice: a checkpoint
  saved on a 4 x 2 mesh restores onto 8 x 1, 2 x 4 or one device.
- Atomic: a save goes to `step_N.tmp/`; only when every process has finished does process 0
  write `COMMIT` and rename the directory to `step_N/`. A save killed at any point leaves the
  previous checkpoint as the latest loadable one; leftover `.tmp` directories are ignored.
- Verified: every chunk carries a crc32c checksum (the zarr v3 codec), `COMMIT` the checksum of
  `metadata.json`; a restore refuses missing chunks (never tensorstore's fill value), flipped
  bytes and edited dtypes or shapes (`CheckpointError`), and `restore` without a `step` falls
  back to the newest intact checkpoint with a warning naming what was damaged.
- Finite: `save` refuses parameters or optimizer state holding NaN or Inf.

A checkpoint holds any pytree of arrays (model, optimizer state, RNG key data) plus a JSON
dict of plain values (step, data position). Example (one device, no shardings needed):

    state = {"model": eqx.filter(model, eqx.is_array), "opt_state": opt_state}
    checkpoint.save("ckpt", 100, state, {"step": 100})
    state, extra = checkpoint.restore("ckpt", state)   # the latest intact checkpoint
"""

import json
import operator
import os
import re
import shutil
import warnings
import zlib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tensorstore as ts
from jaxtyping import PyTree

from eqvlp.sharding import path_name
from eqvlp.train import processes

MAX_STEP = 10**8 - 1  # step directories are named with 8 digits
FORMAT = 2  # 2: crc32c chunks, checksummed metadata, every chunk stored
_STEP_DIR = re.compile(r"^step_(\d{8})$")


class CheckpointError(ValueError):
    """A committed checkpoint that cannot be read back as it was written (damaged files)."""


class NonFiniteError(ValueError):
    """`save` was given parameters or optimizer state holding NaN or Inf."""


def check_step(step: Any) -> int:
    """`step` as an int in [0, 10^8) (a checkpoint directory is `step_` + 8 digits)."""
    try:
        step = operator.index(step)
    except TypeError:
        raise TypeError(f"checkpoint step must be an integer, got {step!r}") from None
    if not 0 <= step <= MAX_STEP:
        raise ValueError(f"checkpoint step {step} is out of range: steps are 0 ... {MAX_STEP} "
                         "(directories are named step_ + 8 digits)")
    return step


def step_path(directory: str | os.PathLike, step: int | np.integer) -> Path:
    """The directory of checkpoint `step`."""
    return Path(directory) / f"step_{check_step(step):08d}"


def _leaves(tree: PyTree) -> list[tuple[str, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    names = [path_name(p) or "root" for p, _ in flat]
    if len(set(names)) != len(names):
        raise ValueError("checkpoint leaves need distinct names: wrap lists in dicts")
    return [(n, leaf) for n, (_, leaf) in zip(names, flat)]


def _create_spec(path: Path, shape, dtype, chunks) -> dict:
    return {
        "driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}, "create": True,
        "metadata": {
            "shape": list(shape),
            "data_type": np.dtype(dtype).name,
            "chunk_grid": {"name": "regular",
                           "configuration": {"chunk_shape": [max(1, c) for c in chunks]}},
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                       {"name": "crc32c"}],
        },
    }


def _open_spec(path: Path, dtype: str | None = None, complete: bool = True) -> dict:
    # complete: a missing chunk is an error, never the fill value (format 1 skipped zero chunks)
    spec: dict = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)},
                  "fill_missing_data_reads": not complete,
                  "store_data_equal_to_fill_value": True}  # when writing: all chunks stored
    if dtype is not None:
        spec["dtype"] = dtype
    return spec


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


@jax.jit
def _all_finite(leaves: list) -> jax.Array:
    return jnp.stack([jnp.isfinite(x).all() for x in leaves])


def nonfinite_leaves(tree: PyTree) -> list[str]:
    """Names of the floating-point leaves of `tree` that hold a NaN or Inf."""
    floats = [(n, x) for n, x in _leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    if not floats:
        return []
    finite = np.asarray(_all_finite([jnp.asarray(x) for _, x in floats]))
    return [name for (name, _), ok in zip(floats, finite) if not ok]


def save(directory: str | os.PathLike, step: int | np.integer, tree: PyTree, extra: dict | None = None,
         *, local: dict | None = None) -> Path:
    """Writes `tree` (sharded `jax.Array`s) and `extra` (JSON values) as checkpoint `step`.

    Every process must call it with the same `tree` and `extra`; `local` is this process's
    own JSON state (e.g. its data iterator position), read back by `read_local`. Returns the
    committed directory. Raises `NonFiniteError` (nothing written) if a floating-point leaf
    holds NaN or Inf, and `OSError` if the processes do not share `directory`.
    """
    directory, step = Path(directory), check_step(step)
    final = step_path(directory, step)
    tmp = final.with_name(final.name + ".tmp")
    leaves = [(n, x if isinstance(x, jax.Array) else jnp.asarray(x)) for n, x in _leaves(tree)]
    bad = nonfinite_leaves(dict(leaves))
    if bad:
        latest = latest_step(directory)
        raise NonFiniteError(
            f"not saving checkpoint {step}: {len(bad)} array(s) hold NaN or Inf ("
            + ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "") + "); "
            + (f"step {latest} stays the latest checkpoint" if latest is not None else
               "no checkpoint was saved") + ". The run diverged: lower optim.lr, clip gradients "
            "(optim.clip_norm) or keep optim.skip_nonfinite on")
    if jax.process_index() == 0:
        if tmp.exists():
            shutil.rmtree(tmp)  # a save that was killed earlier
        (tmp / "arrays").mkdir(parents=True)
    processes.check_shared(tmp, "checkpoint directory")
    for name, leaf in leaves:
        if jax.process_index() == 0:
            chunks = leaf.sharding.shard_shape(leaf.shape)
            ts.open(_create_spec(tmp / "arrays" / name, leaf.shape, leaf.dtype, chunks)).result()
    processes.sync(f"eqvlp-ckpt-created-{step}", f"checkpoint {step}: arrays created")
    writes = []
    for name, leaf in leaves:
        store = ts.open(_open_spec(tmp / "arrays" / name)).result()
        for shard in leaf.addressable_shards:
            if shard.replica_id == 0:
                writes.append(store[shard.index].write(np.asarray(shard.data)))
    for w in writes:
        w.result()
    if local is not None:
        _write_synced(tmp / f"local_{jax.process_index():05d}.json", json.dumps(local))
    processes.sync(f"eqvlp-ckpt-written-{step}", f"checkpoint {step}: arrays written")
    if jax.process_index() == 0:
        meta = {"format": FORMAT, "step": step, "extra": extra or {},
                "leaves": [{"name": n, "shape": list(x.shape), "dtype": np.dtype(x.dtype).name}
                           for n, x in leaves]}
        text = json.dumps(meta, indent=1)
        _write_synced(tmp / "metadata.json", text)
        _write_synced(tmp / "COMMIT", json.dumps(
            {"step": step, "metadata_crc32": zlib.crc32(text.encode())}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)  # the commit point: atomic on one filesystem
    processes.sync(f"eqvlp-ckpt-committed-{step}", f"checkpoint {step}: commit")
    return final


def committed_steps(directory: str | os.PathLike) -> list[int]:
    """Steps of the committed checkpoints in `directory`, oldest first (`COMMIT` present;
    `restore` still verifies their contents)."""
    directory = Path(directory)
    if not directory.exists():
        return []
    steps = []
    for entry in directory.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and (entry / "COMMIT").exists():
            steps.append(int(match.group(1)))
    return sorted(steps)


def latest_step(directory: str | os.PathLike) -> int | None:
    """The newest committed step in `directory`, or None when there is none.

    Committed is not verified: `restore` checks every array and falls back from a damaged one.
    """
    steps = committed_steps(directory)
    return steps[-1] if steps else None


def read_metadata(directory: str | os.PathLike, step: int) -> dict:
    """Checkpoint `step`'s `metadata.json` (`step`, `extra`, `leaves`), checked against the
    checksum in `COMMIT`; `CheckpointError` if either file is damaged."""
    root = step_path(directory, step)
    try:
        commit = json.loads((root / "COMMIT").read_text())
        text = (root / "metadata.json").read_text()
    except FileNotFoundError as error:
        raise CheckpointError(f"{root} is incomplete: {Path(error.filename).name} is missing") \
            from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{root}/COMMIT is damaged ({error})") from None
    if isinstance(commit, dict) and zlib.crc32(text.encode()) != commit.get("metadata_crc32"):
        raise CheckpointError(f"{root}/metadata.json is damaged (checksum mismatch)")
    try:
        meta = json.loads(text)
        leaves = {leaf["name"]: leaf for leaf in meta["leaves"]}
        if meta["step"] != step or not isinstance(meta.get("extra", {}), dict):
            raise ValueError("wrong step or extra")
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{root}/metadata.json is damaged ({error})") from None
    return dict(meta, leaves=list(leaves.values()))


def read_local(directory: str | os.PathLike, step: int) -> dict | None:
    """This process's `local` state saved with checkpoint `step` (None if it saved none)."""
    path = step_path(directory, step) / f"local_{jax.process_index():05d}.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is damaged ({error})") from None


def prune(directory: str | os.PathLike, keep: int) -> None:
    """Deletes all but the newest `keep` committed checkpoints (process 0 only)."""
    if jax.process_index() != 0 or keep < 1:
        return
    for step in committed_steps(directory)[:-keep]:
        shutil.rmtree(step_path(directory, step), ignore_errors=True)


def set_aside(directory: str | os.PathLike, step: int) -> Path | None:
    """Renames damaged checkpoint `step` to `step_N.damaged` (process 0), so that it is no
    longer committed but kept for inspection. Returns the new path."""
    root = step_path(directory, step)
    target = root.with_name(root.name + ".damaged")
    if jax.process_index() == 0 and root.exists():
        if target.exists():
            shutil.rmtree(target)
        os.replace(root, target)
    return target


def _open_verified(root: Path, saved: dict, checksummed: bool):
    """The tensorstore of one saved leaf, after checking its `zarr.json` against metadata."""
    path = root / "arrays" / saved["name"]
    try:
        zarr = json.loads((path / "zarr.json").read_text())
        kinds = [codec.get("name") for codec in zarr["codecs"]]
        found = (zarr["data_type"], list(zarr["shape"]))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: zarr.json is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError,
            AttributeError) as error:
        raise CheckpointError(f"{path}/zarr.json is damaged ({error})") from None
    if found != (saved["dtype"], list(saved["shape"])):
        raise CheckpointError(f"{path}/zarr.json says {found[0]} {tuple(found[1])}, the "
                              f"checkpoint's metadata {saved['dtype']} {tuple(saved['shape'])}")
    if checksummed and "crc32c" not in kinds:
        raise CheckpointError(f"{path}/zarr.json lost its crc32c codec (the chunks' checksums)")
    try:
        return ts.open(_open_spec(path, saved["dtype"], complete=checksummed)).result()
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from None


def _read(store, index, where: str):
    try:
        return store[index].read().result()
    except ValueError as error:  # tensorstore: NOT_FOUND (a missing chunk), DATA_LOSS (crc)
        raise CheckpointError(f"{where}: {error}") from None


def _default_sharding(leaf):
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, jax.sharding.Sharding):
        return sharding
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def _restore_step(directory: Path, step: int, target: PyTree, shardings: PyTree | None):
    root = step_path(directory, step)
    meta = read_metadata(directory, step)
    saved = {leaf["name"]: leaf for leaf in meta["leaves"]}
    leaves, treedef = jax.tree.flatten(target)
    named = _leaves(target)
    if shardings is None:
        placements = [_default_sharding(leaf) for leaf in leaves]
    else:
        placements = jax.tree.leaves(shardings)
        if len(placements) != len(leaves):
            raise ValueError(f"shardings has {len(placements)} leaves, target {len(leaves)}: "
                             "give one Sharding per array (or shardings=None)")
    for name, leaf in named:
        if name not in saved:
            raise ValueError(f"checkpoint {root} has no array {name!r}: is it the same model?")
        if tuple(saved[name]["shape"]) != tuple(leaf.shape):
            raise ValueError(f"{name}: checkpoint shape {tuple(saved[name]['shape'])} != "
                             f"target {tuple(leaf.shape)}")
        if saved[name]["dtype"] != np.dtype(leaf.dtype).name:
            raise ValueError(f"{name}: checkpoint dtype {saved[name]['dtype']} != target "
                             f"{np.dtype(leaf.dtype).name}: cast the target (or the restored "
                             "tree) explicitly")
    out, problem = [], None
    try:
        for (name, leaf), sharding in zip(named, placements, strict=True):
            store = _open_verified(root, saved[name], meta.get("format", 1) >= 2)
            where = f"{root}/arrays/{name}"
            out.append(jax.make_array_from_callback(
                tuple(leaf.shape), sharding,
                lambda index, s=store, w=where: _read(s, index, w)))
    except CheckpointError as error:
        problem = str(error)
    damaged = processes.agree(f"ckpt-{step}-restore", problem)
    if damaged:
        raise CheckpointError(problem or f"{root} is damaged: process(es) {sorted(damaged)} "
                              f"failed to read it: {next(iter(damaged.values()))}")
    return jax.tree.unflatten(treedef, out), meta["extra"]


def restore(
    directory: str | os.PathLike,
    target: PyTree,
    shardings: PyTree | None = None,
    *,
    step: int | np.integer | None = None,
) -> tuple[PyTree, dict]:
    """Reads checkpoint `step` (default: the newest intact one) into `target`'s structure.

    **Arguments:**

    - `target`: a pytree with the checkpoint's structure, shapes and dtypes (arrays or
      `jax.eval_shape` output); a subtree of the saved one (e.g. only `{"model": ...}`) works.
    - `shardings`: a matching pytree of `Sharding`s to place each leaf with; any mesh works.
      None: each target array's own sharding, else the first local device.
    - `step`: a given step is read or fails (`CheckpointError` if damaged); None tries the
      committed steps newest first, warns about each damaged one and takes the first intact.

    **Returns:** `(tree, extra)`.
    """
    directory = Path(directory)
    step = None if step is None else check_step(step)
    steps = [step] if step is not None else committed_steps(directory)[::-1]
    if not steps:
        raise FileNotFoundError(f"no committed checkpoint in {directory}: save one first")
    if step is not None and not (step_path(directory, step) / "COMMIT").exists():
        raise FileNotFoundError(f"{step_path(directory, step)} is not a committed checkpoint "
                                "(no COMMIT file)")
    problems = []
    for candidate in steps:
        try:
            return _restore_step(directory, candidate, target, shardings)
        except CheckpointError as error:
            if step is not None:
                raise
            problems.append(str(error))
            warnings.warn(f"checkpoint step {candidate} is damaged, trying an older one: {error}",
                          stacklevel=2)
    raise CheckpointError(f"no intact checkpoint in {directory}: " + "; ".join(problems))
