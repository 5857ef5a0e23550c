"""Zero-shot classification: class embeddings from prompt templates, and accuracy metrics.

CLIP's protocol: every template is filled with every class name and embedded; each embedding
is L2-normalised, the embeddings of a class are averaged and the mean re-normalised (prompt
ensembling). An image's logits are `100 * image @ class_embs.T` on normalised features.

Ranks and ties: the rank of the true class is the number of OTHER classes whose logit is at
least as high, and a sample is top-k correct when that rank is below k. A tie therefore counts
against the prediction (all-equal logits give top-1 0, not a lucky first index), and top-k is
1.0 by definition when k >= the number of classes.
"""

import json
import string
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np
from jaxtyping import Float, Int

from eqvlp.eval.features import embed_texts

__all__ = [
    "check_ks",
    "check_labels",
    "class_embeddings",
    "classification_metrics",
    "load_zeroshot_file",
    "text_encoder",
    "zeroshot",
]

TextEncoder = Callable[[list[str]], np.ndarray]


def text_encoder(
    model,
    prepare: Callable[[list[str]], np.ndarray],
    *,
    batch_size: int = 256,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = False,
) -> TextEncoder:
    """`list[str] -> (n, dim)` normalised float32 features: `prepare`, then `embed_texts`.

    `prepare` turns strings into the model's text input, e.g.
    `lambda t: tokenize(tok, t, context_length=77)` or CLIPPO's `model.render`. Every call
    reuses one compiled step (the batch shape is fixed).
    """

    def encode(texts: list[str]) -> np.ndarray:
        return embed_texts(model, np.asarray(prepare(list(texts))), batch_size=batch_size,
                           mesh=mesh, progress=progress, desc="class prompts")

    return encode


def class_embeddings(
    encode_texts: TextEncoder,
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    chunk_size: int = 2048,
) -> Float[np.ndarray, "classes dim"]:
    """One L2-normalised embedding per class, ensembled over the templates (CLIP's protocol).

    **Arguments:**

    - `encode_texts`: `list[str] -> (n, dim)` features (normalised or not), e.g. from
      `text_encoder`.
    - `classnames`: C names; `templates`: strings with one `{}`, e.g. `"a photo of a {}."`.
    - `chunk_size`: strings per call of `encode_texts`, which bounds host memory (CLIPPO
      renders every string to an image).

    **Returns:** float32 `(C, dim)`, row c the re-normalised mean of class c's normalised
    template embeddings.
    """
    fn = "class_embeddings"
    classnames, templates = _check_strings(fn, classnames, templates)
    texts = [template.format(name) for name in classnames for template in templates]
    parts = []
    for start in range(0, len(texts), chunk_size):
        chunk = texts[start:start + chunk_size]
        z = np.asarray(encode_texts(chunk))
        if z.ndim != 2 or z.shape[0] != len(chunk):
            raise ValueError(
                f"{fn}: encode_texts returned shape {z.shape} for {len(chunk)} texts: it must "
                "return one (dim,) vector per text"
            )
        parts.append(z.astype(np.float64))
    z = np.concatenate(parts).reshape(len(classnames), len(templates), -1)
    return _unit(_unit(z).mean(axis=1)).astype(np.float32)


def zeroshot(
    image_features: Float[np.ndarray, "n dim"],
    class_embs: Float[np.ndarray, "classes dim"],
    labels: Int[np.ndarray, " n"],
    *,
    ks: Sequence[int] = (1, 5),
) -> dict:
    """Zero-shot classification metrics with logits `100 * image @ class_embs.T`.

    Both sides are L2-normalised here (a no-op on normalised features), so the logits are
    100 x cosine similarities, as in CLIP.

    **Returns:** `classification_metrics` of those logits.
    """
    fn = "zeroshot"
    x, w = np.asarray(image_features), np.asarray(class_embs)
    for name, a in (("image_features", x), ("class_embs", w)):
        if a.ndim != 2 or not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"{fn}: {name} must be float (rows, dim), got {a.dtype} {a.shape}")
    if w.shape[0] == 0:
        raise ValueError(f"{fn}: class_embs is empty: pass one embedding per class")
    if x.shape[1] != w.shape[1]:
        raise ValueError(
            f"{fn}: image_features have dim {x.shape[1]} but class_embs have dim {w.shape[1]}: "
            "embed both with the same model"
        )
    logits = 100.0 * (_unit(x).astype(np.float32) @ _unit(w).astype(np.float32).T)
    return classification_metrics(logits, labels, ks=ks)


