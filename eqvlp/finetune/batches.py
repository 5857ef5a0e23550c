"""Batches of task examples: shuffled and endless for training, in order for evaluation.

Training position `p` (counting examples from the start of the run) reads item
`permutation(seed, p // n)[p % n]`, with the augmentation generator seeded by `(seed, p)`: a
run resumed at a saved position reads exactly what it would have read. A bad sample (an
unreadable shard image) is counted by reason and the next position takes its place, so
batches stay full. The next batch is prepared on a background thread while the device works.
"""

import concurrent.futures
from collections.abc import Callable, Iterator

import numpy as np

from eqvlp.data import SkipCounts


class TrainBatches:
    """Endless shuffled batches of `make_batch(examples)` from a task's training source.

    `state()` (examples read, bad ones included, and the skip counts) describes the data up
    to the last batch handed out: `TrainBatches(..., state=...)` continues right after it.

    **Arguments:**

    - `source`, `example`: the task's source and `example(source, index, rng, training)`.
    - `make_batch`: a list of examples -> the host arrays of one batch.
    - `state`: where to start (a saved `state()` resumes exactly).
    """

    def __init__(self, source, example: Callable, make_batch: Callable, *, batch_size: int,
                 seed: int, state: dict | None = None):
        if len(source) == 0:
            raise ValueError("the task's training source holds no samples")
        self.source, self.example, self.make_batch = source, example, make_batch
        self.batch_size, self.seed = batch_size, seed
        state = state or {"position": 0, "skipped": {}}
        self.position = int(state["position"])
        self.skipped = SkipCounts(**state["skipped"])
        self._counts = SkipCounts(**state["skipped"])  # the reader thread's own
        self._order: tuple[int, np.ndarray] | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1)
        self._next = self._pool.submit(self._read, self.position)

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.source))
        if self._order is None or self._order[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._order = (epoch, rng.permutation(len(self.source)))
        return int(self._order[1][offset])

    def _read(self, position: int) -> tuple[dict, int, dict]:
        examples, start = [], position
        while len(examples) < self.batch_size:
            rng = np.random.default_rng([self.seed, position])
            item = self.example(self.source, self._index(position), rng, True)
            position += 1
            if item.get("problem") is not None:
                self._counts.add(item)
                if position - start > 10 * self.batch_size:
                    raise ValueError(f"over 90% of {position - start} training samples in a row "
                                     f"are bad: {self._counts.counts}, e.g. "
                                     f"{self._counts.examples}")
                continue
            examples.append(item)
        return self.make_batch(examples), position, self._counts.to_dict()

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        batch, self.position, skipped = self._next.result()
        self.skipped = SkipCounts(**skipped)
        self._next = self._pool.submit(self._read, self.position)
        return batch

    def state(self) -> dict:
        """JSON-able position and skip counts after the last batch handed out."""
        return {"position": self.position, "skipped": self.skipped.to_dict()}

    def close(self) -> None:
        self._next.cancel()
        self._pool.shutdown(wait=True)


def eval_batches(source, example: Callable, make_batch: Callable, *, batch_size: int,
                 num_samples: int, skipped: SkipCounts | None = None) -> Iterator[dict]:
    """The first `num_samples` usable items of `source`, in order, as batches (the last one
    may be shorter); bad samples are counted in `skipped` and left out."""
    rng = np.random.default_rng(0)  # evaluation does not augment
    examples, index, used = [], 0, 0
    while index < len(source) and used < num_samples:
        item = example(source, index, rng, False)
        index += 1
        if item.get("problem") is not None:
            if skipped is not None:
                skipped.add(item)
            continue
        examples.append(item)
        used += 1
        if len(examples) == batch_size:
            yield make_batch(examples)
            examples = []
    if examples:
        yield make_batch(examples)
