"""Multi-head attention: one attention function, and the layer that projects into it.

Every attention in eqvlp (self-attention in blocks, the MAP pooling probe) goes through
`dot_product_attention`, so a faster kernel plugs in at exactly one place.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from einops import rearrange
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from eqvlp.nn.linear import Linear


def dot_product_attention(
    q: Float[Array, "q_seq heads head_dim"],
    k: Float[Array, "kv_seq heads head_dim"],
    v: Float[Array, "kv_seq heads head_dim"],
    *,
    mask: Bool[Array, " kv_seq"] | None = None,
    causal: bool = False,
) -> Float[Array, "q_seq heads head_dim"]:
    """Softmax attention for one example, scaled by `1/sqrt(head_dim)`.

    Logits and softmax are computed in float32 whatever the input dtype (the XLA path; the
    kernels issue adds Pallas/cuDNN implementations behind this same function).

    **Arguments:**

    - `q`, `k`, `v`: queries, keys and values of one example.
    - `mask`: `True` where a key may be attended to (padding mask); `None` attends to all.
    - `causal`: query `i` sees keys `j <= i` only.

    **Returns:** the attended values, shaped like `q`.
    """
    logits = jnp.einsum("qhd,khd->hqk", q, k, preferred_element_type=jnp.float32)
    logits = logits * (q.shape[-1] ** -0.5)
    allowed = None if mask is None else mask[None, None, :]
    if causal:
        lower = jnp.tril(jnp.ones((q.shape[0], k.shape[0]), bool))[None]
        allowed = lower if allowed is None else allowed & lower
    if allowed is not None:
        # a large finite negative, not -inf: a fully masked row gives uniform weights, not NaN
        logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("hqk,khd->qhd", weights, v)


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

    def __init__(
        self, dim: int, num_heads: int, *, use_bias: bool = True, key: PRNGKeyArray
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
        out = dot_product_attention(q, k, v, mask=mask, causal=causal)
        return self.output(rearrange(out, "s h d -> s (h d)").astype(x.dtype))


