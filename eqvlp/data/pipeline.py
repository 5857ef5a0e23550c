"""The input pipeline: a source (the embedded shapes dataset or webdataset shards) through grain.

```
source --shuffle(seed)--repeat--slice(process)--> random_map(decode, augment, tokenize | render)
       --> worker processes (mp_prefetch) --> drop and count bad samples --> batch --> host dict
```

Everything before the workers is a `grain.MapDataset`, a pure function of the sample index and
the seed: sample i of epoch e is decoded and augmented the same way on every run, so the
iterator's state (an index and the skip counts) is all a checkpoint needs to continue at exactly
the next sample. Each process of a multi-process run reads every `process_count`-th sample of
the one global order, so processes never read the same sample and together read the same
samples as one process would (`global_batch` then assembles the global jax.Array).

Images leave the pipeline as uint8 and are normalised on the device (`normalize_images`).
"""

import dataclasses
import json
from collections.abc import Iterator, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import grain
import numpy as np

from eqvlp.config_checks import check_fields
from eqvlp.data.shards import ShardSource
from eqvlp.data.shapes import Shapes, ShapesConfig
from eqvlp.data.text_augment import TextAugment, augment_text
from eqvlp.data.transforms import ImageAugment, augment_image, decode_image, eval_image
from eqvlp.render.renderer import RenderConfig

