"""Exponential moving average of a whole model, for BYOLIP's target network.

BYOLIP is SiamLIP whose targets come from a slowly-moving copy of the entire model (towers and
projectors), `target <- tau * target + (1 - tau) * online` after every optimiser step.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import ArrayLike, PyTree, Real

from eqvlp.losses.validation import concrete

__all__ = ["ema_update"]


def ema_update(target: PyTree, online: PyTree, tau: Real[ArrayLike, ""] = 0.99) -> PyTree:
    """Moves `target` towards `online`: `tau * target + (1 - tau) * online` on every float array.

    Non-float leaves (integer buffers, static fields, functions) are taken from `online`. Start the
    target as the online model itself (`target = model`: arrays are immutable, so no copy is
    needed). `tau` may be traced, e.g. a schedule of the step; BYOL's default is 0.99.

    **Arguments:**

    - `target`: the EMA model (same structure as `online`).
    - `online`: the model being trained.
    - `tau`: the decay, in [0, 1]; 1 freezes the target, 0 copies the online model. Outside
      it the average extrapolates away from the model: a concrete `tau` raises a `ValueError`
      here, a traced one a run-time error (`equinox.error_if`, as the losses check inputs).

    **Returns:** the new target, same structure.
    """
    if jax.tree.structure(eqx.filter(target, eqx.is_array)) != jax.tree.structure(
        eqx.filter(online, eqx.is_array)
    ):
        raise ValueError("ema_update: target and online must have the same structure: start with target = model")
    message = (f"ema_update: tau must be in [0, 1] (1 freezes the target, BYOL uses 0.99)")
    if jnp.shape(tau) != ():
        raise ValueError(f"{message}; got an array of shape {jnp.shape(tau)}: pass a scalar")
    value = concrete(tau)
    if value is not None and not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{message}, got {float(value)}")
    tau = jnp.asarray(tau, jnp.float32)
    if value is None:
        tau = eqx.error_if(tau, ~((tau >= 0) & (tau <= 1)), message)
    t_arrays, _ = eqx.partition(target, eqx.is_inexact_array)
    o_arrays, o_rest = eqx.partition(online, eqx.is_inexact_array)

    def mix(t, o):
        if t is None:
            return o
        return (tau * t.astype(jnp.float32) + (1 - tau) * o.astype(jnp.float32)).astype(o.dtype)

    mixed = jax.tree.map(mix, t_arrays, o_arrays, is_leaf=lambda x: x is None)
    return eqx.combine(mixed, o_rest)
