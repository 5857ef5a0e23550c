"""Hypothesis strategies for contrastive-loss inputs: embedding batches, scales, biases.

Embeddings are float32 numpy arrays of shape `(batch, dim)`. Batches are drawn in a few shapes
only (batch in `min_batch..max_batch`, a fixed `dim`), so a jitted loss compiles once per batch
size rather than once per example. Hypothesis picks the structure as well as the values:

- `independent`: unrelated image and text rows;
- `near_duplicate`: each text row is its image row plus noise of a drawn size (down to 1e-6);
- `aligned` / `antipodal`: `ztxt = zimg` / `ztxt = -zimg`;
- `repeated_rows`: every row of each side is the same vector (ties everywhere);
- raw values come from `hypothesis.extra.numpy.arrays`, whose fill behaviour also yields many
  equal entries and exact zeros.

Rows too close to zero to normalise are replaced by a basis vector, so "unit-norm" holds exactly
up to float rounding.
"""

import math

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

__all__ = [
    "MODES",
    "batch_sizes",
    "biases",
    "embedding_pairs",
    "extreme_biases",
    "extreme_scales",
    "row_norms",
    "scales",
    "unit_rows",
]

MODES = ("independent", "near_duplicate", "aligned", "antipodal", "repeated_rows")


def batch_sizes(min_batch: int = 1, max_batch: int = 8, multiple_of: int = 1) -> st.SearchStrategy[int]:
    """Batch sizes in `[min_batch, max_batch]` that are multiples of `multiple_of` (e.g. devices)."""
    lo = max(1, math.ceil(min_batch / multiple_of))
    hi = max_batch // multiple_of
    if hi < lo:
        raise ValueError(
            f"batch_sizes: no multiple of {multiple_of} in [{min_batch}, {max_batch}]: raise max_batch"
        )
    return st.integers(lo, hi).map(lambda k: k * multiple_of)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Normalises rows to unit L2 norm in float32; near-zero rows become basis vectors."""
    x = np.asarray(x, np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    basis = np.eye(x.shape[-1])[np.arange(x.shape[0]) % x.shape[-1]]
    out = np.where(norms > 1e-6, x / np.maximum(norms, 1e-300), basis)
    return (out / np.linalg.norm(out, axis=-1, keepdims=True)).astype(np.float32)


def _raw(batch: int, dim: int) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(
        np.float32,
        (batch, dim),
        elements=st.floats(-1.0, 1.0, width=32, allow_subnormal=False),
    )


@st.composite
def embedding_pairs(
    draw,
    *,
    min_batch: int = 1,
    max_batch: int = 8,
    dim: int = 8,
    multiple_of: int = 1,
    modes: tuple = MODES,
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs `(zimg, ztxt)` of unit-norm float32 batches of the same shape `(batch, dim)`."""
    batch = draw(batch_sizes(min_batch, max_batch, multiple_of))
    mode = draw(st.sampled_from(modes))
    zimg = unit_rows(draw(_raw(batch, dim)))
    if mode == "independent":
        ztxt = unit_rows(draw(_raw(batch, dim)))
    elif mode == "near_duplicate":
        noise = draw(st.sampled_from([1e-6, 1e-4, 1e-2, 0.3]))
        ztxt = unit_rows(zimg + noise * draw(_raw(batch, dim)))
    elif mode == "aligned":
        ztxt = zimg.copy()
    elif mode == "antipodal":
        ztxt = -zimg
    elif mode == "repeated_rows":
        zimg = np.repeat(zimg[:1], batch, axis=0)
        ztxt = np.repeat(unit_rows(draw(_raw(1, dim))), batch, axis=0)
    else:
        raise ValueError(f"embedding_pairs: unknown mode {mode!r}: use one of {MODES}")
    return zimg, ztxt


def row_norms(batch: int) -> st.SearchStrategy[np.ndarray]:
    """Positive per-row multipliers from 1e-3 to 1e3, to test invariance to input norm."""
    exps = hnp.arrays(np.float32, (batch, 1), elements=st.floats(-3.0, 3.0, width=32))
    return exps.map(lambda e: np.power(np.float32(10.0), e).astype(np.float32))


def scales(low: float = 0.1, high: float = 100.0) -> st.SearchStrategy[float]:
    """Ordinary logit multipliers: CLIP's 1/0.07 and its clamp 100, SigLIP's 10 in range."""
    return st.one_of(st.sampled_from([1.0, 10.0, 1 / 0.07, 100.0]), st.floats(low, high))


def biases(low: float = -20.0, high: float = 20.0) -> st.SearchStrategy[float]:
    """Ordinary sigmoid-loss biases, SigLIP's init -10 among them."""
    return st.one_of(st.sampled_from([0.0, -10.0]), st.floats(low, high))


def extreme_scales() -> st.SearchStrategy[float]:
    """Scales from 0 to 1e5: where naive exp/log implementations overflow or lose all precision."""
    return st.one_of(
        st.sampled_from([0.0, 1e-6, 1e3, 1e4, 1e5]),
        st.floats(0.0, 1e5, allow_subnormal=False),
    )


def extreme_biases() -> st.SearchStrategy[float]:
    """Biases from -1e5 to 1e5."""
    return st.one_of(
        st.sampled_from([-1e5, -1e3, 0.0, 1e3, 1e5]),
        st.floats(-1e5, 1e5, allow_subnormal=False),
    )
