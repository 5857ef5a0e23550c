"""How a fine-tuned model sees an example: CLIPPO's fused pixels, or concatenated embeddings.

CLIPPO reads everything as pixels, so a question is rendered into a band of the image (above
or below it, `band_height` pixels: the model is resized to the taller canvas, its position
embeddings resampled) and a sentence pair is rendered into one image, the first sentence in
the top half and the second in the bottom half. One image goes through the one tower.

Two-tower models (and CLIPPO with `fusion="concat"`, for comparison) encode the image and the
question (or both sentences) separately, and the head reads their embeddings concatenated.

The host side (`model_inputs`) draws and stacks uint8 arrays and token ids, one row per
question; the device side (`features`) encodes whatever inputs a batch holds and concatenates
the embeddings.
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Literal

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, UInt8

from eqvlp.data import normalize_images
from eqvlp.render import RenderConfig, render_text

Fusion = Literal["band", "concat"]


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def fused_size(image_size: int | tuple[int, int], band_height: int) -> tuple[int, int]:
    """`(height, width)` of an image with a question band of `band_height` rows."""
    height, width = _hw(image_size)
    return height + band_height, width


def render_band(texts: Sequence[str], *, height: int, width: int,
                render: RenderConfig = RenderConfig()) -> UInt8[np.ndarray, "batch h w 3"]:
    """Each text drawn into a `height x width` band (lines wrap; what does not fit is cut)."""
    if height < render.font_size:
        raise ValueError(f"a text band of {height} rows cannot hold one line of font_size "
                         f"{render.font_size}: use band_height >= {render.font_size}")
    return render_text(list(texts), image_size=(height, width), **dataclasses.asdict(render))


def fuse_question(images: UInt8[np.ndarray, "batch h w 3"], questions: Sequence[str], *,
                  band_height: int, position: Literal["top", "bottom"] = "top",
                  render: RenderConfig = RenderConfig()) -> UInt8[np.ndarray, "batch h2 w 3"]:
    """The images with each question rendered into a band above (`top`) or below them."""
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images but {len(questions)} questions: one each")
    if position not in ("top", "bottom"):
        raise ValueError(f"band position {position!r}: use 'top' or 'bottom'")
    band = render_band(questions, height=band_height, width=images.shape[2], render=render)
    parts = (band, images) if position == "top" else (images, band)
    return np.concatenate(parts, axis=1)


def render_pair(first: Sequence[str], second: Sequence[str], *,
                image_size: int | tuple[int, int],
                render: RenderConfig = RenderConfig()) -> UInt8[np.ndarray, "batch h w 3"]:
    """Both sentences in one image: the first in the top half, the second in the bottom."""
    height, width = _hw(image_size)
    top = height // 2
    return np.concatenate([render_band(first, height=top, width=width, render=render),
                           render_band(second, height=height - top, width=width,
                                       render=render)], axis=1)


def _rows(examples: Sequence[dict]) -> tuple[list[int], list[str], list[int], list[int]]:
    """One row per question: (image index, question, label, kind), flattening examples that
    ask several questions about one image."""
    owners, texts, labels, kinds = [], [], [], []
    for i, e in enumerate(examples):
        many = isinstance(e["label"], (list, tuple))
        for text, label, kind in zip(*((e[k] if many else [e[k]]) for k in ("text", "label",
                                                                            "kind"))):
            owners.append(i)
            texts.append(text)
            labels.append(label)
            kinds.append(kind)
    return owners, texts, labels, kinds


def model_inputs(examples: Sequence[dict], *, inputs: str, fusion: Fusion,
                 prepare_text: Callable[[list[str]], np.ndarray] | None,
                 image_size: int | tuple[int, int], band_height: int = 0,
                 position: Literal["top", "bottom"] = "top",
                 render: RenderConfig = RenderConfig()) -> dict[str, np.ndarray]:
    """The host arrays one batch of task examples becomes: `label` and `kind` (one row per
    question), `image` (uint8) and/or `text`, `text_b` (token ids or rendered text). Questions
    come as the batch's distinct texts and a `text_index` per row; `image_index` gives each
    row's image when examples ask several questions about one image.

    - `inputs`: the task's (`image`, `image_text`, `text_pair`).
    - `fusion`: `band` renders the text into the image (CLIPPO: one image per question);
      `concat` keeps it apart (one image, encoded once, for all of its questions).
    - `prepare_text`: strings -> the text tower's input (for `concat`).
    """
    if inputs == "image":
        return {"image": np.stack([e["image"] for e in examples]),
                "label": np.asarray([e["label"] for e in examples], np.int32),
                "kind": np.asarray([e["kind"] for e in examples], np.int32)}
    if inputs == "text_pair":
        out = {"label": np.asarray([e["label"] for e in examples], np.int32),
               "kind": np.asarray([e["kind"] for e in examples], np.int32)}
        first, second = [e["text"] for e in examples], [e["text_b"] for e in examples]
        if fusion == "band":
            return dict(out, image=render_pair(first, second, image_size=image_size,
                                               render=render))
        _need_text(prepare_text)
        return dict(out, text=np.asarray(prepare_text(first)),
                    text_b=np.asarray(prepare_text(second)))
    owners, texts, labels, kinds = _rows(examples)
    out = {"label": np.asarray(labels, np.int32), "kind": np.asarray(kinds, np.int32)}
    images = np.stack([e["image"] for e in examples])
    if fusion == "band":
        return dict(out, image=fuse_question(images[owners], texts, band_height=band_height,
                                             position=position, render=render))
    _need_text(prepare_text)
    # Questions repeat (VQA asks a few dozen distinct ones): each distinct text is encoded
    # once per batch, padded to a multiple of 16 so that batches share a few compiled shapes.
    distinct = list(dict.fromkeys(texts))
    where = {text: i for i, text in enumerate(distinct)}
    padded = min(len(texts), -(-len(distinct) // 16) * 16)
    distinct += [distinct[-1]] * (padded - len(distinct))
    out.update(image=images, text=np.asarray(prepare_text(distinct)),
               text_index=np.asarray([where[t] for t in texts], np.int32))
    if len(owners) != len(examples):
        out["image_index"] = np.asarray(owners, np.int32)
    return out


def _need_text(prepare_text) -> None:
    if prepare_text is None:
        raise ValueError("concatenated fusion encodes text with the text tower: pass "
                         "prepare_text (a tokenizer, or CLIPPO's renderer)")


def features(model, batch: dict, *,
             normalize: tuple[Sequence[float], Sequence[float]]) -> Float[Array, "batch dim"]:
    """The model's embeddings of a batch's inputs (`image`, `text`, `text_b`, those present),
    concatenated in that order, one row per question (`image_index` and `text_index` pick
    each row's image and text among those encoded): what the classification head reads."""
    parts = []
    if "image" in batch:
        image = model.encode_image(normalize_images(batch["image"], *normalize))
        parts.append(image[batch["image_index"]] if "image_index" in batch else image)
    for name in ("text", "text_b"):
        if name in batch:
            text = model.encode_text(batch[name])
            parts.append(text[batch[f"{name}_index"]] if f"{name}_index" in batch else text)
    return jnp.concatenate(parts, axis=-1)
