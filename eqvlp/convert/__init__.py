"""Weight import from and export to other libraries' checkpoints (no runtime dependency on them).

- `from_transformers`: a transformers `CLIPModel`/`SiglipModel` (or its directory) as an eqvlp
  `CLIP`.
- `to_transformers`, `Exported`: an eqvlp `CLIP` as a `CLIPModel`/`SiglipModel` directory.
- `read_safetensors`, `write_safetensors`, `read_checkpoint_dir`: the file format.
"""

from eqvlp.convert.export import Exported, to_transformers
from eqvlp.convert.safetensors import (
    read_checkpoint_dir,
    read_safetensors,
    write_safetensors,
)
from eqvlp.convert.transformers import from_transformers

__all__ = [
    "Exported",
    "from_transformers",
    "read_checkpoint_dir",
    "read_safetensors",
    "to_transformers",
    "write_safetensors",
]
