"""A stack of transformer blocks run with `lax.scan`, so compile time is flat in depth.

The blocks' parameters are stacked along a leading `depth` axis (built with
`eqx.filter_vmap`); `lax.scan` traces one block once whatever the depth.
"""

import equinox as eqx
import jax
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from eqvlp.nn.block import TransformerBlock

REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole block in the backward pass
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Encoder(eqx.Module):
    """`depth` pre-LN transformer blocks with stacked parameters.

    **Arguments:**

    - `remat`: `None` (keep activations), or a rematerialisation policy name from
      `REMAT_POLICIES`: `"full"` recomputes each block in the backward pass, `"dots"` keeps
      matmul outputs, `"dots_no_batch"` keeps matmul outputs without batch dimensions.
    """

    layers: TransformerBlock  # every leaf has a leading `depth` axis
    depth: int = eqx.field(static=True)
    remat: str | None = eqx.field(static=True)

    def __init__(
        self,
        depth: int,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        *,
        activation: str = "gelu",
        layer_norm_eps: float = 1e-6,
        remat: str | None = None,
        attention_impl: str | None = None,
        key: PRNGKeyArray,
    ):
        if depth < 1:
            raise ValueError(f"encoder depth must be >= 1, got {depth}")
        if remat is not None and remat not in REMAT_POLICIES:
            raise ValueError(
                f"unknown remat policy {remat!r}: use None or one of {sorted(REMAT_POLICIES)}"
            )
        make = lambda k: TransformerBlock(  # noqa: E731
            dim,
            num_heads,
            mlp_dim,
            activation=activation,
            layer_norm_eps=layer_norm_eps,
            attention_impl=attention_impl,
            key=k,
        )
        self.layers = eqx.filter_vmap(make)(jax.random.split(key, depth))
        self.depth = depth
        self.remat = remat

    def layer(self, index: int) -> TransformerBlock:
        """Block `index` as a stand-alone module (for inspection and the unrolled path)."""
        return jax.tree.map(lambda leaf: leaf[index], self.layers)

    def __call__(
        self,
        x: Float[Array, "seq dim"],
        *,
        mask: Bool[Array, " seq"] | None = None,
        causal: bool = False,
        unroll: bool = False,
    ) -> Float[Array, "seq dim"]:
        """Runs every block in order; `unroll=True` uses a Python loop (for testing)."""
        if unroll:
            for i in range(self.depth):
                x = self.layer(i)(x, mask=mask, causal=causal)
            return x
        params, static = eqx.partition(self.layers, eqx.is_array)

        def step(h, block_params):
            block = eqx.combine(block_params, static)
            return block(h, mask=mask, causal=causal), None

        if self.remat is not None:
            step = jax.checkpoint(step, policy=REMAT_POLICIES[self.remat])
        x, _ = jax.lax.scan(step, x, params)
        return x
