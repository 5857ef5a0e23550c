"""The code on docs/masking.md runs, and its picture is the one the code makes."""

import re
from pathlib import Path

import jax

PAGE = Path(__file__).resolve().parents[1] / "docs" / "masking.md"


def test_masking_page_code_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the picture is written under the current directory
    namespace: dict = {}
    with jax.numpy_dtype_promotion("standard"):
        for block in re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S):
            exec(compile(block, str(PAGE), "exec"), namespace)
    made = (tmp_path / "docs" / "images" / "masks.png").read_bytes()
    assert made == (PAGE.parent / "images" / "masks.png").read_bytes()
