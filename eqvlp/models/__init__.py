"""Towers and whole models, their configs and named presets."""

from eqvlp.models.clip import CLIP
from eqvlp.models.contrastive import ContrastiveModel
from eqvlp.models.clippo import CLIPPO, CLIPPOConfig
from eqvlp.models.config import CLIPConfig, TextConfig, ViTConfig
from eqvlp.models.onetower import OneTowerCLIP, OneTowerConfig
from eqvlp.models.presets import PRESETS, config, create
from eqvlp.models.protocol import (
    ContrastiveProtocol,
    check_contrastive,
    encode_masked,
    loss_kind,
    text_token_ids,
)
from eqvlp.models.resize import resize
from eqvlp.models.text import TextTransformer
from eqvlp.models.vit import ViT

__all__ = [
    "CLIP",
    "CLIPConfig",
    "ContrastiveModel",
    "ContrastiveProtocol",
    "CLIPPO",
    "CLIPPOConfig",
    "OneTowerCLIP",
    "OneTowerConfig",
    "PRESETS",
    "TextConfig",
    "TextTransformer",
    "ViT",
    "ViTConfig",
    "check_contrastive",
    "config",
    "create",
    "encode_masked",
    "loss_kind",
    "resize",
    "text_token_ids",
]
