"""Feature extraction: run an encoder over a whole dataset in fixed-size batches, compiled once.

Every evaluation starts the same way: push N examples through `encode_image` or `encode_text`
and collect `(N, dim)` features on the host. `extract` does that loop once for all of them:

- **One compilation.** Batches always have `batch_size` rows: an iterable of ragged batches is
  re-chunked, and the last batch is padded by repeating its last row (the padding's outputs are
  dropped). The step is one module-level `eqx.filter_jit`, so a second call with a model of the
  same structure (the next evaluation during training) reuses the compiled program.
- **Arrays are traced, not baked in.** Pass `fn` as an `eqx.Module` or `eqx.Partial` (as
  `embed_images` / `embed_texts` do) and its arrays are arguments of the compiled step; a plain
  closure over a model would compile the weights in as constants.
- **Sharded batches.** With a `mesh`, each batch is split over the data-parallel axes
  (`eqvlp.sharding.batch_sharding`) and the step runs under `jax.set_mesh`. The model's arrays
  should be uncommitted, replicated or sharded on the same mesh. Single-process only: the
  features are gathered with `np.asarray`.
- **Overlap.** Batch `i + 1` is dispatched before batch `i`'s features are copied to the host.
- **Cache.** `cache="feats.npy"` loads the file if it exists, else computes and writes it
  atomically (a temporary file, then a rename), so an interrupted run never leaves half a file.
"""

import contextlib
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Shaped
from tqdm.auto import tqdm

from eqvlp.losses.validation import normalize as l2_normalize
from eqvlp.sharding import BATCH_AXES, batch_sharding

__all__ = ["CLIP_MEAN_STD", "SIGLIP_MEAN_STD", "embed_images", "embed_texts", "extract"]

# Per-channel (mean, std) of pixels in [0, 1]: OpenAI CLIP's, and (0.5, 0.5), which maps pixels
# to [-1, 1] (big_vision's `value_range(-1, 1)`: SigLIP, CLIPPO, eqvlp's generated data).
CLIP_MEAN_STD = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
SIGLIP_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

Inputs = Shaped[np.ndarray, "n ..."] | Iterable[np.ndarray]
MeanStd = tuple[float | Sequence[float], float | Sequence[float]]


