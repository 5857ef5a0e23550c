"""Classification on a model's embeddings: the loss, predictions, and held-out accuracy.

The trained parameters are `{"model": model, "head": ClassifierHead}`; `trainable_spec` says
which of them learn (`full`: the towers and the head; `linear`: the head only). The model's
logit scale and bias play no part in classification and stay as they are.
"""

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PyTree

from eqvlp.finetune.fused import features


def trainable_spec(params: dict, mode: str) -> PyTree[bool]:
    """Booleans over `params` (`{"model", "head"}`): True where a leaf is trained."""
    if mode not in ("full", "linear"):
        raise ValueError(f"mode={mode!r}: use full or linear")
    spec = jax.tree.map(lambda _: mode == "full", params)
    spec["head"] = jax.tree.map(lambda _: True, params["head"])
    for name in ("logit_scale", "logit_bias"):
        if getattr(params["model"], name, None) is not None:
            spec["model"] = eqx.tree_at(lambda m, name=name: getattr(m, name), spec["model"],
                                        False)
    return spec


def logits(params: dict, batch: dict, *, normalize) -> Float[Array, "batch classes"]:
    """Class logits of a batch: the head on the (fused or concatenated) embeddings."""
    return params["head"](features(params["model"], batch, normalize=normalize))


def classification_loss(params: dict, batch: dict, *, normalize
                        ) -> tuple[Float[Array, ""], dict]:
    """Mean cross-entropy of the batch's labels, and the batch's accuracy (aux)."""
    scores = logits(params, batch, normalize=normalize)
    labels: Int[Array, " batch"] = batch["label"]
    loss = optax.softmax_cross_entropy_with_integer_labels(scores, labels).mean()
    accuracy = jnp.mean((jnp.argmax(scores, axis=-1) == labels).astype(jnp.float32))
    return loss, {"train_accuracy": accuracy}


def pad_batch(batch: dict, sizes: dict[str, int]) -> dict:
    """Host arrays padded to `sizes` rows (per field) by repeating their last row, so that
    every batch has the shapes of the first (one compiled program)."""
    return {k: np.concatenate([v, np.repeat(v[-1:], sizes[k] - len(v), axis=0)])
            if len(v) < sizes[k] else v for k, v in batch.items()}


def accuracy(predict, batches: Sequence[dict], *, kinds: Sequence[str]) -> dict:
    """`accuracy` over the batches' rows, and `accuracy_<kind>` per kind when there are
    several (`kind` indexes `kinds`). `predict(batch) -> class ids` sees every batch padded
    to the first one's shapes."""
    sizes = {k: len(v) for k, v in batches[0].items()}
    hits, kind_ids = [], []
    for batch in batches:
        rows = len(batch["label"])
        device = {k: v for k, v in pad_batch(batch, sizes).items() if k != "kind"}
        predicted = np.asarray(predict(device))[:rows]
        hits.append(predicted == batch["label"])
        kind_ids.append(batch["kind"])
    hit, kind = np.concatenate(hits), np.concatenate(kind_ids)
    out = {"accuracy": float(hit.mean()), "num_examples": int(len(hit))}
    if len(kinds) > 1:
        for index, name in enumerate(kinds):
            if (kind == index).any():
                out[f"accuracy_{name}"] = float(hit[kind == index].mean())
    return out
