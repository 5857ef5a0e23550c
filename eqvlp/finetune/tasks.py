"""Downstream tasks: labelled examples for fine-tuning, built on the embedded shapes dataset
(no download) or read from the user's shards.

A task is a pair of random-access sources (train and evaluation) of plain dict examples and
what they mean: the class (answer) names and which inputs an example has.

- `shapes-vqa`: an image and a question about it ("colour of the square?", "shape of the
  red one?", "how many shapes?", "is there a circle?"), answered by classification over
  `VQA_ANSWERS`. Questions are drawn per sample from `(seed, split,
  index)`, like the images.
- `shapes-pairs`: two captions; do they describe the same image? Positives are two different
  captions of one scene, negatives a caption of another scene whose main object differs in
  shape or colour (so every pair can be decided from the words).
- `shapes-classify`: an image and its `label_key` (`shape`, `colour` or `shape_colour`).
- `shards`: images and labels (`KEY.cls` or a json `label` field) from webdataset shards.

Examples are `{"key", "label", "kind"}` plus `image` (uint8 `(h, w, 3)`), `text` (question or
first sentence) and `text_b` (second sentence), as the task's `inputs` say. `kind` indexes
`Task.kinds` (VQA question types; 0 otherwise) so accuracy can be reported per kind. A VQA
example holds several questions about one image: its `text`, `label` and `kind` are lists.
"""

import dataclasses
from collections.abc import Callable
from typing import Literal

import numpy as np

from eqvlp.data import COLOURS, SHAPES, Shapes, ShapesConfig, ShardSource, zeroshot_task
from eqvlp.data.shapes import describe, split_id
from eqvlp.data.transforms import ImageAugment, augment_image, decode_image, eval_image

Inputs = Literal["image", "image_text", "text_pair"]
VQA_KINDS = ("colour", "shape", "count", "exists")
VQA_ANSWERS = (*COLOURS, *SHAPES, "one", "two", "yes", "no")
_VQA_STREAM = 0x565141  # "VQA": keeps question draws apart from the scene's own draws
_PAIR_STREAM = 0x50414952  # "PAIR"


@dataclasses.dataclass(frozen=True)
class Task:
    """A downstream task: its sources and what their examples hold.

    - `inputs`: `image` (classification), `image_text` (image + question) or `text_pair`.
    - `classes`: answer / class names; labels index them.
    - `kinds`: names of example kinds (VQA question types) for per-kind accuracy.
    - `train`, `eval`: random-access sources; `example(source, index, rng, training)` turns
      a source item into an example, or None for a bad sample (counted and skipped).
    - `corpus`: texts a new tokenizer should cover (the task's questions and sentences).
    """

    name: str
    inputs: Inputs
    classes: tuple[str, ...]
    train: object
    eval: object
    kinds: tuple[str, ...] = ("all",)
    corpus: tuple[str, ...] = ()
    example: Callable = lambda source, index, rng, training: source[index]


class ShapesVQA:
    """Questions about the shapes dataset's images, answered from the scene that drew them.

    Each image comes with `questions` questions of different kinds (all four kinds for 4, as
    VQA datasets ask several questions per image): `text`, `label` and `kind` are lists. A
    two-tower model encodes the image once for all of them.
    """

    def __init__(self, split: str, *, num_samples: int | None = None, questions: int = 4,
                 config: ShapesConfig = ShapesConfig()):
        if not 1 <= questions <= len(VQA_KINDS):
            raise ValueError(f"questions per image must be in [1, {len(VQA_KINDS)}] (one per "
                             f"question kind), got {questions}")
        self.shapes = Shapes(split, num_samples=num_samples, config=config)
        self.questions = questions

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> dict:
        scene = self.shapes.scene(index)
        rng = np.random.default_rng([self.shapes.config.seed, split_id(self.shapes.split),
                                     int(index), _VQA_STREAM])
        kinds = sorted(rng.permutation(len(VQA_KINDS))[: self.questions].tolist())
        asked = [_question(VQA_KINDS[kind], scene.objects, rng) for kind in kinds]
        record = self.shapes[index]
        return {"key": record["key"], "image": record["image"], "text": [q for q, _ in asked],
                "label": [VQA_ANSWERS.index(a) for _, a in asked], "kind": kinds}


def _question(kind: str, objects, rng: np.random.Generator) -> tuple[str, str]:
    """One question of `kind` about the scene's objects, and its answer.

    Questions are short (at most three 16 px lines at 64 px wide, CLIPPO's question band)
    and name shapes by their canonical names."""
    target = objects[rng.integers(len(objects))]
    if kind == "colour":
        return f"colour of the {SHAPES[target.shape]}?", COLOURS[target.colour]
    if kind == "shape":
        return f"shape of the {COLOURS[target.colour]} one?", SHAPES[target.shape]
    if kind == "count":
        return "how many shapes?", ("one", "two")[len(objects) - 1]
    if rng.random() < 0.5:
        return f"is there a {SHAPES[target.shape]}?", "yes"
    present = {o.shape for o in objects}
    absent = [s for s in range(len(SHAPES)) if s not in present]
    return f"is there a {SHAPES[absent[rng.integers(len(absent))]]}?", "no"


