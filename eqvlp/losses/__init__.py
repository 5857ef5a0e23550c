"""Contrastive and self-supervised losses for vision-language pre-training, as pure functions.

- `clip_loss`, `sigmoid_loss`: the single-device references (softmax / sigmoid contrastive).
- `chunked_sigmoid_loss`: `sigmoid_loss` in O(chunk * B) memory, for large batches on one device.
- `distributed_sigmoid_loss`, `distributed_clip_loss`: the global-batch losses from a sharded
  batch inside `shard_map`; `shard_loss` builds the `shard_map` for you.
- `clip_rocket_loss`, `siamlip_loss`, `byolip_loss`, `barlip_loss`, `swalip_loss`, `sinkhorn`,
  with the heads they need (`Projector`, `Predictor`, `Prototypes`) and `ema_update`.
- `normalize`, `check_finite`: the normalisation the losses expect and their run-time input check.

See docs/losses.md for the formulas and which to use when.
"""

from eqvlp.losses.chunked import chunked_sigmoid_loss
from eqvlp.losses.contrastive import clip_loss, sigmoid_loss
from eqvlp.losses.distributed import distributed_clip_loss, distributed_sigmoid_loss, shard_loss
from eqvlp.losses.ema import ema_update
from eqvlp.losses.heads import Predictor, Projector, Prototypes, batch_norm
from eqvlp.losses.rocket import (
    barlip_loss,
    byolip_loss,
    clip_rocket_loss,
    siamlip_loss,
    sinkhorn,
    swalip_loss,
)
from eqvlp.losses.validation import check_finite, normalize

__all__ = [
    "Predictor",
    "Projector",
    "Prototypes",
    "barlip_loss",
    "batch_norm",
    "byolip_loss",
    "check_finite",
    "chunked_sigmoid_loss",
    "clip_loss",
    "clip_rocket_loss",
    "distributed_clip_loss",
    "distributed_sigmoid_loss",
    "ema_update",
    "normalize",
    "shard_loss",
    "siamlip_loss",
    "sigmoid_loss",
    "sinkhorn",
    "swalip_loss",
]
