"""Evaluation of contrastive models through `encode_image(images)` / `encode_text(texts)` only.

- `extract`, `embed_images`, `embed_texts`: features of a whole dataset, in fixed-size batches
  compiled once, optionally sharded over a mesh and cached to disk; `CLIP_MEAN_STD`,
  `SIGLIP_MEAN_STD` for uint8 images.
- `text_encoder`, `class_embeddings`, `zeroshot`, `classification_metrics`,
  `load_zeroshot_file`: CLIP's zero-shot protocol (prompt ensembling) and top-k / per-class
  accuracy.
- `retrieval_metrics`: image <-> text recall@k, COCO convention, in blocks of rows.
- `linear_probe`, `few_shot`, `few_shot_indices`, `DEFAULT_L2_GRID`, `FEW_SHOT_L2`:
  logistic-regression probes with L-BFGS.

See docs/evaluation.md for each metric's convention.
"""

from eqvlp.eval.features import CLIP_MEAN_STD, SIGLIP_MEAN_STD, embed_images, embed_texts, extract
from eqvlp.eval.probe import (
    DEFAULT_L2_GRID,
    FEW_SHOT_L2,
    few_shot,
    few_shot_indices,
    linear_probe,
)
from eqvlp.eval.retrieval import retrieval_metrics
from eqvlp.eval.zeroshot import (
    class_embeddings,
    classification_metrics,
    load_zeroshot_file,
    text_encoder,
    zeroshot,
)

__all__ = [
    "CLIP_MEAN_STD",
    "DEFAULT_L2_GRID",
    "FEW_SHOT_L2",
    "SIGLIP_MEAN_STD",
    "class_embeddings",
    "classification_metrics",
    "embed_images",
    "embed_texts",
    "extract",
    "few_shot",
    "few_shot_indices",
    "linear_probe",
    "load_zeroshot_file",
    "retrieval_metrics",
    "text_encoder",
    "zeroshot",
]