MAX_EXAMPLES = 5  # offending `shard:key`s kept per reason


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What to read and how to turn a sample into model inputs.

    **Arguments:**
    - `data`: `"shapes"` (the embedded dataset) or shards: a brace pattern, glob or list.
    - `split`, `num_samples`, `shapes`: the embedded dataset's split, length and drawing options.
    - `image_size`: output size, `N` or `(height, width)` (CLIPA's low-res phases use a smaller one).
    - `training`: random resized crop (+ flip, colour jitter: `augment`), shuffled, repeated
      forever; otherwise resize + centre crop, in order, one pass.
    - `views`: augmented views per image (clip-rocket); images are then `(views, h, w, 3)`.
    - `text`: `"tokens"` (BPE ids, needs a tokenizer), `"render"` (CLIPPO: uint8 images of the
      caption at `render_size`, drawn as `render` says) or `"raw"` (the caption strings, for
      evaluation). A CLIPPO run takes `render` from the model's config, so training and
      evaluation draw text alike.
    - `context_length`: token ids per caption (`[BOS] ... [EOS] [PAD]...`).
    - `text_augment`: EDA augmentation of captions (training only); with `views > 1` the text
      becomes `(views, ...)`: view 0 the caption, the others augmented.
    - `syntax_words`: CLIPA syntax masking: keep this many words by part of speech before
      tokenizing (the jit-able truncate/random/block reductions run on the device instead).
    - `caption_field`, `label_field`: fields of `KEY.json` used when `KEY.txt` / `KEY.cls`
      are absent.
    - `label_key`: the record field that becomes `label` (shards: `label`; the shapes dataset
      also has `shape`, `colour` and `shape_colour`, one per zero-shot task).
    - `batch_size`: the global batch; each of `process_count` processes gets an equal share.
    - `workers`: grain worker processes decoding in parallel (0: in this process).
    """

    data: str | tuple[str, ...] = "shapes"
    split: str = "train"
    num_samples: int | None = None
    shapes: ShapesConfig = ShapesConfig()
    image_size: int | tuple[int, int] = 64
    training: bool = True
    augment: ImageAugment = ImageAugment()
    views: int = 1
    text: Literal["tokens", "render", "raw"] = "tokens"
    context_length: int = 32
    render_size: int | tuple[int, int] | None = None
    render: RenderConfig = RenderConfig()
    text_augment: TextAugment | None = None
    syntax_words: int | None = None
    caption_field: str = "caption"
    label_field: str = "label"
    label_key: str = "label"
    batch_size: int = 64
    seed: int = 0
    workers: int = 0
    worker_buffer: int = 4
    cache_dir: str | None = None

    def __post_init__(self):
        check_fields(self)
        if self.views < 1:
            raise ValueError(f"DataConfig.views must be >= 1, got {self.views}")
        if self.batch_size < 1:
            raise ValueError(f"DataConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise ValueError(f"DataConfig.workers must be >= 0, got {self.workers}")
        if self.syntax_words is not None and self.syntax_words < 1:
            raise ValueError(f"DataConfig.syntax_words must be >= 1, got {self.syntax_words}")
        _size(self.image_size)

    @property
    def size(self) -> tuple[int, int]:
        """`image_size` as (height, width)."""
        return _size(self.image_size)


def _size(value) -> tuple[int, int]:
    size = (value, value) if isinstance(value, int) else tuple(value)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"image size {value!r}: use a positive int or (height, width)")
    return size


@runtime_checkable
class Source(Protocol):
    """What the pipeline reads: random access to records (grain's `RandomAccessDataSource`)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict: ...


def make_source(config: DataConfig) -> Source:
    """The random-access source named by `config.data`."""
    if config.data == "shapes":
        shapes = dataclasses.replace(config.shapes, image_size=config.image_size)
        return Shapes(config.split, num_samples=config.num_samples, config=shapes)
    return ShardSource(config.data, caption_field=config.caption_field,
                       label_field=config.label_field, cache_dir=config.cache_dir)


class Preprocess(grain.transforms.RandomMap):
    """One record -> model inputs (or a record naming why it was dropped). Picklable, so it
    runs in grain's worker processes."""

    def __init__(self, config: DataConfig, tokenizer=None):
        if config.text == "tokens" and tokenizer is None:
            raise ValueError(
                "DataConfig.text='tokens' needs a tokenizer: pass tokenizer= (e.g. "
                "eqvlp.data.fit_tokenizer(source) or eqvlp.tokenizer.load_tokenizer(path)), "
                "or use text='render' / 'raw'"
            )
        self.config, self.tokenizer = config, tokenizer

    def random_map(self, record: dict, rng: np.random.Generator) -> dict:
        out = {"index": np.int64(record.get("index", -1)), "key": record.get("key", ""),
               "shard": record.get("shard", ""), "problem": record.get("problem")}
        if out["problem"] is not None:
            return out
        try:
            out["image"] = self._image(record, rng)
        except ValueError as error:
            return {**out, "problem": "corrupt_image", "error": str(error)[:200]}
        text = self._caption(record, rng)
        if text is None:
            return {**out, "problem": "missing_caption"}
        out["text"] = self._text(text, rng)
        out["label"] = np.int32(record.get(self.config.label_key, -1))
        if not self.config.training:  # every caption, for retrieval
            out["captions"] = list(record.get("captions") or [text])
        return out

    def _image(self, record: dict, rng: np.random.Generator) -> np.ndarray:
        cfg, image = self.config, record["image"]
        if isinstance(image, (bytes, bytearray)):
            image = np.asarray(decode_image(image, target=cfg.size))
        if not cfg.training:
            return eval_image(image, cfg.size)
        views = [augment_image(image, cfg.size, cfg.augment, rng) for _ in range(cfg.views)]
        return views[0] if cfg.views == 1 else np.stack(views)

    def _caption(self, record: dict, rng: np.random.Generator) -> str | None:
        captions = record.get("captions")
        if captions and self.config.training:
            text = captions[rng.integers(len(captions))]
        else:
            text = record.get("text")
        if not isinstance(text, str) or not text.strip():
            return None
        return text.strip()

    def _text(self, text: str, rng: np.random.Generator):
        cfg = self.config
        texts = [text]
        if cfg.training and cfg.text_augment is not None:
            texts = [text] + [augment_text(text, cfg.text_augment, rng)
                              for _ in range(max(cfg.views, 2) - 1)]
            if cfg.views == 1:
                texts = texts[1:]
        if cfg.syntax_words is not None:
            from eqvlp.masking import syntax_reduce

            texts = [syntax_reduce(t, cfg.syntax_words) for t in texts]
        if cfg.text == "raw":
            return texts[0] if len(texts) == 1 else texts
        if cfg.text == "render":
            from eqvlp.render import render_text

            encoded = render_text(texts, image_size=cfg.render_size or cfg.size,
                                  **dataclasses.asdict(cfg.render))
        else:
            from eqvlp.tokenizer import tokenize

            encoded = tokenize(self.tokenizer, texts, context_length=cfg.context_length)
        return encoded[0] if len(texts) == 1 else encoded


class SkipCounts:
    """Samples dropped so far, by reason, with the first few `shard:key`s of each."""

    def __init__(self, counts: dict[str, int] | None = None,
                 examples: dict[str, list[str]] | None = None):
        self.counts = dict(counts or {})
        self.examples = {k: list(v) for k, v in (examples or {}).items()}

    def add(self, record: dict) -> None:
        reason = record["problem"]
        self.counts[reason] = self.counts.get(reason, 0) + 1
        seen = self.examples.setdefault(reason, [])
        if len(seen) < MAX_EXAMPLES:
            where = f"{record.get('shard') or 'shapes'}:{record.get('key')}"
            seen.append(where + (f" ({record['error']})" if record.get("error") else ""))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {"counts": dict(self.counts), "examples": {k: list(v) for k, v in self.examples.items()}}

    def __repr__(self) -> str:
        return f"SkipCounts({self.counts})"


class _DropBad(grain.DatasetIterator):
    """Drops records that name a problem. It runs where the records are made (in the worker
    processes), so it cannot count: each drop rides on the next good record (`dropped`), and
    the batches carry them to `_CountSkips` in the main process. Drops after the last good
    record of a finite pass come out as one record marked `only_drops`."""

    def __init__(self, parent: grain.DatasetIterator):
        super().__init__(parent)
        self._pending: list[dict] = []

    def __next__(self) -> dict:
        while True:
            try:
                record = next(self._parent)
            except StopIteration:
                if not self._pending:
                    raise
                record, self._pending = {"only_drops": True, "dropped": self._pending}, []
                return record
            if record.get("problem") is None:
                record["dropped"], self._pending = self._pending, []
                return record
            self._pending.append({k: record.get(k) for k in ("problem", "shard", "key", "error")})

    def get_state(self) -> dict:
        return self._parent.get_state()

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state)
        self._pending = []


class _DropBadDataset(grain.IterDataset):
    def __iter__(self) -> grain.DatasetIterator:
        return _DropBad(self._parent.__iter__())


class _CountSkips(grain.DatasetIterator):
    """Counts the drops each batch carries (main process) and hides batches that hold only
    drops; its state is the parent's plus the counts, so a resumed run reports the same
    totals."""

    def __init__(self, parent: grain.DatasetIterator, skipped: "SkipCounts"):
        super().__init__(parent)
        self.skipped = skipped

    def __next__(self) -> dict:
        while True:
            batch = next(self._parent)
            for record in batch.pop("dropped"):
                self.skipped.add(record)
            if batch["key"]:
                return batch

    def get_state(self) -> dict:
        return {"parent": self._parent.get_state(), "skipped": self.skipped.to_dict()}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        restored = state["skipped"]
        self.skipped.counts = dict(restored["counts"])
        self.skipped.examples = {k: list(v) for k, v in restored["examples"].items()}


class _CountSkipsDataset(grain.IterDataset):
    def __init__(self, parent: grain.IterDataset, skipped: "SkipCounts"):
        super().__init__(parent)
        self.skipped = skipped

    def __iter__(self) -> grain.DatasetIterator:
        return _CountSkips(self._parent.__iter__(), self.skipped)


BATCH_FIELDS = ("image", "text", "label", "index", "captions")


def collate(records: Sequence[dict]) -> dict[str, Any]:
    """Stacks records into a host batch: arrays for images/ids/labels/indices, lists for
    strings (raw captions and keys), and the drops the records carry."""
    dropped = [d for r in records for d in r.get("dropped", [])]
    records = [r for r in records if not r.get("only_drops")]
    batch: dict[str, Any] = {"dropped": dropped, "key": [r["key"] for r in records]}
    if not records:
        return batch
    for name in BATCH_FIELDS:
        if name not in records[0]:
            continue
        values = [r[name] for r in records]
        if isinstance(values[0], (str, list)):
            batch[name] = values
        else:
            batch[name] = np.stack(values)
    return batch


class Loader:
    """Batches of host arrays from a `DataConfig`, resumable and counting what it skips.

    `next(loader)` is `{"image": uint8 (b, h, w, 3) [or (b, views, h, w, 3)], "text": int32
    (b, context_length) | uint8 rendered (b, h, w, 3) | list[str], "label": int32 (b,),
    "index": int64 (b,) global sample indices, "key": list[str]}` with `b` this process's share
    of `batch_size`. `state()` is a JSON-able dict for checkpoints; `Loader(..., state=...)`
    continues at exactly the next sample.

    **Arguments:**
    - `config`: the `DataConfig`.
    - `tokenizer`: a `tokenizers.Tokenizer` with eqvlp's special ids (for `text="tokens"`).
    - `process_index`, `process_count`: this process and how many read (default: JAX's).
    - `source`: a ready source (default `make_source(config)`); any sequence of records works.
    - `state`: a `state()` from an earlier loader of the same config.
    """

    def __init__(self, config: DataConfig, *, tokenizer=None, process_index: int | None = None,
                 process_count: int | None = None, source: Source | None = None,
                 state: dict | None = None):
        if process_index is None or process_count is None:
            import jax

            process_index, process_count = jax.process_index(), jax.process_count()
        if config.batch_size % process_count:
            raise ValueError(
                f"batch_size {config.batch_size} does not divide over {process_count} "
                f"processes: use a multiple of {process_count}"
            )
        self.config = config
        self.source = make_source(config) if source is None else source
        if len(self.source) == 0:
            raise ValueError(f"data {config.data!r} holds no samples")
        self.process_index, self.process_count = process_index, process_count
        self.local_batch_size = config.batch_size // process_count
        self.skipped = SkipCounts()
        dataset = grain.MapDataset.source(self.source)
        if config.training:
            dataset = dataset.shuffle(seed=config.seed).repeat(None)
        # Augmentation is seeded by the position in the global order (before the split over
        # processes), so a sample is cropped the same way however many processes read.
        dataset = dataset.random_map(Preprocess(config, tokenizer), seed=config.seed)
        dataset = dataset[process_index::process_count]
        iterable = dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
        # Batches are made in the workers: one batch crosses to this process instead of every
        # record (per-record transfer cost more than decoding), so with workers each batch holds
        # one worker's samples and the order depends on the number of workers.
        iterable = _DropBadDataset(iterable).batch(
            self.local_batch_size, drop_remainder=config.training, batch_fn=collate)
        if config.workers:
            _absl_flags_ready()
            iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(
                num_workers=config.workers, per_worker_buffer_size=config.worker_buffer))
        iterable = _CountSkipsDataset(iterable, self.skipped)
        self._iterator = iter(iterable)
        if state is not None:
            self.restore(state)

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        return next(self._iterator)

    def state(self) -> dict:
        """The iterator's position and skip counts, JSON-able (checkpoint it with the model)."""
        return json.loads(json.dumps(self._iterator.get_state(), default=_plain))

    def restore(self, state: dict) -> None:
        """Continues from a `state()` taken from a loader of the same config."""
        self._iterator.set_state(state)

    def close(self) -> None:
        """Stops worker processes (also done at exit)."""
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()


