"""docs/rendering.md: its Python runs as written and its images are what its commands make."""

import re
import shlex
import zlib
from pathlib import Path

import jax
import numpy as np
import pytest

from eqvlp.cli import main

PAGE = Path(__file__).resolve().parents[1] / "docs" / "rendering.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)


def render_commands() -> list[list[str]]:
    blocks = re.findall(r"```bash\n(.*?)```", PAGE.read_text(), flags=re.S)
    lines = [line for block in blocks for line in block.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("eqvlp render ")]


def png_pixels(data: bytes) -> np.ndarray:
    """Pixels of a PNG written by eqvlp.render.encode_png (RGB, one IDAT, filter 0)."""
    width, height = (int(v) for v in np.frombuffer(data[16:24], ">u4"))
    start = data.index(b"IDAT") + 4
    (length,) = np.frombuffer(data[start - 8 : start - 4], ">u4")
    raw = np.frombuffer(zlib.decompress(data[start : start + int(length)]), np.uint8)
    return raw.reshape(height, -1)[:, 1:].reshape(height, width, 3)


def test_page_code_runs():
    namespace: dict = {}
    # doc code is user code: it runs under JAX's default (standard) dtype promotion
    with jax.numpy_dtype_promotion("standard"):
        for block in python_blocks():
            exec(compile(block, str(PAGE.name), "exec"), namespace)
    assert len(python_blocks()) >= 6


@pytest.mark.parametrize("args", render_commands(), ids=lambda a: Path(a[a.index("-o") + 1]).name)
def test_images_match_their_commands(args, tmp_path):
    target = PAGE.parents[1] / args[args.index("-o") + 1]
    assert target.is_file(), f"{target} is missing: run the command on docs/rendering.md"
    args = list(args)
    args[args.index("-o") + 1] = str(tmp_path / "out.png")
    assert main(args) == 0
    assert np.array_equal(png_pixels((tmp_path / "out.png").read_bytes()),
                          png_pixels(target.read_bytes()))


def test_every_image_on_the_page_exists():
    images = re.findall(r"!\[[^\]]*\]\((images/[^)]+)\)", PAGE.read_text())
    assert len(images) >= 6
    for image in images:
        assert (PAGE.parent / image).is_file(), image
