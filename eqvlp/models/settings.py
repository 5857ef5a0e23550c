"""Settings every contrastive model config shares: the loss, logit scale/bias and compute dtype."""

import dataclasses
import math
from typing import Literal

from eqvlp.config_checks import check_fields


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
        check_fields(self)
        name = type(self).__name__
        if self.max_logit_scale is not None and not (
            math.isfinite(self.max_logit_scale) and self.max_logit_scale > 0
        ):
            raise ValueError(
                f"{name}.max_logit_scale={self.max_logit_scale!r}: the clamp on the logit "
                "multiplier must be a positive number (CLIP: 100), or None for no clamp"
            )
        for field in ("logit_scale_init", "logit_bias_init"):
            value = getattr(self, field)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name}.{field}={value!r} must be a finite number or None")

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
