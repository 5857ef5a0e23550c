"""Multi-head attention: one attention function, and the layer that projects into it.

Every attention in eqvlp (self-attention in blocks, the MAP pooling probe) goes through
`dot_product_attention`, so a faster kernel plugs in at exactly one place.
"""

import copy
import dataclasses

import equinox as eqx
import jax
from einops import rearrange
from jax.ad_checkpoint import checkpoint_name
from jaxtyping import Array, Bool, Float, PRNGKeyArray, PyTree

from eqvlp.kernels.attention import (
    IMPLEMENTATIONS,
    BlockSizes,
    attention,
    flash_attention,
)
from eqvlp.nn.linear import Linear


@dataclasses.dataclass(frozen=True)
class AttentionImpl:
    """An attention implementation and its options, as `attention_impl` takes it.

    `name`: `None` (best available), `"xla"`, `"cudnn"` or `"pallas"`. For `"pallas"`,
    `interpret=True` runs the Pallas interpreter (any device, e.g. a CPU) and `block_q` /
    `block_k` fix the tile sizes (powers of two >= 16; `None` lets the kernel pick). The string
    form `"pallas:interpret,block_q=32,block_k=64"` means the same (`AttentionImpl.parse`), so
    configs can hold it.
    """

    name: str | None = None
    interpret: bool | None = None
    block_q: int | None = None
    block_k: int | None = None

    def __post_init__(self):
        if self.name is not None and self.name not in IMPLEMENTATIONS:
            raise ValueError(f"unknown attention impl {self.name!r}: use None or one of "
                             f"{IMPLEMENTATIONS}, e.g. 'pallas:interpret,block_q=32'")
        options = (self.interpret, self.block_q, self.block_k)
        if self.name != "pallas" and any(o is not None for o in options):
            raise ValueError(f"interpret and block sizes are options of the Pallas kernel, not of "
                             f"{self.name!r}: use 'pallas:interpret' or drop them")
        if self.block_q is not None or self.block_k is not None:
            BlockSizes(self.block_q or 128, self.block_k or 128)  # validates the tile sizes

    @classmethod
    def parse(cls, spec: "str | AttentionImpl | None") -> "AttentionImpl":
        """`None`, `"xla"`, `"pallas:interpret,block_q=32"` or an `AttentionImpl`."""
        if spec is None or isinstance(spec, AttentionImpl):
            return spec or cls()
        if not isinstance(spec, str):
            raise TypeError(f"attention_impl must be None, a string or an AttentionImpl, got "
                            f"{type(spec).__name__}")
        name, _, options = spec.partition(":")
        kwargs: dict = {}
        for option in filter(None, (o.strip() for o in options.split(","))):
            key, _, value = option.partition("=")
            if key == "interpret" and not value:
                kwargs["interpret"] = True
            elif key in ("block_q", "block_k") and value.isdigit():
                kwargs[key] = int(value)
            else:
                raise ValueError(f"unknown attention option {option!r} in {spec!r}: use "
                                 "'interpret', 'block_q=N' or 'block_k=N'")
        return cls(name or None, **kwargs)

    def block_sizes(self) -> BlockSizes | None:
        if self.block_q is None and self.block_k is None:
            return None
        return BlockSizes(self.block_q or 128, self.block_k or 128)


def dot_product_attention(
    q: Float[Array, "q_seq heads head_dim"],
    k: Float[Array, "kv_seq heads head_dim"],
    v: Float[Array, "kv_seq heads head_dim"],
    *,
    mask: Bool[Array, " kv_seq"] | None = None,
    causal: bool = False,
    impl: "str | AttentionImpl | None" = None,
) -> Float[Array, "q_seq heads head_dim"]:
    """Softmax attention for one example, scaled by `1/sqrt(head_dim)`.

    **Arguments:**

    - `q`, `k`, `v`: queries, keys and values of one example.
    - `mask`: `True` where a key may be attended to (padding mask); `None` attends to all.
    - `causal`: query `i` sees keys `j <= i` only.
    - `impl`: `None` (best available), `"xla"`, `"cudnn"` or `"pallas"`, optionally with the
      Pallas kernel's options (`"pallas:interpret,block_q=32"` or an `AttentionImpl`); see
      `eqvlp.kernels.attention`. The XLA path computes logits and softmax in float32.

    **Returns:** the attended values, shaped like `q`.
    """
    batch_mask = None if mask is None else mask[None]
    spec = AttentionImpl.parse(impl)
    if spec.name == "pallas" and spec != AttentionImpl("pallas"):  # options: call the kernel
        out = flash_attention(q[None], k[None], v[None], causal=causal, mask=batch_mask,
                              block_sizes=spec.block_sizes(), interpret=spec.interpret)
        return out[0]
    out = attention(q[None], k[None], v[None], causal=causal, mask=batch_mask, impl=spec.name)
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
    impl: "str | AttentionImpl | None" = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        use_bias: bool = True,
        impl: "str | AttentionImpl | None" = None,
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
        AttentionImpl.parse(impl)  # a typo fails here, not at the first call
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
        # Named for TransformerBlock's backward, which keeps q, k, v and the attended values
        # and recomputes the softmax (eqvlp.nn.block.SAVED_FOR_BACKWARD).
        q, k, v = (checkpoint_name(t, "attention_qkv") for t in (q, k, v))
        out = dot_product_attention(q, k, v, mask=mask, causal=causal, impl=self.impl)
        out = checkpoint_name(rearrange(out, "s h d -> s (h d)").astype(x.dtype), "attention_out")
        return self.output(out)


def with_attention_impl(tree: PyTree, impl: "str | AttentionImpl | None") -> PyTree:
    """`tree` (a model, trained or not) with every `MultiheadAttention` switched to `impl`.

    The parameters are the same arrays; only the static choice of kernel changes (an
    `eqx.tree_at` over every attention block, the encoders' stacked ones included), so there is
    no need to rebuild the model, e.g. `with_attention_impl(model, "pallas:interpret")`.
    """
    AttentionImpl.parse(impl)
    is_attention = lambda x: isinstance(x, MultiheadAttention)  # noqa: E731

    def switched(block):
        if not is_attention(block):
            return block
        new = copy.copy(block)
        object.__setattr__(new, "impl", impl)
        return new

    return jax.tree.map(switched, tree, is_leaf=is_attention)