def classification_metrics(
    logits: Float[np.ndarray, "n classes"],
    labels: Int[np.ndarray, " n"],
    *,
    ks: Sequence[int] = (1, 5),
) -> dict:
    """Top-k accuracies and per-class recall of `(N, C)` logits (ties count against).

    **Returns:** a dict with

    - `top{k}` for each k in `ks`: the fraction of samples whose label ranks below k (1.0 when
      k >= C);
    - `per_class_accuracy`: a list of C top-1 accuracies, `None` for a class with no samples;
    - `mean_per_class_recall`: their mean over the classes that have samples;
    - `num_samples`: N.
    """
    fn = "classification_metrics"
    logits = np.asarray(logits)
    if logits.ndim != 2 or not np.issubdtype(logits.dtype, np.floating):
        raise ValueError(f"{fn}: logits must be float (samples, classes), got {logits.dtype} {logits.shape}")
    n, num_classes = logits.shape
    if num_classes == 0:
        raise ValueError(f"{fn}: logits have no classes: pass at least one class")
    labels = check_labels(fn, "labels", labels, n, num_classes)
    ks = check_ks(fn, ks)
    if n == 0:
        raise ValueError(f"{fn}: no samples: pass at least one")
    if not np.all(np.isfinite(logits)):
        raise ValueError(f"{fn}: logits contain NaN or inf: check the features")
    target = logits[np.arange(n), labels]
    rank = np.sum(logits >= target[:, None], axis=1) - 1  # other classes at least as high
    out = {f"top{k}": float(np.mean(rank < k)) for k in ks}
    correct = rank == 0
    counts = np.bincount(labels, minlength=num_classes)
    hits = np.bincount(labels, weights=correct, minlength=num_classes)
    per_class = [float(h / c) if c else None for h, c in zip(hits, counts)]
    out["per_class_accuracy"] = per_class
    out["mean_per_class_recall"] = float(np.mean([a for a in per_class if a is not None]))
    out["num_samples"] = int(n)
    return out


def load_zeroshot_file(path: str | Path) -> tuple[list[str], list[str]]:
    """Class names and templates from JSON `{"classnames": [...], "templates": [...]}`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no zero-shot file at {path}: write JSON with keys 'classnames' and 'templates'"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with 'classnames' and 'templates'")
    missing = [key for key in ("classnames", "templates") if key not in data]
    if missing:
        raise ValueError(
            f"{path}: missing key(s) {missing}: the file needs 'classnames' (a list of names) and "
            "'templates' (a list like [\"a photo of a {}.\"])"
        )
    classnames, templates = _check_strings(str(path), data["classnames"], data["templates"])
    seen, duplicates = set(), []
    for name in classnames:
        if name in seen:
            duplicates.append(name)
        seen.add(name)
    if duplicates:
        raise ValueError(
            f"{path}: duplicate class names {duplicates[:5]}: two classes with one name cannot "
            "be told apart; rename them (e.g. 'crane (bird)', 'crane (machine)')"
        )
    return classnames, templates


def check_labels(fn: str, name: str, labels, n: int, num_classes: int) -> np.ndarray:
    """Labels as an int64 `(n,)` array in `[0, num_classes)`, or a clear ValueError."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(
            f"{fn}: {name} must have shape ({n},), one per sample, got {labels.shape}"
        )
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{fn}: {name} must be integer class indices, got {labels.dtype}")
    labels = labels.astype(np.int64)
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ValueError(
            f"{fn}: {name} must lie in [0, {num_classes}), got {sorted(set(bad.tolist()))[:5]}: "
            "check the label mapping or the number of classes"
        )
    return labels


def check_ks(fn: str, ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or not all(isinstance(k, (int, np.integer)) and k >= 1 for k in ks):
        raise ValueError(f"{fn}: ks must be positive ints, got {ks}: e.g. (1, 5)")
    return tuple(int(k) for k in ks)


def _check_strings(where: str, classnames, templates) -> tuple[list[str], list[str]]:
    for key, values in (("classnames", classnames), ("templates", templates)):
        if isinstance(values, str) or not isinstance(values, Sequence):
            raise ValueError(f"{where}: {key} must be a list of strings, got {type(values).__name__}")
        if not values:
            raise ValueError(f"{where}: {key} is empty: give at least one")
        if not all(isinstance(v, str) for v in values):
            raise ValueError(f"{where}: {key} must all be strings")
    for template in templates:
        _check_template(where, template)
    return list(classnames), list(templates)


def _check_template(where: str, template: str) -> None:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError:
        fields = None
    if fields != [""]:
        raise ValueError(
            f"{where}: template {template!r} must hold exactly one '{{}}' for the class name "
            "(write literal braces as '{{' and '}}')"
        )


def _unit(z: np.ndarray) -> np.ndarray:
    """Rows L2-normalised in float64, `z / max(||z||, 1e-6)` as `eqvlp.losses.normalize`."""
    z = np.asarray(z, np.float64)
    return z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-6)
