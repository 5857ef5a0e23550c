"""Multi-head attention: one attention function, and the layer that projects into it.

Every attention in eqvlp (self-attention in blocks, the MAP pooling probe) goes through
`dot_product_attention`, so a faster kernel plugs in at exactly one place.
"""

import equinox as eqx
import jax
from einops import rearrange
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from eqvlp.kernels.attention import attention
from eqvlp.nn.linear import Linear


def dot_product_attention(
    q: Float[Array, "q_seq heads head_dim"],
    k: Float[Array, "kv_seq heads head_dim"],
    v: Float[Array, "kv_seq heads head_dim"],
    *,
    mask: Bool[Array, " kv_seq"] | None = None,
    causal: bool = False,
    impl: str | None = None,
) -> Float[Array, "q_seq heads head_dim"]:
    """Softmax attention for one example, scaled by `1/sqrt(head_dim)`.

    **Arguments:**

    - `q`, `k`, `v`: queries, keys and values of one example.
    - `mask`: `True` where a key may be attended to (padding mask); `None` attends to all.
    - `causal`: query `i` sees keys `j <= i` only.
    - `impl`: `None` (best available), `"xla"`, `"cudnn"` or `"pallas"`; see
      `eqvlp.kernels.attention`. The XLA path computes logits and softmax in float32.

    **Returns:** the attended values, shaped like `q`.
    """
    batch_mask = None if mask is None else mask[None]
    out = attention(q[None], k[None], v[None], causal=causal, mask=batch_mask, impl=impl)
    return out[0]


class MultiheadAttention(eqx.Module):
    """Multi-head attention with separate query/key/value/output projections.

    Self-attention when `context` is `None`, cross-attention (queries from `x`, keys and values
    from `context`) otherwise, as used by MAP pooling.
    """

    query: Linear
    key: Linear
    value: Linear
    output: Linear
    num_heads: int = eqx.field(static=True)
    impl: str | None = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        use_bias: bool = True,
        impl: str | None = None,
        key: PRNGKeyArray,
    ):
        if dim % num_heads:
            raise ValueError(
                f"attention width {dim} is not divisible by num_heads={num_heads}: "
                "pick a head count that divides the width"
            )
        kq, kk, kv, ko = jax.random.split(key, 4)
        self.query = Linear(dim, dim, use_bias=use_bias, key=kq)
        self.key = Linear(dim, dim, use_bias=use_bias, key=kk)
        self.value = Linear(dim, dim, use_bias=use_bias, key=kv)
        self.output = Linear(dim, dim, use_bias=use_bias, key=ko)
        self.num_heads = num_heads
        self.impl = impl

    def __call__(
        self,
        x: Float[Array, "q_seq dim"],
        context: Float[Array, "kv_seq dim"] | None = None,
        *,
        mask: Bool[Array, " kv_seq"] | None = None,
        causal: bool = False,
    ) -> Float[Array, "q_seq dim"]:
        context = x if context is None else context
        split = lambda t: rearrange(t, "s (h d) -> s h d", h=self.num_heads)  # noqa: E731
        q, k, v = split(self.query(x)), split(self.key(context)), split(self.value(context))
        out = dot_product_attention(q, k, v, mask=mask, causal=causal, impl=self.impl)
        return self.output(rearrange(out, "s h d -> s (h d)").astype(x.dtype))


