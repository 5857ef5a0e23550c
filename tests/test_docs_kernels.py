"""The code on docs/kernels.md runs as written."""

import re
from pathlib import Path

import jax

PAGE = Path(__file__).resolve().parents[1] / "docs" / "kernels.md"


def test_kernels_page_code_runs():
    namespace: dict = {}
    with jax.numpy_dtype_promotion("standard"):
        for block in re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S):
            exec(compile(block, str(PAGE), "exec"), namespace)
