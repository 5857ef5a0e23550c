"""Weight import from other libraries' checkpoints (no runtime dependency on them)."""

from eqvlp.convert.safetensors import read_checkpoint_dir, read_safetensors
from eqvlp.convert.transformers import from_transformers

__all__ = ["from_transformers", "read_checkpoint_dir", "read_safetensors"]
