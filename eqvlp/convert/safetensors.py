"""A minimal reader and writer of `.safetensors` files with NumPy arrays (no torch, no extra
package).

Format: 8-byte little-endian header length, a JSON header mapping names to dtype, shape and
byte offsets, then the raw little-endian data.
"""

import json
import struct
from pathlib import Path

import jax.numpy as jnp
import numpy as np

_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": jnp.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of one `.safetensors` file, as NumPy arrays (memory-mapped)."""
    path = Path(path)
    with open(path, "rb") as f:
        (header_size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_size))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_size)
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        dtype = np.dtype(_DTYPES[info["dtype"]])
        tensors[name] = data[start:end].view(dtype).reshape(info["shape"])
    return tensors


_NAMES = {np.dtype(dtype): name for name, dtype in _DTYPES.items()}


def write_safetensors(path: str | Path, tensors: dict[str, np.ndarray],
                      metadata: dict[str, str] | None = None) -> None:
    """Writes NumPy arrays as one `.safetensors` file (what `read_safetensors` and torch's
    `safetensors` read): little-endian data, contiguous, in name order; the header is padded
    with spaces to a multiple of 8 bytes. transformers wants `metadata={"format": "pt"}`."""
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    blobs, offset = [], 0
    for name in sorted(tensors):
        array = np.asarray(tensors[name])
        if array.dtype not in _NAMES:
            raise ValueError(f"tensor {name!r} has dtype {array.dtype}, which safetensors does "
                             f"not store: convert it to one of {sorted(_DTYPES)}")
        data = np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": _NAMES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for data in blobs:
            f.write(data)


def read_checkpoint_dir(directory: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a `save_pretrained` directory: one file or a sharded index."""
    directory = Path(directory)
    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    if single.exists():
        return read_safetensors(single)
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        tensors: dict[str, np.ndarray] = {}
        for name in files:
            tensors.update(read_safetensors(directory / name))
        return tensors
    raise FileNotFoundError(
        f"{directory} holds no model.safetensors (or its index): save the model with "
        "save_pretrained(..., safe_serialization=True), or pass the loaded model object"
    )
