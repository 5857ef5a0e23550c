"""Input checks shared by every loss, and the L2 normalisation the losses expect.

Two kinds of bad input, two mechanisms:

- **Shapes and dtypes** are known at trace time, so they are checked in Python and raise a
  `ValueError` that names the problem and the fix, before anything is compiled.
- **Values** (NaN or inf) are only known at run time, under `jit`, so they are checked with
  `equinox.error_if` on the loss value: a non-finite input raises an `EquinoxRuntimeError`
  (on CPU it surfaces as a `JaxRuntimeError` carrying the message) instead of returning a silent
  NaN. Setting the environment variable `EQX_ON_ERROR=nan` turns the error into a NaN loss, for
  hardware where host callbacks are unwelcome.

Zero-norm rows are not an error: `normalize` maps them to the zero vector with a finite gradient,
and every loss stays finite on them (a zero embedding scores 0 against everything: in `clip_loss`
its row costs log(B), in `sigmoid_loss` its logits are just the bias).
"""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Real

__all__ = ["check_finite", "check_pair", "check_scalar", "normalize"]


def normalize(z: Float[Array, "*batch dim"], eps: float = 1e-6) -> Float[Array, "*batch dim"]:
    """L2-normalises the last axis as `z / max(||z||, eps)` (PyTorch's `F.normalize`).

    Rows with norm >= eps come out with norm 1 exactly (up to rounding), so the result does not
    depend on the input's scale; the REFERENCE form `z / (||z|| + eps)` would be off by a factor
    `1 + eps / ||z||` for small rows. A zero row (a dead encoder output, padding) maps to the zero
    vector with gradient `I / eps`, never 0/0. The norm is taken in float32 whatever `z`'s dtype.

    **Arguments:**

    - `z`: embeddings, any leading shape.
    - `eps`: the smallest norm divided by.

    **Returns:** an array of the same shape and dtype.
    """
    sq = jnp.sum(jnp.square(z.astype(jnp.float32)), axis=-1, keepdims=True)
    inv = jax.lax.rsqrt(jnp.maximum(sq, jnp.float32(eps) ** 2))
    return (z.astype(jnp.float32) * inv).astype(z.dtype)


def check_pair(
    fn: str, zimg: Float[Array, "..."], ztxt: Float[Array, "..."], names: tuple[str, str] = ("zimg", "ztxt")
) -> None:
    """Static checks on a pair of embedding batches: 2-D, same batch size, same dim, same float dtype."""
    a, b = names
    for name, z in ((a, zimg), (b, ztxt)):
        if z.ndim != 2:
            raise ValueError(
                f"{fn}: {name} must have shape (batch, dim), got {tuple(z.shape)}: "
                "flatten extra axes or vmap over them"
            )
        if z.shape[0] == 0:
            raise ValueError(f"{fn}: {name} has an empty batch: pass at least one pair")
        if not jnp.issubdtype(z.dtype, jnp.floating):
            raise ValueError(f"{fn}: {name} must be floating point, got {z.dtype}: cast the embeddings")
    if zimg.shape[0] != ztxt.shape[0]:
        raise ValueError(
            f"{fn}: {a} and {b} must have the same batch size, got {zimg.shape[0]} and "
            f"{ztxt.shape[0]}: pass matching pairs"
        )
    if zimg.shape[1] != ztxt.shape[1]:
        raise ValueError(
            f"{fn}: {a} and {b} must have the same embedding dim, got {zimg.shape[1]} and "
            f"{ztxt.shape[1]}: project both towers to the same width"
        )
    if zimg.dtype != ztxt.dtype:
        raise ValueError(
            f"{fn}: {a} and {b} must have the same dtype, got {zimg.dtype} and {ztxt.dtype}: "
            "cast one of them"
        )


def check_scalar(fn: str, name: str, x: Real[ArrayLike, "..."]) -> Float[Array, ""]:
    """Static check that `x` is a scalar; returns it as a float32 array (losses compute in f32)."""
    shape = jnp.shape(x)
    if shape != ():
        raise ValueError(
            f"{fn}: {name} must be a scalar, got shape {shape}: pass e.g. `{name}.squeeze()` or "
            f"`{name}[0]`"
        )
    return jnp.asarray(x, dtype=jnp.float32)


def check_finite(
    fn: str, out: Float[Array, "*shape"], inputs: Sequence[tuple[str, ArrayLike]], *, axis_name=None
) -> Float[Array, "*shape"]:
    """Returns `out`, raising at run time if any named input holds NaN or inf.

    The error names the first bad input. Inside `shard_map` pass the data `axis_name`: the flag is
    all-reduced first, so every device agrees (and `error_if` needs a device-invariant predicate).
    """
    flags_arr = jnp.stack([_nonfinite(x) for _, x in inputs])
    if axis_name is not None:
        flags_arr = jax.lax.psum(flags_arr.astype(jnp.int32), axis_name) > 0
    messages = [
        f"{fn}: {name} contains NaN or inf: check the encoder outputs (a diverged step, an fp16 "
        "overflow, or a bad sample); set EQX_ON_ERROR=nan to get a NaN loss instead of this error"
        for name, _ in inputs
    ]
    # The check guards a scalar 1 that multiplies `out`: under `grad` the primal `out` itself may
    # be dead code (and its check with it), but the cotangent still flows through the gate.
    gate = eqx.branched_error_if(jnp.ones((), out.dtype), jnp.any(flags_arr), jnp.argmax(flags_arr), messages)
    return out * gate


def _nonfinite(x: ArrayLike) -> Bool[Array, ""]:
    return jnp.logical_not(jnp.all(jnp.isfinite(x)))
