"""Named model presets and `create(name, *, key)`.

Widths and depths follow OpenAI CLIP / open_clip (CLIP), SigLIP (siglip-vit-b16) and
big_vision's CLIPPO (clippo-vit-b16: one B/16 ViT with MAP pooling and a 768-d head).
"""

import dataclasses
from collections.abc import Callable

from jaxtyping import PRNGKeyArray

from eqvlp.config_checks import replace

from eqvlp.models.clip import CLIP
from eqvlp.models.clippo import CLIPPO, CLIPPOConfig
from eqvlp.models.config import CLIPConfig, TextConfig, ViTConfig
from eqvlp.models.onetower import OneTowerCLIP, OneTowerConfig

ModelConfig = CLIPConfig | CLIPPOConfig | OneTowerConfig
Model = CLIP | CLIPPO | OneTowerCLIP
# Which model class a config builds.
MODEL_CLASSES = {CLIPConfig: CLIP, CLIPPOConfig: CLIPPO, OneTowerConfig: OneTowerCLIP}

# OpenAI CLIP towers: pre-LN on patches, quick-GELU, LayerNorm eps 1e-5, causal text, argmax pool.
_OPENAI = dict(activation="quick_gelu", layer_norm_eps=1e-5)


def _clip(vision: ViTConfig, text_width: int, text_heads: int, embed_dim: int) -> CLIPConfig:
    text = TextConfig(
        width=text_width, num_heads=text_heads, mlp_dim=4 * text_width,
        projection_dim=embed_dim, pooling="argmax", **_OPENAI,
    )
    vision = dataclasses.replace(vision, pre_norm=True, patch_bias=False,
                                 projection_dim=embed_dim, **_OPENAI)
    return CLIPConfig(vision=vision, text=text, loss="softmax")


PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "clip-tiny": lambda: CLIPConfig(
        vision=ViTConfig.tiny(projection_dim=32),
        text=TextConfig.tiny(projection_dim=32),
        loss="softmax",
    ),
    "siglip-tiny": lambda: CLIPConfig(
        vision=ViTConfig.tiny(class_token=False, pooling="map", projection_dim=None),
        text=TextConfig.tiny(causal=False, pooling="last", projection_dim=64,
                             projection_bias=True),
        loss="sigmoid",
        max_logit_scale=None,  # SigLIP does not clamp its temperature
    ),
    "clip-vit-s16": lambda: _clip(ViTConfig.s16(), 384, 6, 384),
    "clip-vit-b16": lambda: _clip(ViTConfig.b16(), 512, 8, 512),
    "clip-vit-b32": lambda: _clip(ViTConfig.b32(), 512, 8, 512),
    "clip-vit-l14": lambda: _clip(ViTConfig.l14(), 768, 12, 768),
    "siglip-vit-b16": lambda: CLIPConfig(
        vision=ViTConfig.b16(class_token=False, pooling="map", projection_dim=None,
                             activation="gelu_tanh"),
        text=TextConfig(
            vocab_size=32000, context_length=64, width=768, num_heads=12, mlp_dim=3072,
            activation="gelu_tanh", causal=False, pooling="last", eos_token_id=None,
            projection_dim=768, projection_bias=True,
        ),
        loss="sigmoid",
        max_logit_scale=None,  # SigLIP does not clamp its temperature
    ),
    # CLIPPO: one ViT for photos and rendered text (64 px holds 4 lines of about 10 characters).
    "clippo-tiny": lambda: CLIPPOConfig(
        vision=ViTConfig.tiny(image_size=64, patch_size=16, class_token=False, pooling="map",
                              projection_dim=32, projection_bias=True, activation="gelu_tanh"),
    ),
    "clippo-vit-b16": lambda: CLIPPOConfig(),
    # 1T-CLIP: one shared transformer, patch embedding for images, token embedding for text.
    "onetower-clip-tiny": lambda: OneTowerConfig(
        vision=ViTConfig.tiny(class_token=False, pooling="map", projection_dim=32,
                              projection_bias=True, activation="gelu_tanh"),
        vocab_size=1000, context_length=16,
    ),
    "onetower-clip-vit-b16": lambda: OneTowerConfig(),
}


def config(name: str) -> ModelConfig:
    """The config of a named preset."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}: choose one of {sorted(PRESETS)}") from None


def create(name: str, *, key: PRNGKeyArray, **overrides) -> Model:
    """Builds a named preset, e.g. `create("clip-vit-b16", key=key, dtype="bfloat16")`.

    `overrides` replace top-level config fields (`dtype`, `vision`, `text`, `loss`, ...); an
    unknown one is an error listing the preset's fields.
    CLIP/SigLIP presets build a `CLIP`, `clippo-*` a `CLIPPO`, `onetower-*` a `OneTowerCLIP`.
    """
    cfg = replace(config(name), f"create({name!r})", **overrides)
    return MODEL_CLASSES[type(cfg)](cfg, key=key)
