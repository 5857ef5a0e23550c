"""Frozen dataclass configs for the towers and two-tower models, with named presets.

Configs are plain data: `dataclasses.replace(cfg, depth=6)` makes a variant. Each checks its
fields when built (`eqvlp.config_checks.check_fields`: every `Literal` field holds one of its
values, NumPy integers become ints) and its sizes, so a typo fails here, not as another model.
"""

import dataclasses
import math
from typing import Literal

from eqvlp.config_checks import check_fields
from eqvlp.models.settings import ContrastiveSettings
from eqvlp.nn.conv_stem import conv_stem_widths
from eqvlp.nn.patch_embedding import as_pair, patch_grid


def check_sizes(config, *names: str) -> None:
    """Raises a clear error unless each named field is an int >= 1."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{type(config).__name__}.{name} must be an int >= 1, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """A ViT image tower.

    `pre_norm` adds OpenAI CLIP's LayerNorm on the patch tokens before the encoder;
    `projection_dim=None` means the pooled vector is the embedding (SigLIP).
    `stem="conv"` replaces the linear patch embedding with stride-2 3x3 convolutions
    (`eqvlp.nn.ConvStem`, widths `stem_widths`): same tokens, shapes learned much faster;
    `stem_norm=False` drops its per-pixel channel LayerNorm (faster still on small data).
    """

    image_size: int | tuple[int, int] = 224
    patch_size: int | tuple[int, int] = 16
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    activation: str = "gelu"
    layer_norm_eps: float = 1e-6
    class_token: bool = True
    position_embedding: Literal["learned", "sincos"] = "learned"
    pre_norm: bool = False
    patch_bias: bool = True
    stem: Literal["patch", "conv"] = "patch"
    stem_widths: tuple[int, ...] | None = None
    stem_norm: bool = True
    pooling: Literal["cls", "gap", "map"] = "cls"
    projection_dim: int | None = 512
    projection_bias: bool = False
    remat: str | None = None
    attention_impl: str | None = None  # None, "xla", "cudnn", "pallas": eqvlp.kernels.attention

    def __post_init__(self):
        check_fields(self)
        patch_grid(self.image_size, self.patch_size)  # raises a clear error if it does not divide
        check_sizes(self, "width", "depth", "num_heads", "mlp_dim")
        if self.projection_dim is not None:
            check_sizes(self, "projection_dim")
        if self.pooling == "cls" and not self.class_token:
            raise ValueError("pooling='cls' needs class_token=True: set it, or pool with 'gap'/'map'")
        if self.stem == "conv":
            conv_stem_widths(self.patch_size, self.width, self.stem_widths)

    @property
    def grid(self) -> tuple[int, int]:
        return patch_grid(self.image_size, self.patch_size)

    @property
    def num_prefix(self) -> int:
        return int(self.class_token)

    @property
    def num_tokens(self) -> int:
        h, w = self.grid
        return self.num_prefix + h * w

    @property
    def output_dim(self) -> int:
        return self.projection_dim or self.width

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (*as_pair(self.image_size), 3)

    @classmethod
    def tiny(cls, **kw) -> "ViTConfig":
        kw = dict(image_size=32, patch_size=8, width=64, depth=2, num_heads=2, mlp_dim=128) | kw
        return cls(**kw)

    @classmethod
    def s16(cls, **kw) -> "ViTConfig":
        return cls(**(dict(width=384, depth=12, num_heads=6, mlp_dim=1536) | kw))

    @classmethod
    def b16(cls, **kw) -> "ViTConfig":
        return cls(**kw)

    @classmethod
    def b32(cls, **kw) -> "ViTConfig":
        return cls(**(dict(patch_size=32) | kw))

    @classmethod
    def l14(cls, **kw) -> "ViTConfig":
        kw = dict(patch_size=14, width=1024, depth=24, num_heads=16, mlp_dim=4096) | kw
        return cls(**kw)


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """A text transformer tower: token + learned position embeddings, encoder, final LN, pool.

    `pooling="eos"` takes the first `eos_token_id` position, position 0 when a sequence has
    none (HF CLIP, exactly); `"argmax"` the largest id (OpenAI CLIP); `"last"` the final
    position (SigLIP).

    `pad_token_id`: when set, positions holding it are padding: no token attends to them and
    `"mean"` pooling leaves them out, so a caption's embedding does not depend on how much
    padding `context_length` adds (eqvlp's tokenizer pads with id 0). `None` treats every
    position as a token, as HF and OpenAI CLIP do (their causal towers pool before the padding).
    """

    vocab_size: int = 49408
    context_length: int = 77
    width: int = 512
    depth: int = 12
    num_heads: int = 8
    mlp_dim: int = 2048
    activation: str = "gelu"
    layer_norm_eps: float = 1e-6
    causal: bool = True
    pooling: Literal["eos", "argmax", "last", "first", "mean"] = "eos"
    eos_token_id: int | None = 49407
    pad_token_id: int | None = None
    projection_dim: int | None = 512
    projection_bias: bool = False
    remat: str | None = None
    attention_impl: str | None = None  # None, "xla", "cudnn", "pallas": eqvlp.kernels.attention

    def __post_init__(self):
        check_fields(self)
        check_sizes(self, "vocab_size", "context_length", "width", "depth", "num_heads", "mlp_dim")
        if self.projection_dim is not None:
            check_sizes(self, "projection_dim")
        if self.pooling == "eos" and self.eos_token_id is None:
            raise ValueError("pooling='eos' needs eos_token_id: set it, or pool with 'argmax'")
        if self.pooling == "eos" and not 0 <= self.eos_token_id < self.vocab_size:
            raise ValueError(
                f"eos_token_id={self.eos_token_id} is not an id of the {self.vocab_size}-token "
                "vocabulary: use your tokenizer's end-of-text id, or a larger vocab_size"
            )
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"pad_token_id={self.pad_token_id} is not an id of the {self.vocab_size}-token "
                "vocabulary: use your tokenizer's padding id (eqvlp's is 0), or None"
            )

    @property
    def output_dim(self) -> int:
        return self.projection_dim or self.width

    @classmethod
    def tiny(cls, **kw) -> "TextConfig":
        kw = dict(
            vocab_size=1000, context_length=16, width=64, depth=2, num_heads=2, mlp_dim=128,
            eos_token_id=2,
        ) | kw
        return cls(**kw)


@dataclasses.dataclass(frozen=True)
class CLIPConfig(ContrastiveSettings):
    """A two-tower model: the towers, how logits are scaled, and the compute dtype.

    `loss="softmax"` (CLIP) starts the log-scale at `log(1/0.07)` and clamps the scale at
    `max_logit_scale`; `loss="sigmoid"` (SigLIP) starts at `log(10)` with bias `-10`.
    Parameters are always float32; `dtype` is the compute dtype ("float32" or "bfloat16").
    """

    vision: ViTConfig = dataclasses.field(default_factory=ViTConfig)
    text: TextConfig = dataclasses.field(default_factory=TextConfig)
    max_logit_scale: float | None = 100.0

    def __post_init__(self):
        if self.vision.output_dim != self.text.output_dim:
            raise ValueError(
                f"image embeddings have {self.vision.output_dim} dims but text embeddings "
                f"{self.text.output_dim}: set both towers' projection_dim to the same size"
            )
        super().__post_init__()

    @property
    def initial_logit_scale(self) -> float:
        if self.logit_scale_init is not None:
            return self.logit_scale_init
        return math.log(10.0) if self.loss == "sigmoid" else math.log(1 / 0.07)
