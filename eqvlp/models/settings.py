"""Settings every contrastive model config shares: the loss, logit scale/bias and compute dtype."""

import dataclasses
import math
from typing import Literal


@dataclasses.dataclass(frozen=True)
class ContrastiveSettings:
    """Base of `CLIPConfig`, `CLIPPOConfig` and `OneTowerConfig`.

    `loss="softmax"` or `"sigmoid"` (which adds a logit bias, init -10); the log-scale starts at
    `log(10)` unless a config says otherwise; `max_logit_scale=None` means no clamp. Parameters
    are always float32; `dtype` is the compute dtype.
    """

    loss: Literal["softmax", "sigmoid"] = "softmax"
    logit_scale_init: float | None = None
    logit_bias_init: float | None = None
    max_logit_scale: float | None = None
    dtype: Literal["float32", "bfloat16"] = "float32"

    def __post_init__(self):
        if self.loss not in ("softmax", "sigmoid"):
            raise ValueError(f"unknown loss {self.loss!r}: use 'softmax' or 'sigmoid'")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"unknown compute dtype {self.dtype!r}: use 'float32' or 'bfloat16'")

    @property
    def embed_dim(self) -> int:
        return self.vision.output_dim

    @property
    def initial_logit_scale(self) -> float:
        return math.log(10.0) if self.logit_scale_init is None else self.logit_scale_init

    @property
    def initial_logit_bias(self) -> float | None:
        if self.logit_bias_init is not None:
            return self.logit_bias_init
        return -10.0 if self.loss == "sigmoid" else None
