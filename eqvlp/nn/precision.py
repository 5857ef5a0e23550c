"""Mixed precision by casting: parameters stay float32, compute runs in a chosen dtype."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike
from jaxtyping import PyTree


def cast_floating(tree: PyTree, dtype: DTypeLike) -> PyTree:
    """Casts every floating-point array leaf to `dtype`; other leaves are left alone.

    Casting a module just before calling it keeps float32 master parameters: gradients flow
    back through the cast and arrive in float32.
    """
    dtype = jnp.dtype(dtype)

    def cast(leaf):
        if eqx.is_array(leaf) and jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf.astype(dtype)
        return leaf

    return jax.tree.map(cast, tree)