def extract(
    fn: Callable,
    inputs: Inputs,
    *,
    batch_size: int = 256,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = False,
    desc: str | None = None,
    cache: str | Path | None = None,
) -> Float[np.ndarray, "n dim"]:
    """Runs `fn` over `inputs` in fixed-size batches and returns the features on the host.

    **Arguments:**

    - `fn`: `batch -> (batch, dim)` features; jitted once (an `eqx.Module` / `eqx.Partial`
      keeps its arrays as traced arguments).
    - `inputs`: a NumPy array `(N, ...)`, or an iterable of NumPy batches of any sizes with the
      same trailing shape and dtype (a generator is consumed once).
    - `batch_size`: rows per compiled step; with a `mesh` it must divide over the
      data-parallel devices.
    - `mesh`: split each batch over the mesh's ("data", "fsdp") axes.
    - `progress`, `desc`: show a tqdm bar (counting examples) with this label.
    - `cache`: a `.npy` path: loaded if present (checked against N for array inputs), else
      written after the computation.

    **Returns:** float32 features `(N, dim)`, in input order.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"extract: batch_size must be a positive int, got {batch_size!r}: try 256")
    if mesh is not None:
        devices = _data_parallel_size(mesh)
        if batch_size % devices:
            raise ValueError(
                f"extract: batch_size={batch_size} does not split over the mesh's {devices} "
                f"data-parallel devices ({' x '.join(BATCH_AXES)}): use a multiple of {devices}, "
                f"e.g. {devices * max(1, round(batch_size / devices))}"
            )
    if isinstance(inputs, jax.Array):
        inputs = np.asarray(inputs)
    if isinstance(inputs, np.ndarray) and inputs.ndim == 0:
        raise ValueError("extract: inputs must be an array (N, ...) or an iterable of batches, got a scalar")
    known = len(inputs) if isinstance(inputs, np.ndarray) else None
    if cache is not None and Path(cache).exists():
        return _load_cache(Path(cache), known)
    features = _run(fn, inputs, batch_size, mesh, progress, desc, known)
    if cache is not None:
        _save_atomically(Path(cache), features)
    return features


def embed_images(
    model,
    images: Inputs,
    *,
    normalize: MeanStd | None = None,
    normalized: bool = True,
    batch_size: int = 256,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = False,
    desc: str | None = "images",
    cache: str | Path | None = None,
) -> Float[np.ndarray, "n dim"]:
    """`model.encode_image` over a dataset: `(N, dim)` float32 features.

    Pixel scaling is explicit, never guessed: uint8 images need `normalize=(mean, std)` (per
    channel, for pixels in [0, 1]) and are mapped to `(x / 255 - mean) / std` on the device;
    float images are passed to the model as they are.

    **Arguments:**

    - `model`: anything with `encode_image(images) -> (batch, dim)`.
    - `images`: `(N, H, W, 3)` uint8 or float, or an iterable of such batches.
    - `normalize`: `(mean, std)`, each a float or 3 floats, e.g. `CLIP_MEAN_STD` or
      `SIGLIP_MEAN_STD` (to [-1, 1]); required for uint8 images, refused for float images.
    - `normalized`: L2-normalise the features (default); `False` returns the raw ones.
    - the rest as in `extract`.

    **Returns:** float32 features `(N, dim)`.
    """
    mean_std = None if normalize is None else _mean_std(normalize)
    fn = eqx.Partial(_encode_images, model, mean_std, normalized)
    return extract(fn, images, batch_size=batch_size, mesh=mesh, progress=progress, desc=desc,
                   cache=cache)


def embed_texts(
    model,
    texts: Inputs,
    *,
    normalized: bool = True,
    batch_size: int = 256,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = False,
    desc: str | None = "texts",
    cache: str | Path | None = None,
) -> Float[np.ndarray, "n dim"]:
    """`model.encode_text` over a dataset: `(N, dim)` float32 features.

    The caller prepares the texts: token ids `(N, length)` from `eqvlp.tokenizer.tokenize`, or
    rendered text images `(N, H, W, 3)` from CLIPPO's `model.render` (uint8, which CLIPPO maps
    to [-1, 1] itself). Strings are refused: `eqvlp.eval.text_encoder` binds the preparation.

    **Arguments:**

    - `model`: anything with `encode_text(batch) -> (batch, dim)`.
    - `texts`: an array `(N, ...)` or an iterable of batches.
    - `normalized`: L2-normalise the features (default); `False` returns the raw ones.
    - the rest as in `extract`.

    **Returns:** float32 features `(N, dim)`.
    """
    fn = eqx.Partial(_encode_texts, model, normalized)
    return extract(fn, texts, batch_size=batch_size, mesh=mesh, progress=progress, desc=desc,
                   cache=cache)


def _encode_images(model, mean_std, normalized: bool, images: Shaped[Array, "batch h w c"]):
    if jnp.issubdtype(images.dtype, jnp.floating):
        if mean_std is not None:
            raise ValueError(
                f"embed_images: normalize= applies to uint8 images, but these are {images.dtype} "
                "and are passed to the model as they are: drop normalize=, or pass uint8 images"
            )
    elif images.dtype == jnp.uint8:
        if mean_std is None:
            raise ValueError(
                "embed_images: uint8 images need normalize=(mean, std) to become the model's "
                "float input: e.g. eqvlp.eval.CLIP_MEAN_STD (OpenAI CLIP) or "
                "eqvlp.eval.SIGLIP_MEAN_STD ([-1, 1]: SigLIP, CLIPPO)"
            )
        mean, std = (jnp.asarray(v, jnp.float32) for v in mean_std)
        images = (images.astype(jnp.float32) / 255.0 - mean) / std
    else:
        raise ValueError(
            f"embed_images expects uint8 or float images, got {images.dtype}: convert them"
        )
    return _finish(model.encode_image(images), normalized)


def _encode_texts(model, normalized: bool, texts: Shaped[Array, "batch ..."]):
    return _finish(model.encode_text(texts), normalized)


def _finish(z: Float[Array, "batch dim"], normalized: bool) -> Float[Array, "batch dim"]:
    z = z.astype(jnp.float32)
    return l2_normalize(z) if normalized else z


def _mean_std(normalize) -> tuple[tuple[float, ...], tuple[float, ...]]:
    try:
        mean, std = normalize
        mean, std = (tuple(float(x) for x in np.broadcast_to(np.asarray(v, np.float64), (3,)))
                     for v in (mean, std))
    except (TypeError, ValueError):
        raise ValueError(
            f"embed_images: normalize must be (mean, std), each a float or 3 floats, got "
            f"{normalize!r}: e.g. eqvlp.eval.CLIP_MEAN_STD"
        ) from None
    if min(std) <= 0:
        raise ValueError(f"embed_images: normalize std must be positive, got {std}")
    return mean, std


# One compiled step for every call: `fn`'s arrays are traced, the rest of it is static.
@eqx.filter_jit
def _apply(fn: Callable, batch):
    return fn(batch)


def _run(fn, inputs, batch_size, mesh, progress, desc, known) -> np.ndarray:
    outputs, pending = [], None
    bar = tqdm(total=known, unit="ex", desc=desc or "extract", disable=not progress)
    context = contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)
    with bar, context:
        for batch, valid in _fixed_batches(_parts(inputs, batch_size), batch_size):
            if mesh is not None:  # every process holds the whole batch: each places its rows
                sharding = batch_sharding(mesh, batch.ndim)
                batch = jax.make_array_from_callback(batch.shape, sharding,
                                                     lambda index, b=batch: b[index])
            out = _apply(fn, batch)
            if not (isinstance(out, jax.Array) and out.ndim == 2 and out.shape[0] == batch_size):
                got = getattr(out, "shape", type(out).__name__)
                raise ValueError(
                    f"extract: fn must return (batch, dim) features, got {got} for a batch of "
                    f"shape {batch.shape}: return one vector per example"
                )
            if pending is not None:  # fetch the previous batch while this one runs
                outputs.append(_fetch(*pending))
                bar.update(pending[1])
            pending = (out, valid)
        if pending is None:
            raise ValueError("extract: inputs hold no examples: pass at least one")
        outputs.append(_fetch(*pending))
        bar.update(pending[1])
    return np.concatenate(outputs)


def _fetch(out: jax.Array, valid: int) -> np.ndarray:
    if not out.is_fully_addressable:  # a multi-process mesh: gather the rows of every process
        from jax.experimental import multihost_utils

        out = multihost_utils.process_allgather(out, tiled=True)
    return np.asarray(out, dtype=np.float32)[:valid]


def _parts(inputs, batch_size: int) -> Iterator[np.ndarray]:
    """The input as NumPy pieces with one trailing shape and dtype (clear errors otherwise)."""
    if isinstance(inputs, np.ndarray):
        for start in range(0, len(inputs), batch_size):
            yield inputs[start:start + batch_size]
        return
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Iterable):
        raise ValueError(
            f"extract: inputs must be a NumPy array (N, ...) or an iterable of NumPy batches, "
            f"got {type(inputs).__name__}"
        )
    first = None
    for i, part in enumerate(inputs):
        if isinstance(part, jax.Array):
            part = np.asarray(part)
        if not isinstance(part, np.ndarray) or part.ndim == 0:
            raise ValueError(
                f"extract: batch {i} is a {type(part).__name__}, not a NumPy array (batch, ...): "
                "yield arrays (tokenize or render text first, e.g. with eqvlp.eval.text_encoder)"
            )
        if first is None:
            first = part
        elif part.shape[1:] != first.shape[1:] or part.dtype != first.dtype:
            raise ValueError(
                f"extract: batch {i} holds {part.dtype} examples of shape {part.shape[1:]}, but "
                f"batch 0 held {first.dtype} of shape {first.shape[1:]}: every batch must hold "
                "the same kind of example"
            )
        yield part


def _fixed_batches(parts: Iterable[np.ndarray], batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """Re-chunks pieces into `(batch, number of real rows)`; the last batch repeats its last row."""
    buffer, held = [], 0
    for part in parts:
        if not len(part):
            continue
        buffer.append(part)
        held += len(part)
        while held >= batch_size:
            joined = buffer[0] if len(buffer) == 1 else np.concatenate(buffer)
            yield joined[:batch_size], batch_size
            rest = joined[batch_size:]
            buffer, held = ([rest] if len(rest) else []), len(rest)
    if held:
        joined = buffer[0] if len(buffer) == 1 else np.concatenate(buffer)
        padding = np.repeat(joined[-1:], batch_size - held, axis=0)
        yield np.concatenate([joined, padding]), held


def _data_parallel_size(mesh: jax.sharding.Mesh) -> int:
    missing = [axis for axis in BATCH_AXES if axis not in mesh.axis_names]
    if missing:
        raise ValueError(
            f"extract: the mesh has axes {mesh.axis_names}, without {missing}: build it with "
            "eqvlp.sharding.make_mesh"
        )
    return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def _load_cache(path: Path, known: int | None) -> np.ndarray:
    features = np.load(path)
    if features.ndim != 2 or (known is not None and features.shape[0] != known):
        expected = f"({known}, dim)" if known is not None else "(N, dim)"
        raise ValueError(
            f"extract: cache {path} holds features of shape {features.shape}, but {expected} "
            "are expected for these inputs: delete the file or pass another cache path"
        )
    return features.astype(np.float32, copy=False)


def _save_atomically(path: Path, features: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, features)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
