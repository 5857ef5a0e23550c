"""CLIPA text token reduction on tokenized captions `[BOS] content... [EOS] [PAD]...`.

The jit-able reducers keep BOS, choose at most `length - 2` content tokens, then write EOS and
padding, so EOS pooling still finds the end of the text. The EOS id is always the model's (no
default: eqvlp's tokenizer ends with 2, CLIP's with 49407); `TextMask.for_model(model)` reads it
from the model, and the pad id (default 0, eqvlp's tokenizer) with it:

- truncate: the first content tokens;
- random: content tokens chosen uniformly at random, original order kept;
- block: a contiguous window of content tokens at a random start.

Syntax masking needs words, not ids, so it runs on the host before tokenization
(`syntax_reduce`), as CLIPA does.
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array, Int, PRNGKeyArray

from eqvlp.config_checks import check_fields
from eqvlp.masking.tagger import PRIORITY, tag_words


def _content_count(ids: Int[Array, " seq"], eos_token_id: int) -> Int[Array, ""]:
    """Number of tokens between BOS (position 0) and the first EOS (or the end)."""
    is_eos = ids == eos_token_id
    eos_at = jnp.where(jnp.any(is_eos), jnp.argmax(is_eos), ids.shape[0])
    return jnp.maximum(eos_at - 1, 0)


def _assemble(ids, positions, count, length, eos_token_id, pad_token_id):
    """BOS, `ids[positions[:count]]`, EOS, padding: a `(length,)` row."""
    slots = jnp.arange(length - 2)
    content = jnp.where(slots < count, ids[positions], pad_token_id)
    out = jnp.concatenate([ids[:1], content, jnp.full((1,), pad_token_id, ids.dtype)])
    return out.at[1 + count].set(eos_token_id)


def _check_length(ids, length):
    if ids.ndim != 1:
        raise ValueError(f"text reducers take one sequence (seq,), got {ids.shape}: vmap over the batch")
    if not 2 < length <= ids.shape[0]:
        raise ValueError(
            f"reduced length must be in 3..{ids.shape[0]} (BOS, >= 1 token, EOS), got {length}"
        )


def truncate_text(
    ids: Int[Array, " seq"], length: int, *, eos_token_id: int, pad_token_id: int = 0
) -> Int[Array, " length"]:
    """The first `length - 2` content tokens."""
    _check_length(ids, length)
    count = jnp.minimum(_content_count(ids, eos_token_id), length - 2)
    return _assemble(ids, 1 + jnp.arange(length - 2), count, length, eos_token_id, pad_token_id)


def random_text(
    ids: Int[Array, " seq"],
    key: PRNGKeyArray,
    length: int,
    *,
    eos_token_id: int,
    pad_token_id: int = 0,
) -> Int[Array, " length"]:
    """`length - 2` content tokens chosen uniformly at random, in their original order."""
    _check_length(ids, length)
    n = _content_count(ids, eos_token_id)
    positions = jnp.arange(1, ids.shape[0])
    noise = jnp.where(positions <= n, jax.random.uniform(key, positions.shape), jnp.inf)
    chosen = jnp.sort(positions[jnp.argsort(noise)[: length - 2]])
    return _assemble(ids, chosen, jnp.minimum(n, length - 2), length, eos_token_id, pad_token_id)


def block_text(
    ids: Int[Array, " seq"],
    key: PRNGKeyArray,
    length: int,
    *,
    eos_token_id: int,
    pad_token_id: int = 0,
) -> Int[Array, " length"]:
    """`length - 2` consecutive content tokens starting at a uniformly random position."""
    _check_length(ids, length)
    n = _content_count(ids, eos_token_id)
    start = jax.random.randint(key, (), 0, jnp.maximum(n - (length - 2), 0) + 1)
    positions = jnp.minimum(1 + start + jnp.arange(length - 2), ids.shape[0] - 1)
    return _assemble(ids, positions, jnp.minimum(n, length - 2), length, eos_token_id, pad_token_id)


def syntax_reduce(
    text: str,
    max_words: int,
    *,
    tagger: Callable[[Sequence[str]], Sequence[str]] | None = None,
) -> str:
    """Keeps `max_words` words by part of speech, noun > adjective > verb > other.

    Ties keep the earlier word; kept words return to their original order. `tagger` maps a
    list of words to tags among "NOUN", "ADJ", "VERB" and anything else ("other"); the default
    is eqvlp's small offline tagger.
    """
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    words = text.split()
    if len(words) <= max_words:
        return " ".join(words)
    tags = list((tagger or tag_words)(words))
    if len(tags) != len(words):
        raise ValueError(f"tagger returned {len(tags)} tags for {len(words)} words: one tag per word")
    rank = sorted(range(len(words)), key=lambda i: (PRIORITY.get(tags[i], len(PRIORITY)), i))
    return " ".join(words[i] for i in sorted(rank[:max_words]))


@dataclasses.dataclass(frozen=True)
class TextMask:
    """Which text reduction to apply, the reduced length (BOS and EOS included), and the ids it
    writes.

    `eos_token_id` must be the model's (`TextMask.for_model(model)` fills it, and the pad id,
    from the model's config; eqvlp's train step does so itself): a wrong EOS id breaks EOS
    pooling silently, so there is no default.
    """

    kind: Literal["truncate", "random", "block", "syntax"] = "truncate"
    length: int = 32
    eos_token_id: int | None = None
    pad_token_id: int = 0

    def __post_init__(self):
        check_fields(self)
        if self.length < 3:
            raise ValueError(f"text mask length must be >= 3, got {self.length}")

    def for_model(self, model) -> "TextMask":
        """This mask with the model's EOS and pad ids (`eqvlp.models.text_token_ids`)."""
        # models import masking: resolve at call time
        from eqvlp.models.protocol import text_token_ids

        eos, pad = text_token_ids(model)
        return dataclasses.replace(self, eos_token_id=eos, pad_token_id=pad)

    def __call__(
        self, ids: Int[Array, " seq"], key: PRNGKeyArray | None = None
    ) -> Int[Array, " length"]:
        """Reduces one tokenized caption (for "syntax", tokenize `syntax_reduce`d text)."""
        if self.eos_token_id is None:
            raise ValueError(
                "TextMask has no eos_token_id, and it must write the EOS your model pools at: "
                "use mask.for_model(model), or TextMask(..., eos_token_id=ID) with your "
                "tokenizer's EOS id"
            )
        kw = {"eos_token_id": self.eos_token_id, "pad_token_id": self.pad_token_id}
        if self.kind in ("truncate", "syntax"):
            # syntax reduction already happened on the words; only the length is enforced here
            return truncate_text(ids, self.length, **kw)
        if key is None:
            raise ValueError(f"text mask {self.kind!r} is random: pass a PRNG key")
        fn = random_text if self.kind == "random" else block_text
        return fn(ids, key, self.length, **kw)