def _absl_flags_ready() -> None:
    """grain's worker processes read absl flags; outside an absl app nobody parsed them, so
    their defaults are taken as parsed (what `absl.app.run` would do with no arguments)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot checkpoint {type(value).__name__} in loader state")


def fit_tokenizer(source: Source, *, vocab_size: int = 1000, max_samples: int = 20_000,
                  seed: int = 0):
    """A BPE tokenizer trained on the captions of (up to `max_samples` random samples of) a
    source: the run directory saves it as `tokenizer.json`."""
    from eqvlp.data.shapes import captions_corpus
    from eqvlp.tokenizer import train_tokenizer

    if isinstance(source, Shapes):  # its captions need no image drawn
        return train_tokenizer(captions_corpus(min(max_samples, 2_000), config=source.config),
                               vocab_size=vocab_size)
    rng = np.random.default_rng(seed)
    count = min(len(source), max_samples)
    indices = rng.choice(len(source), count, replace=False) if count < len(source) else range(count)

    def captions():
        for i in indices:
            record = source[int(i)]
            if record.get("problem"):
                continue
            yield from record.get("captions") or ([record["text"]] if record.get("text") else [])

    return train_tokenizer(captions(), vocab_size=vocab_size)


def global_batch(batch: dict, mesh, *, fields: Sequence[str] = ("image", "text", "label")) -> dict:
    """This process's share of a batch -> global `jax.Array`s split over the mesh's batch axes
    (`jax.make_array_from_process_local_data`); other fields stay on the host."""
    import jax

    from eqvlp.sharding import batch_sharding

    out = dict(batch)
    for name in fields:
        value = batch.get(name)
        if isinstance(value, np.ndarray):
            out[name] = jax.make_array_from_process_local_data(
                batch_sharding(mesh, value.ndim), value)
    return out
