"""Named model presets and `create(name, *, key)`.

Widths and depths follow OpenAI CLIP / open_clip (CLIP) and SigLIP (siglip-vit-b16).
"""

import dataclasses
from collections.abc import Callable

from jaxtyping import PRNGKeyArray

from eqvlp.models.clip import CLIP
from eqvlp.models.config import CLIPConfig, TextConfig, ViTConfig

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


PRESETS: dict[str, Callable[[], CLIPConfig]] = {
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
    ),
}


def config(name: str) -> CLIPConfig:
    """The config of a named preset."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}: choose one of {sorted(PRESETS)}") from None


def create(name: str, *, key: PRNGKeyArray, **overrides) -> CLIP:
    """Builds a named preset, e.g. `create("clip-vit-b16", key=key, dtype="bfloat16")`.

    `overrides` replace top-level `CLIPConfig` fields (`dtype`, `vision`, `text`, ...).
    """
    return CLIP(dataclasses.replace(config(name), **overrides), key=key)
