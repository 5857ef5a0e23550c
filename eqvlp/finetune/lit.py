"""LiT (locked-image text tuning): the image tower is frozen, the text tower learns to match it.

The image embeddings of a pre-trained tower stay where they are; the text tower (and the
logit scale and bias) are trained with the model's own contrastive loss on image-caption data
(the embedded shapes dataset or caption shards), so new text (classes, prompts, another
language) can be aligned to a fixed image representation. It needs two separate towers:
CLIPPO and 1T-CLIP share one transformer between images and text.
"""

import equinox as eqx
import jax
from jaxtyping import Array, Float, PyTree

from eqvlp.data import normalize_images
from eqvlp.models import CLIP
from eqvlp.train.objective import make_objective


def check_lit_model(model) -> None:
    """A clear error unless `model` has an image tower apart from its text tower."""
    if not isinstance(model, CLIP):
        raise ValueError(f"LiT locks the image tower and trains the text tower, but a "
                         f"{type(model).__name__} shares one tower between images and text: "
                         "use a two-tower CLIP or SigLIP model")


def lit_trainable_spec(params: dict) -> PyTree[bool]:
    """Booleans over `{"model": CLIP}`: the text tower, logit scale and bias train."""
    model = params["model"]
    check_lit_model(model)
    spec = jax.tree.map(lambda _: False, model)
    spec = eqx.tree_at(lambda m: m.text, spec, jax.tree.map(lambda _: True, model.text))
    spec = eqx.tree_at(lambda m: m.logit_scale, spec, True)
    if model.logit_bias is not None:
        spec = eqx.tree_at(lambda m: m.logit_bias, spec, True)
    return {"model": spec}


def make_lit_loss(model_loss: str, *, normalize):
    """`loss(params, batch) -> (loss, {})` with the model's softmax or sigmoid objective."""
    objective = make_objective("auto", model_loss=model_loss)

    def loss(params: dict, batch: dict) -> tuple[Float[Array, ""], dict]:
        model = params["model"]
        zimg = jax.lax.stop_gradient(
            model.encode_image(normalize_images(batch["image"], *normalize)))
        return objective(model, zimg, model.encode_text(batch["text"])), {}

    return loss
