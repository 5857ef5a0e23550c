"""`FinetuneConfig`: everything one `eqvlp finetune` run needs, as frozen dataclasses.

Set any key with a dotted override, as for `eqvlp train` (`eqvlp.train.config.override`):
`--set optim.lr=3e-4 --set fused.band_height=16 --set model.vision.depth=4`.
"""

import dataclasses
from typing import Literal

from eqvlp import models
from eqvlp.config_checks import check_fields
from eqvlp.data.shapes import SPLITS, ZEROSHOT_TASKS
from eqvlp.finetune.tasks import TASKS
from eqvlp.models.presets import ModelConfig
from eqvlp.train.config import load_config
from eqvlp.train.optim import OptimConfig


@dataclasses.dataclass(frozen=True)
class FusedConfig:
    """How text meets the image.

    - `fusion`: `band` renders the question (or both sentences) into the image, CLIPPO's way
      (CLIPPO models only); `concat` encodes text with the text tower and concatenates the
      embeddings (two-tower, 1T-CLIP, or CLIPPO for comparison); `auto`: `band` for CLIPPO,
      `concat` otherwise.
    - `band_height`: rows of the question band (a multiple of the patch size, at least one
      16 px line; 48 holds the shapes questions at 64 px); the model is resized to the
      taller image.
    - `position`: the band above (`top`) or below (`bottom`) the image.
    """

    fusion: Literal["auto", "band", "concat"] = "auto"
    band_height: int = 48
    position: Literal["top", "bottom"] = "top"

    def __post_init__(self):
        check_fields(self)
        if self.band_height < 1:
            raise ValueError(f"fused.band_height must be >= 1, got {self.band_height}")


def _default_model() -> ModelConfig:
    """The architecture `eqvlp train` pre-trains by default (so the two can be compared)."""
    return load_config("default").model


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tuning run. `eqvlp finetune --help-config` lists every key.

    - `task`: `shapes-vqa`, `shapes-pairs`, `shapes-classify`, `shards` (classification
      over labelled shards) or `lit` (image tower locked, text tower trained contrastively on
      image-caption data, evaluated zero-shot).
    - `init`: an `eqvlp train` run directory to start from; None: a new `model`.
    - `model`: the architecture (preset name or config) when `init` is None.
    - `mode`: `full` trains the whole model and the head; `linear` only the head (features
      frozen). `lit` ignores it.
    - `head_hidden_dim`: the head's hidden layer (None: a linear head).
    - `layer_decay`: layer-wise learning-rate decay (`eqvlp.finetune.layer_decay`; 1: none).
    - `image_size`: fine-tune at another resolution (position embeddings resampled); None:
      the model's.
    - `data`, `eval_data`: shard patterns (task `shards`, or `lit` on your captions).
    - `num_classes`: labels of task `shards`; `label_key`: what `shapes-classify` predicts.
    - `zeroshot`: classes file of `lit` on shards (`{"classnames", "templates"}`).
    - `questions`: `shapes-vqa` questions per image (1-4, each of another kind); a two-tower
      model encodes the image once for all of them.
    - `train_samples`, `eval_samples`: lengths of the shapes splits; `eval_split`: the
      held-out shapes split (`val`: unseen samples; `test`: half of them with colour+shape
      pairs never seen in training).
    - `normalization`: uint8 -> float (None: the init run's, or `signed` for CLIPPO and
      `clip` otherwise).
    - `workdir`: the run directory (None: `runs/finetune-TASK`); a rerun resumes it.
    """

    task: str = "shapes-vqa"
    init: str | None = None
    model: str | ModelConfig = dataclasses.field(default_factory=_default_model)
    mode: Literal["full", "linear"] = "full"
    head_hidden_dim: int | None = 256
    layer_decay: float = 1.0
    image_size: int | None = None
    fused: FusedConfig = FusedConfig()
    data: str = "shapes"
    eval_data: str | None = None
    num_classes: int | None = None
    label_key: str = "shape_colour"
    zeroshot: str | None = None
    questions: int = 4
    train_samples: int | None = None
    eval_split: str = "val"
    eval_samples: int = 1000
    optim: OptimConfig = OptimConfig(lr=1e-3, warmup_steps=50, weight_decay=0.05)
    steps: int = 400
    batch_size: int = 64
    normalization: Literal["clip", "signed"] | None = None
    eval_every: int = 0
    eval_batch_size: int = 250
    vocab_size: int = 1000
    seed: int = 0
    workdir: str | None = None
    checkpoint_every: int = 1000
    keep_checkpoints: int = 1
    log_every: int = 10

    def __post_init__(self):
        check_fields(self)
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}: use one of {', '.join(TASKS)}")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}: 1 turns "
                             "it off, 0.65-0.85 is usual")
        if self.head_hidden_dim is not None and self.head_hidden_dim < 1:
            raise ValueError(f"head_hidden_dim must be >= 1, or None for a linear head, got "
                             f"{self.head_hidden_dim}")
        if min(self.steps, self.batch_size, self.eval_samples, self.eval_batch_size,
               self.log_every, self.checkpoint_every) < 1:
            raise ValueError("steps, batch_size, eval_samples, eval_batch_size, log_every and "
                             "checkpoint_every must be >= 1")
        if self.eval_split not in SPLITS:
            raise ValueError(f"eval_split={self.eval_split!r}: use one of {SPLITS} (val: unseen "
                             "samples; test: also unseen colour+shape pairs)")
        if self.label_key not in ZEROSHOT_TASKS:
            raise ValueError(f"label_key={self.label_key!r}: use one of {ZEROSHOT_TASKS}")
        if isinstance(self.model, str) and self.model not in models.PRESETS:
            raise ValueError(f"unknown model preset {self.model!r}: use one of "
                             f"{', '.join(sorted(models.PRESETS))}, or set init to a run")

    @property
    def run_dir(self) -> str:
        """`workdir`, or `runs/finetune-TASK`."""
        return self.workdir or f"runs/finetune-{self.task}"