def vqa_corpus() -> tuple[str, ...]:
    """Every question the VQA task asks, for a tokenizer trained from scratch."""
    return (*(f"colour of the {s}?" for s in SHAPES),
            *(f"shape of the {c} one?" for c in COLOURS), "how many shapes?",
            *(f"is there a {s}?" for s in SHAPES), *VQA_ANSWERS)


class ShapesPairs:
    """Two captions and whether they describe the same image (label 1) or not (0)."""

    def __init__(self, split: str, *, num_samples: int | None = None,
                 config: ShapesConfig = ShapesConfig()):
        self.shapes = Shapes(split, num_samples=num_samples, config=config)

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> dict:
        config, split = self.shapes.config, self.shapes.split
        rng = np.random.default_rng([config.seed, split_id(split), int(index), _PAIR_STREAM])
        scene = self.shapes.scene(index)
        first, second = describe(scene, rng, 2)
        same = bool(rng.random() < 0.5)
        if not same:  # a caption of another scene whose main object looks different
            other = self.shapes.scene(int(rng.integers(len(self.shapes))))
            while (other.main.shape, other.main.colour) == (scene.main.shape,
                                                            scene.main.colour):
                other = self.shapes.scene(int(rng.integers(len(self.shapes))))
            second = describe(other, rng, 1)[0]
        return {"key": f"pairs-{split}-{int(index):08d}", "text": first, "text_b": second,
                "label": int(same), "kind": 0}


class ShapesClassify:
    """The shapes dataset's images with one of its labels (`shape`, `colour`, `shape_colour`)."""

    def __init__(self, split: str, label_key: str, *, num_samples: int | None = None,
                 config: ShapesConfig = ShapesConfig()):
        self.shapes = Shapes(split, num_samples=num_samples, config=config)
        self.label_key = label_key

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> dict:
        record = self.shapes[index]
        return {"key": record["key"], "image": record["image"],
                "label": int(record[self.label_key]), "kind": 0}


def shard_example(size: tuple[int, int], augment: ImageAugment) -> Callable:
    """`example(source, index, rng, training)` for labelled shards: decode, then a random
    resized crop (training) or resize + centre crop; None for an unreadable or unlabelled
    sample (its record's `problem` names why)."""

    def example(source, index, rng, training):
        record = source[index]
        if record.get("problem") is None and record.get("label", -1) < 0:
            record["problem"] = "missing_label"
        if record.get("problem") is not None:
            return record
        try:
            image = decode_image(record["image"], target=size)
        except ValueError as error:
            return {**record, "problem": "corrupt_image", "error": str(error)[:200]}
        image = augment_image(image, size, augment, rng) if training else eval_image(image, size)
        return {"key": record["key"], "image": image, "label": int(record["label"]), "kind": 0}

    return example


TASKS = ("shapes-vqa", "shapes-pairs", "shapes-classify", "shards", "lit")


def make_task(name: str, *, image_size: int | tuple[int, int], eval_split: str = "val",
              train_samples: int | None = None, eval_samples: int | None = None,
              label_key: str = "shape_colour", data: str = "shapes",
              eval_data: str | None = None, num_classes: int | None = None,
              questions: int = 4, augment: ImageAugment = ImageAugment()) -> Task:
    """The classification task `name` (one of `TASKS` but `lit`) with images of `image_size`."""
    shapes = ShapesConfig(image_size=image_size)
    splits = dict(num_samples=train_samples, config=shapes), dict(num_samples=eval_samples,
                                                                  config=shapes)
    if name == "shapes-vqa":
        return Task(name, "image_text", VQA_ANSWERS,
                    ShapesVQA("train", questions=questions, **splits[0]),
                    ShapesVQA(eval_split, questions=questions, **splits[1]), kinds=VQA_KINDS,
                    corpus=vqa_corpus())
    if name == "shapes-pairs":
        return Task(name, "text_pair", ("different", "same"), ShapesPairs("train", **splits[0]),
                    ShapesPairs(eval_split, **splits[1]))
    if name == "shapes-classify":
        classes = tuple(zeroshot_task(label_key).classnames)  # raises on an unknown key
        return Task(name, "image", classes, ShapesClassify("train", label_key, **splits[0]),
                    ShapesClassify(eval_split, label_key, **splits[1]))
    if name == "shards":
        if data == "shapes" or not eval_data:
            raise ValueError("task 'shards' reads labelled shards: set data='train/*.tar' and "
                             "eval_data='val/*.tar' (labels from KEY.cls or a json 'label')")
        if not num_classes or num_classes < 2:
            raise ValueError(f"task 'shards' needs num_classes >= 2 (got {num_classes}): set "
                             "num_classes to the number of labels in your shards")
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        return Task(name, "image", tuple(str(i) for i in range(num_classes)),
                    ShardSource(data), ShardSource(eval_data),
                    example=shard_example(size, augment))
    if name == "lit":
        raise ValueError("'lit' is contrastive, not a classification task: eqvlp.finetune "
                         "runs it with finetune(cfg) (task='lit')")
    raise ValueError(f"unknown task {name!r}: use one of {', '.join(TASKS)}")
