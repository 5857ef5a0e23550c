"""An evaluation set read through the data pipeline, and one call that reports every metric.

`load_eval_set` reads images (resize + centre crop, no augmentation), every caption and the
labels in order, once; `evaluate` embeds them with any model that has `encode_image` /
`encode_text` and reports zero-shot classification and image-text retrieval. The model's text
input is made by `prepare_text` (a tokenizer for CLIP, the renderer for CLIPPO), so this file
knows no model.
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np
from jaxtyping import Int, UInt8

from eqvlp.data import DataConfig, Loader
from eqvlp.eval.features import embed_images, embed_texts
from eqvlp.eval.retrieval import retrieval_metrics
from eqvlp.eval.zeroshot import class_embeddings, text_encoder, zeroshot

TASKS = ("zeroshot", "retrieval")


@dataclasses.dataclass
class EvalSet:
    """Images, their captions (one or more each) and labels (-1 without one), in order."""

    images: UInt8[np.ndarray, "n h w 3"]
    captions: list[list[str]]
    labels: Int[np.ndarray, " n"]
    keys: list[str]

    def __len__(self) -> int:
        return len(self.images)


def load_eval_set(config: DataConfig, *, num_samples: int | None = None,
                  batch_size: int = 256) -> EvalSet:
    """Reads an evaluation set in order (every process reads all of it: evaluation runs
    replicated), up to `num_samples` images. Bad samples are skipped and counted in the
    returned loader's way: `EvalSet` holds only good ones."""
    config = dataclasses.replace(config, training=False, text="raw", views=1,
                                 text_augment=None, batch_size=batch_size)
    loader = Loader(config, process_index=0, process_count=1)
    images, captions, labels, keys = [], [], [], []
    count = 0
    for batch in loader:
        take = len(batch["key"]) if num_samples is None else min(len(batch["key"]),
                                                                  num_samples - count)
        images.append(batch["image"][:take])
        captions.extend(batch["captions"][:take])
        labels.append(batch["label"][:take])
        keys.extend(batch["key"][:take])
        count += take
        if num_samples is not None and count >= num_samples:
            break
    loader.close()
    if not images:
        raise ValueError(f"evaluation data {config.data!r} gave no usable sample "
                         f"(skipped: {loader.skipped.counts})")
    return EvalSet(np.concatenate(images), captions, np.concatenate(labels), keys)


def evaluate(
    model,
    eval_set: EvalSet,
    *,
    prepare_text: Callable[[list[str]], np.ndarray],
    normalize: tuple[Sequence[float], Sequence[float]],
    classnames: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    tasks: Sequence[str] = TASKS,
    batch_size: int = 256,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = False,
    groups: Mapping[str, np.ndarray] | None = None,
) -> dict:
    """Zero-shot and retrieval metrics of `model` on `eval_set`, as a flat dict.

    **Arguments:**
    - `prepare_text`: strings -> the model's text input (token ids or rendered images).
    - `normalize`: `(mean, std)` of uint8 images, as the model was trained.
    - `classnames`, `templates`: the zero-shot classes (labels index `classnames`).
    - `tasks`: any of `"zeroshot"`, `"retrieval"`.
    - `groups`: named boolean masks over the images (e.g. the shapes test split's seen and
      unseen colour+shape pairs, `eqvlp.data.held_out_mask`); each adds
      `zeroshot_top1_{name}` over its labelled images.

    **Returns:** `zeroshot_top1`, `zeroshot_top5`, `zeroshot_mean_per_class_recall`,
    `i2t_r1/5/10`, `t2i_r1/5/10`, `num_images`, `num_texts` (for the tasks run).
    """
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown evaluation tasks {sorted(unknown)}: use {TASKS}")
    image_features = embed_images(model, eval_set.images, normalize=normalize,
                                  batch_size=batch_size, mesh=mesh, progress=progress)
    results: dict = {"num_images": len(eval_set)}
    if "zeroshot" in tasks:
        if classnames is None or templates is None:
            raise ValueError("zero-shot evaluation needs classnames and templates: pass a "
                             "--zeroshot JSON file, or leave 'zeroshot' out of the tasks")
        labelled = eval_set.labels >= 0
        if not labelled.any():
            raise ValueError("zero-shot evaluation needs labels (KEY.cls or a json 'label' "
                             "field): these samples have none")
        encode = text_encoder(model, prepare_text, batch_size=batch_size, mesh=mesh)
        classes = class_embeddings(encode, classnames, templates)
        metrics = zeroshot(image_features[labelled], classes, eval_set.labels[labelled])
        results.update({"zeroshot_top1": metrics["top1"], "zeroshot_top5": metrics["top5"],
                        "zeroshot_mean_per_class_recall": metrics["mean_per_class_recall"]})
        for name, mask in (groups or {}).items():
            mask = np.asarray(mask, bool)
            if mask.shape != labelled.shape:
                raise ValueError(f"group {name!r} has {mask.shape[0] if mask.ndim else 0} flags "
                                 f"for {len(eval_set)} images: give one bool per image")
            chosen = mask & labelled
            if chosen.any():
                results[f"zeroshot_top1_{name}"] = zeroshot(
                    image_features[chosen], classes, eval_set.labels[chosen], ks=(1,))["top1"]
    if "retrieval" in tasks:
        texts = [c for captions in eval_set.captions for c in captions]
        owner = np.repeat(np.arange(len(eval_set)), [len(c) for c in eval_set.captions])
        text_features = embed_texts(model, np.asarray(prepare_text(texts)),
                                    batch_size=batch_size, mesh=mesh, progress=progress)
        results.update(retrieval_metrics(image_features, text_features, owner))
    return {k: (float(v) if isinstance(v, (np.floating, float)) else v)
            for k, v in results.items()}
