"""Pooling a token sequence to one vector: token picks, averages, and MAP.

Image towers use `"cls"`, `"gap"` or `MAPHead`; text towers use `"eos"`, `"argmax"`,
`"last"`, `"first"` or `"mean"`.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from eqvlp.nn.attention import MultiheadAttention
from eqvlp.nn.linear import LayerNorm
from eqvlp.nn.mlp import MLP

POOLING_METHODS = ("cls", "first", "last", "gap", "mean", "eos", "argmax")


def pool(
    x: Float[Array, "seq dim"],
    method: str,
    *,
    token_ids: Int[Array, " seq"] | None = None,
    eos_token_id: int | None = None,
    mask: Bool[Array, " seq"] | None = None,
) -> Float[Array, " dim"]:
    """Pools one sequence with a parameter-free method.

    **Arguments:**

    - `method`: `"cls"`/`"first"` take token 0; `"last"` the final position; `"gap"`/`"mean"`
      average (over `mask`-ed tokens when a mask is given); `"eos"` takes the first position
      whose id is `eos_token_id`, and position 0 when there is none, exactly as transformers'
      `CLIPTextTransformer` does (`argmax(ids == eos_token_id)`); `"argmax"` takes the first
      position of the largest token id (OpenAI CLIP, whose end-of-text id is the largest;
      transformers' rule for the legacy `eos_token_id=2`).
    - `token_ids`: needed by `"eos"` and `"argmax"`.
    """
    if method in ("cls", "first"):
        return x[0]
    if method == "last":
        return x[-1]
    if method in ("gap", "mean"):
        if mask is None:
            return jnp.mean(x, axis=0)
        weights = mask.astype(x.dtype)[:, None]
        return jnp.sum(x * weights, axis=0) / jnp.maximum(jnp.sum(weights), 1).astype(x.dtype)
    if method in ("eos", "argmax"):
        if token_ids is None:
            raise ValueError(f"pooling {method!r} needs the token ids: pass token_ids=")
        if method == "argmax":
            return x[jnp.argmax(token_ids)]
        if eos_token_id is None:
            raise ValueError("pooling 'eos' needs eos_token_id=: set it in the text config")
        # No EOS: argmax of all-False is 0, transformers' choice (eqvlp's tokenizer always
        # writes an EOS, even when it truncates, so only hand-made ids lack one).
        return x[jnp.argmax(token_ids == eos_token_id)]
    raise ValueError(f"unknown pooling {method!r}: use one of {POOLING_METHODS} or a MAPHead")


class MAPHead(eqx.Module):
    """Multi-head attention pooling: a learned probe attends over the tokens.

    `y = MHA(probe, x)`, then `y + MLP(LN(y))`; the probe's output is the pooled vector
    (big_vision's `map` head, SigLIP's attention-pooling head).
    """

    probe: Float[Array, "1 dim"]
    attention: MultiheadAttention
    norm: LayerNorm
    mlp: MLP

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int | None = None,
        *,
        activation: str = "gelu",
        layer_norm_eps: float = 1e-6,
        attention_impl: str | None = None,
        key: PRNGKeyArray,
    ):
        kp, ka, km = jax.random.split(key, 3)
        self.probe = 0.02 * jax.random.normal(kp, (1, dim), jnp.float32)
        self.attention = MultiheadAttention(dim, num_heads, impl=attention_impl, key=ka)
        self.norm = LayerNorm(dim, eps=layer_norm_eps)
        self.mlp = MLP(dim, mlp_dim or 4 * dim, activation=activation, key=km)

    def __call__(
        self, x: Float[Array, "seq dim"], *, mask: Bool[Array, " seq"] | None = None
    ) -> Float[Array, " dim"]:
        y = self.attention(self.probe.astype(x.dtype), x, mask=mask)
        y = y + self.mlp(self.norm(y))
        return y[0]
