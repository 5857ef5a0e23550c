"""Towers and whole models, their configs and named presets."""

from eqvlp.models.clip import CLIP
from eqvlp.models.contrastive import ContrastiveModel
from eqvlp.models.clippo import CLIPPO, CLIPPOConfig
from eqvlp.models.config import CLIPConfig, TextConfig, ViTConfig
from eqvlp.models.onetower import OneTowerCLIP, OneTowerConfig
from eqvlp.models.presets import PRESETS, config, create
from eqvlp.models.resize import resize
from eqvlp.models.text import TextTransformer
from eqvlp.models.vit import ViT

__all__ = [
    "CLIP",
    "CLIPConfig",
    "ContrastiveModel",
    "CLIPPO",
    "CLIPPOConfig",
    "OneTowerCLIP",
    "OneTowerConfig",
    "PRESETS",
    "TextConfig",
    "TextTransformer",
    "ViT",
    "ViTConfig",
    "config",
    "create",
    "resize",
]
