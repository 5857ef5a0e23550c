"""Downstream transfer: fine-tuning, LiT and CLIPPO's fused tasks.

- `FinetuneConfig`, `FusedConfig`: what one `eqvlp finetune` run does.
- `finetune`: the job (model, task, optimiser, loop, outputs in the run directory).
- `make_task`, `Task`, `TASKS`, `ShapesVQA`, `ShapesPairs`, `ShapesClassify`, `VQA_ANSWERS`,
  `VQA_KINDS`: downstream tasks on the embedded shapes dataset and labelled shards.
- `ClassifierHead`: the head on a model's embeddings.
- `fuse_question`, `render_pair`, `model_inputs`, `features`: CLIPPO's text-in-the-image
  inputs and the two-tower concatenation.
- `layer_decay_factors`, `scale_by_factors`: layer-wise learning-rate decay.
- `lit_trainable_spec`, `make_lit_loss`: LiT's locked image tower and contrastive loss.

See docs/finetune.md.
"""

from eqvlp.finetune.config import FinetuneConfig, FusedConfig
from eqvlp.finetune.fused import features, fuse_question, model_inputs, render_pair
from eqvlp.finetune.heads import ClassifierHead
from eqvlp.finetune.layer_decay import layer_decay_factors, scale_by_factors
from eqvlp.finetune.lit import lit_trainable_spec, make_lit_loss
from eqvlp.finetune.loop import finetune
from eqvlp.finetune.tasks import (
    TASKS,
    VQA_ANSWERS,
    VQA_KINDS,
    ShapesClassify,
    ShapesPairs,
    ShapesVQA,
    Task,
    make_task,
)

__all__ = [
    "TASKS",
    "VQA_ANSWERS",
    "VQA_KINDS",
    "ClassifierHead",
    "FinetuneConfig",
    "FusedConfig",
    "ShapesClassify",
    "ShapesPairs",
    "ShapesVQA",
    "Task",
    "features",
    "finetune",
    "fuse_question",
    "layer_decay_factors",
    "lit_trainable_spec",
    "make_lit_loss",
    "make_task",
    "model_inputs",
    "render_pair",
    "scale_by_factors",
]
