"""clip-rocket in the training loop: the heads beside the model, and the loss on embeddings.

`RocketHeads` holds what clip-rocket trains besides the towers: the local projector and local
temperature of the local CLIP terms, and the heads of the self-supervised term (`LossConfig.ssl`).
They live in the train state as `state["heads"]` (replicated, checkpointed, restored), and BYOLIP
keeps an EMA copy of model and heads as `state["target"]`.

`rocket_loss` works on embeddings only, so exact gradient accumulation holds: the heads use
batch normalisation, which couples the examples, and they run inside the loss on the full batch
of embeddings, which is how GradCache treats them.

- Global term: `clip_loss` of view 0 (the weak view) of each modality, with the model's scale.
- Local terms: the other `n` views of each modality through the local projector (a linear map
  of the model's embedding; clip-rocket projects the pooled features, eqvlp's models hand out
  projected embeddings), every pair (image view a, text view b) scored with the local scale and
  `label_smoothing`; `clip_rocket_loss` combines them as `(global + n * local) / (1 + n)`. Text
  without views (no `data.text_augment`) uses its one caption against each image view.
- Self-supervised term (`ssl`), across the modalities on view 0: SiamLIP (predictor on one side,
  stop-gradient projection on the other), BYOLIP (targets from the EMA target heads and model),
  BarLIP (Barlow Twins of the projections), SwALIP (Sinkhorn assignments over prototypes, scale
  10, prototypes frozen for the first `freeze_prototypes_steps`).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from eqvlp.losses import (
    Predictor,
    Projector,
    Prototypes,
    barlip_loss,
    byolip_loss,
    clip_loss,
    clip_rocket_loss,
    normalize,
    siamlip_loss,
    swalip_loss,
)

SWALIP_SCALE = 10.0  # SwAV's temperature 0.1


class RocketHeads(eqx.Module):
    """clip-rocket's trainable heads: local projector and temperature, and the `ssl` heads."""

    local_projector: eqx.nn.Linear
    local_logit_scale: Float[Array, ""]
    projector: Projector | None
    predictor: Predictor | None
    prototypes: Prototypes | None
    max_logit_scale: float | None = eqx.field(static=True)

    def __init__(self, config, embed_dim: int, *, max_logit_scale: float | None = 100.0,
                 key: PRNGKeyArray):
        """`config` is the run's `LossConfig`; `embed_dim` the model's embedding size."""
        k_local, k_proj, k_pred, k_protos = jax.random.split(key, 4)
        self.local_projector = eqx.nn.Linear(embed_dim, embed_dim, use_bias=False, key=k_local)
        self.local_logit_scale = jnp.asarray(math.log(1 / 0.07), jnp.float32)
        self.max_logit_scale = max_logit_scale
        ssl = config.ssl
        self.projector = (Projector(embed_dim, config.head_hidden_dim, config.head_dim, key=k_proj)
                          if ssl is not None else None)
        self.predictor = (Predictor(config.head_dim, config.head_hidden_dim, key=k_pred)
                          if ssl in ("siamlip", "byolip") else None)
        self.prototypes = (Prototypes(config.head_dim, config.num_prototypes, key=k_protos)
                           if ssl == "swalip" else None)

    def local_scale(self) -> Float[Array, ""]:
        """The local terms' logit multiplier, clamped like the model's."""
        scale = jnp.exp(self.local_logit_scale)
        if self.max_logit_scale is not None:
            scale = jnp.minimum(scale, self.max_logit_scale)
        return scale

    def local(self, z: Float[Array, "batch views dim"]) -> Float[Array, "views batch dim"]:
        """Normalised local projections of the strong views, view-major."""
        projected = jax.vmap(jax.vmap(self.local_projector))(z)
        return normalize(jnp.swapaxes(projected, 0, 1))


def _views(z: Float[Array, "batch *views dim"]) -> Float[Array, "batch views dim"]:
    return z[:, None] if z.ndim == 2 else z


def rocket_loss(
    trainable: PyTree,
    embeddings: dict,
    config,
    *,
    step: Int[Array, ""],
    target: tuple[RocketHeads, dict] | None = None,
) -> tuple[Float[Array, ""], dict]:
    """clip-rocket's total loss and its terms, from the full batch of embeddings.

    **Arguments:**

    - `trainable`: `{"model": model, "heads": RocketHeads}`.
    - `embeddings`: `{"image": (b, [views,] d), "text": (b, [views,] d)}`, un-normalised.
    - `config`: the run's `LossConfig` (`ssl`, `ssl_weight`, `label_smoothing`, ...).
    - `step`: the optimiser step (SwALIP freezes its prototypes early on).
    - `target`: BYOLIP's `(target heads, target view-0 embeddings)`, no gradient.

    **Returns:** `(loss, terms)`: `terms` holds `clip` (the global CLIP term alone),
    `rocket_clip` (global and local terms combined) and `ssl`, for logging. A non-finite
    embedding gives a NaN loss (the optimiser skips the step) instead of an error.
    """
    model, heads = trainable["model"], trainable["heads"]
    image, text = _views(embeddings["image"]), _views(embeddings["text"])
    finite = jnp.all(jnp.isfinite(image)) & jnp.all(jnp.isfinite(text))
    image, text = (jnp.where(finite, z, jnp.zeros_like(z)) for z in (image, text))
    zimg, ztxt = image[:, 0], text[:, 0]
    strong_img = image[:, 1:]
    strong_txt = text[:, 1:] if text.shape[1] > 1 else jnp.repeat(text, strong_img.shape[1], 1)
    if strong_img.shape[1] != strong_txt.shape[1]:
        raise ValueError(f"{strong_img.shape[1] + 1} image views but {strong_txt.shape[1] + 1} "
                         "text views: give text as many views as images (data.text_augment "
                         "with data.views) or one")
    global_term = clip_loss(normalize(zimg), normalize(ztxt), model.scale())
    combined = clip_rocket_loss(normalize(zimg), normalize(ztxt), heads.local(strong_img),
                                heads.local(strong_txt), model.scale(), heads.local_scale(),
                                label_smoothing=config.label_smoothing)
    ssl = _ssl_term(heads, zimg, ztxt, config, step=step, target=target)
    total = combined + config.ssl_weight * ssl
    terms = {"clip": global_term, "rocket_clip": combined, "ssl": ssl}
    return jnp.where(finite, total, jnp.nan), terms


def _ssl_term(heads: RocketHeads, zimg, ztxt, config, *, step, target) -> Float[Array, ""]:
    if config.ssl is None:
        return jnp.zeros((), jnp.float32)
    v_img, v_txt = heads.projector(zimg), heads.projector(ztxt)
    if config.ssl == "barlip":
        return barlip_loss(v_img, v_txt)
    if config.ssl == "swalip":
        frozen = step < config.freeze_prototypes_steps
        return swalip_loss(heads.prototypes(v_img, frozen=frozen),
                           heads.prototypes(v_txt, frozen=frozen), SWALIP_SCALE)
    p_img, p_txt = heads.predictor(v_img), heads.predictor(v_txt)
    if config.ssl == "siamlip":
        return siamlip_loss(p_img, p_txt, v_img, v_txt)
    if target is None:
        raise ValueError("BYOLIP needs the EMA target heads and embeddings: pass target=")
    target_heads, target_embeddings = target
    t_img = jax.lax.stop_gradient(target_heads.projector(_views(target_embeddings["image"])[:, 0]))
    t_txt = jax.lax.stop_gradient(target_heads.projector(_views(target_embeddings["text"])[:, 0]))
    return byolip_loss(p_img, p_txt, t_img, t_txt)
