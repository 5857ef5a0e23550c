"""EDA caption augmentation (Wei & Zou 2019), the strong text views of CLIP-rocket.

CLIP-rocket (Fini et al. 2023) contrasts each image with an augmented copy of its caption as
well as the caption itself. The augmentations are EDA's word-level edits: synonym replacement,
random swaps and random deletion, plus optional stop-word removal. They change the words but
should not change what the caption says, so the synonym table below holds only words that are
interchangeable in captions (no colour is replaced by another colour; "grey" and "gray" are
spelling variants).

Everything is a pure function of the text, the config and a `np.random.Generator`, cheap
enough to run per sample in grain worker processes.
"""

import dataclasses
import math
import re

import numpy as np

# Groups of words that can replace one another in a caption; each word appears once.
_SYNONYM_GROUPS = (
    ("photo", "picture", "photograph", "image", "pic", "snapshot"),
    ("photos", "pictures", "photographs", "images"),
    ("big", "large", "huge"),
    ("small", "little", "tiny"),
    ("round", "circular", "rounded"),
    ("beautiful", "pretty", "lovely"),
    ("happy", "cheerful", "joyful"),
    ("fast", "quick", "rapid"),
    ("man", "guy", "gentleman"),
    ("men", "guys", "gentlemen"),
    ("woman", "lady"),
    ("women", "ladies"),
    ("child", "kid"),
    ("children", "kids"),
    ("people", "persons", "folks"),
    ("car", "automobile"),
    ("bike", "bicycle"),
    ("plane", "airplane", "aircraft"),
    ("truck", "lorry"),
    ("street", "road"),
    ("sidewalk", "pavement"),
    ("ocean", "sea"),
    ("rock", "stone"),
    ("rocks", "stones"),
    ("forest", "woods"),
    ("path", "trail"),
    ("field", "meadow"),
    ("grass", "lawn"),
    ("house", "home"),
    ("store", "shop"),
    ("sofa", "couch"),
    ("plate", "dish"),
    ("cup", "mug"),
    ("tv", "television"),
    ("phone", "telephone"),
    ("pants", "trousers"),
    ("glasses", "spectacles"),
    ("bathroom", "restroom"),
    ("sitting", "seated"),
    ("walking", "strolling"),
    ("running", "jogging"),
    ("smiling", "grinning"),
    ("looking", "gazing"),
    ("talking", "speaking"),
    ("shows", "depicts"),
    ("showing", "depicting"),
    ("under", "beneath", "below"),
    ("above", "over"),
    ("inside", "within"),
    ("view", "scene"),
    ("closeup", "close-up"),
    ("grey", "gray"),
    ("colour", "color"),
    ("colourful", "colorful", "vibrant"),
    ("empty", "vacant"),
    ("wet", "damp"),
    ("drawing", "sketch"),
    ("logo", "emblem"),
)

SYNONYMS: dict[str, tuple[str, ...]] = {
    word: tuple(other for other in group if other != word)
    for group in _SYNONYM_GROUPS
    for word in group
}
"""Each word of the built-in table and the words that may replace it (lower case)."""

STOP_WORDS = frozenset(
    "a an the this that these those of in on at to for with by from into onto and or "
    "is are was were be been being it its there here some very has have".split()
)
"""The small English stop-word list used by `TextAugment.stopword`."""

# A word is optional leading punctuation, a core of letters, digits, apostrophes or hyphens,
# and optional trailing punctuation: '"Big', 'dog,' and 'photo.' look up "big", "dog", "photo".
_WORD = re.compile(r"^(\W*)([\w'-]+?)(\W*)$")


@dataclasses.dataclass(frozen=True)
class TextAugment:
    """Per-word probabilities of EDA's edits; all zero is the identity.

    - `delete`: each word is dropped with this probability (at least one word always stays).
    - `swap`: each word starts a swap of two random positions with this probability, so a
      caption of `n` words gets `Binomial(n, swap)` swaps (EDA: `swap * n` swaps).
    - `stopword`: each stop word (`STOP_WORDS`) is dropped with this probability.
    - `synonym`: each word in `SYNONYMS` is replaced, with this probability, by one of its
      synonyms chosen uniformly.
    """

    delete: float = 0.1
    swap: float = 0.1
    stopword: float = 0.0
    synonym: float = 0.1

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 1):
                raise ValueError(
                    f"TextAugment.{field.name} is a per-word probability in [0, 1], got "
                    f"{value!r}: EDA uses 0.1, and 0 turns the edit off"
                )


def augment_text(text: str, augment: TextAugment, rng: np.random.Generator) -> str:
    """An EDA view of a caption: synonyms, then stop-word removal, swaps and deletion.

    Words are split on white space and joined with single spaces; punctuation stays attached
    to its word, and a replaced word keeps its punctuation and capitalisation. Removals never
    leave the caption empty: if every word would go, one of them, chosen at random, stays.
    Empty or blank text, and any text when all probabilities are 0, is returned unchanged.

    **Arguments:**

    - `text`: the caption.
    - `augment`: the per-word probabilities.
    - `rng`: the only source of randomness: the same generator state gives the same view.
    """
    words = text.split()
    if not words or not (augment.delete or augment.swap or augment.stopword or augment.synonym):
        return text
    if augment.synonym:
        words = _replace_synonyms(words, augment.synonym, rng)
    if augment.stopword:
        is_stop = np.array([_core(w).lower() in STOP_WORDS for w in words])
        words = _drop(words, is_stop & (rng.random(len(words)) < augment.stopword), rng)
    if augment.swap and len(words) > 1:
        words = _swap(words, int(rng.binomial(len(words), augment.swap)), rng)
    if augment.delete:
        words = _drop(words, rng.random(len(words)) < augment.delete, rng)
    return " ".join(words)


def _core(word: str) -> str:
    match = _WORD.match(word)
    return match.group(2) if match else word


def _replace_synonyms(words: list[str], p: float, rng: np.random.Generator) -> list[str]:
    words = list(words)
    draws = rng.random(len(words))
    for i, word in enumerate(words):
        match = _WORD.match(word)
        if match is None or draws[i] >= p:
            continue
        head, core, tail = match.groups()
        options = SYNONYMS.get(core.lower())
        if options:
            words[i] = head + _same_case(core, options[int(rng.integers(len(options)))]) + tail
    return words


def _same_case(original: str, replacement: str) -> str:
    if len(original) > 1 and original.isupper():
        return replacement.upper()
    if original[0].isupper():
        return replacement[0].upper() + replacement[1:]
    return replacement


def _swap(words: list[str], n: int, rng: np.random.Generator) -> list[str]:
    words = list(words)
    for _ in range(n):
        i, j = rng.choice(len(words), size=2, replace=False)
        words[i], words[j] = words[j], words[i]
    return words


def _drop(words: list[str], drop: np.ndarray, rng: np.random.Generator) -> list[str]:
    if drop.all():
        drop = drop.copy()
        drop[rng.integers(len(words))] = False
    return [w for w, d in zip(words, drop) if not d]
