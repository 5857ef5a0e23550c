"""Input checks shared by every loss, and the L2 normalisation the losses expect.

Two kinds of bad input, two mechanisms:

- **Shapes and dtypes** are known at trace time, so they are checked in Python and raise a
  `ValueError` that names the problem and the fix, before anything is compiled.
- **Values** (NaN or inf) are only known at run time, under `jit`, so they are checked with
  `equinox.error_if` on the loss value: a non-finite input raises an `EquinoxRuntimeError`
  (on CPU it surfaces as a `JaxRuntimeError` carrying the message) instead of returning a silent
  NaN. Setting the environment variable `EQX_ON_ERROR=nan` turns the error into a NaN loss, for
  hardware where host callbacks are unwelcome. The loss itself is checked too: finite inputs
  can still overflow (a logit multiplier of 1e38) and that is named as such. A scalar that must
  not be negative (`scale`) raises a `ValueError` when it is concrete, and joins the run-time
  check when it is traced.
- **Mesh axes** (`axis_name`) are checked at trace time by `check_axis_name`: an axis the
  enclosing `shard_map` does not have, or a distributed loss called outside `shard_map`, is a
  `ValueError` naming the axes that are there.

Zero-norm rows are not an error: `normalize` maps them to the zero vector with a finite gradient,
and every loss stays finite on them (a zero embedding scores 0 against everything: in `clip_loss`
its row costs log(B), in `sigmoid_loss` its logits are just the bias).
"""

from collections.abc import Sequence

import equinox as eqx
import numpy as np
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Real

__all__ = ["check_axis_name", "check_finite", "check_pair", "check_scalar", "concrete", "normalize"]


def concrete(x: ArrayLike) -> np.ndarray | None:
    """`x` as a NumPy array when its value is known now (an eager call), None when traced
    (or spread over other processes' devices: those are checked like traced values)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None
    except RuntimeError:  # a global array this process cannot fetch whole
        return None


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


def check_scalar(
    fn: str, name: str, x: Real[ArrayLike, "..."], *, nonnegative: bool = False
) -> Float[Array, ""]:
    """Static check that `x` is a scalar; returns it as a float32 array (losses compute in f32).

    With `nonnegative`, a concrete negative value raises here (a negative logit multiplier
    turns the objective upside down); a traced one is checked at run time by `check_finite`'s
    `nonnegative=` argument.
    """
    shape = jnp.shape(x)
    if shape != ():
        raise ValueError(
            f"{fn}: {name} must be a scalar, got shape {shape}: pass e.g. `{name}.squeeze()` or "
            f"`{name}[0]`"
        )
    value = concrete(x) if nonnegative else None
    if value is not None and float(value) < 0:
        raise ValueError(_negative_message(fn, name) + f", got {float(value)}")
    return jnp.asarray(x, dtype=jnp.float32)


def check_axis_name(fn: str, axis_name) -> None:
    """Raises a `ValueError` unless every axis of `axis_name` is bound here (inside `shard_map`).

    Without it JAX fails deep inside the ring with a bare `AssertionError` or an "unbound axis
    name" message that does not say which function or what to do.
    """
    if axis_name is None:
        return
    axes = (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)
    missing = []
    for axis in axes:
        try:
            jax.lax.axis_size(axis)
        except NameError:
            missing.append(axis)
    if not missing:
        return
    bound = _bound_axis_names()
    if not bound:
        raise ValueError(
            f"{fn}(axis_name={axis_name!r}) must run inside jax.shard_map over a mesh with that "
            f"axis: wrap it with eqvlp.losses.shard_loss({fn}, mesh), or pass axis_name=None "
            "(the single-device loss)"
        )
    raise ValueError(
        f"{fn}: axis_name {', '.join(map(repr, missing))} is not an axis of the enclosing "
        f"shard_map (its axes: {', '.join(map(repr, bound))}): pass the mesh axis the batch "
        "is sharded over"
    )


def _bound_axis_names() -> tuple[str, ...]:
    """Axis names bound here (shard_map, vmap); empty outside. Uses JAX internals, so an
    unknown JAX version just says nothing is bound."""
    try:
        from jax._src import core

        return tuple(core.get_axis_env().axis_sizes)
    except Exception:  # noqa: BLE001 - private API: degrade to the outside-shard_map message
        return ()


def _negative_message(fn: str, name: str) -> str:
    return (
        f"{fn}: {name} must be >= 0 (it multiplies the cosine logits; pass exp(log_scale), "
        "not a log or a negated value)"
    )


def check_finite(
    fn: str,
    out: Float[Array, "*shape"],
    inputs: Sequence[tuple[str, ArrayLike]],
    *,
    axis_name=None,
    nonnegative: Sequence[tuple[str, ArrayLike]] = (),
    overflow_hint: str = "the logits overflow float32: check scale (the multiplier exp(t), not t)",
) -> Float[Array, "*shape"]:
    """Returns `out`, raising at run time if any named input, or `out` itself, holds NaN or inf.

    The error names the first bad input; when every input is finite but `out` is not, it says
    so with `overflow_hint`. `nonnegative` names scalars that must be >= 0 (checked here when
    traced; `check_scalar` checks concrete ones). Inside `shard_map` pass the data `axis_name`:
    the flags are all-reduced first, so every device agrees (and `error_if` needs a
    device-invariant predicate).
    """
    flags = [_nonfinite(x) for _, x in inputs]
    flags += [jnp.asarray(x) < 0 for _, x in nonnegative]
    flags.append(_nonfinite(out))
    flags_arr = jnp.stack(flags)
    if axis_name is not None:
        flags_arr = jax.lax.psum(flags_arr.astype(jnp.int32), axis_name) > 0
    messages = [
        f"{fn}: {name} contains NaN or inf: check the encoder outputs (a diverged step, an fp16 "
        "overflow, or a bad sample); set EQX_ON_ERROR=nan to get a NaN loss instead of this error"
        for name, _ in inputs
    ]
    messages += [_negative_message(fn, name) for name, _ in nonnegative]
    messages.append(
        f"{fn}: the result is NaN or inf although every input is finite: {overflow_hint}; set "
        "EQX_ON_ERROR=nan to get a NaN loss instead of this error"
    )
    # The check guards a scalar 1 that multiplies `out`: under `grad` the primal `out` itself may
    # be dead code (and its check with it), but the cotangent still flows through the gate.
    gate = eqx.branched_error_if(jnp.ones((), out.dtype), jnp.any(flags_arr), jnp.argmax(flags_arr), messages)
    return out * gate


def _nonfinite(x: ArrayLike) -> Bool[Array, ""]:
    return jnp.logical_not(jnp.all(jnp.isfinite(x)))
