"""A minimal reader and writer of `.safetensors` files with NumPy arrays (no torch, no extra
package).

Format: 8-byte little-endian header length, a JSON header mapping names to dtype, shape and
byte offsets, then the raw little-endian data.
"""

import json
import math
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
    """Every tensor of one `.safetensors` file, as NumPy arrays (memory-mapped).

    A truncated or corrupt file (header length past the end, a header that is not JSON, offsets
    outside the data or disagreeing with shape and dtype) raises `ValueError` naming the file.
    """
    path = Path(path)
    size = path.stat().st_size

    def damaged(why: str) -> ValueError:
        return ValueError(f"{path} is not a valid .safetensors file ({why}): it is truncated or "
                          "corrupt; download or save it again")

    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise damaged(f"{size} bytes, shorter than the 8-byte header length")
        (header_size,) = struct.unpack("<Q", head)
        if header_size > size - 8:
            raise damaged(f"header of {header_size} bytes in a file of {size}")
        try:
            header = json.loads(f.read(header_size))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise damaged(f"header is not JSON: {error}") from None
    if not isinstance(header, dict):
        raise damaged("header is not a JSON object")
    data_size = size - 8 - header_size
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_size) if data_size else \
        np.zeros(0, np.uint8)
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            kind, shape, (start, end) = info["dtype"], [int(n) for n in info["shape"]], \
                [int(n) for n in info["data_offsets"]]
        except (KeyError, TypeError, ValueError):
            raise damaged(f"tensor {name!r} lacks dtype, shape or data_offsets") from None
        if kind not in _DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {kind}")
        dtype = np.dtype(_DTYPES[kind])
        if min(shape, default=0) < 0 or not 0 <= start <= end <= data_size or \
                end - start != dtype.itemsize * math.prod(shape):
            raise damaged(f"tensor {name!r}: bytes {start}..{end} of {data_size} do not hold "
                          f"{kind} {tuple(shape)}")
        tensors[name] = data[start:end].view(dtype).reshape(shape)
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
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{index} is damaged ({error!r}): it must be JSON with a "
                             "'weight_map' of tensor names to files") from None
        tensors: dict[str, np.ndarray] = {}
        for name in files:
            tensors.update(read_safetensors(directory / name))
        return tensors
    raise FileNotFoundError(
        f"{directory} holds no model.safetensors (or its index): save the model with "
        "save_pretrained(..., safe_serialization=True), or pass the loaded model object"
    )
