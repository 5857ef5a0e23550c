"""The code on the documentation pages runs as written."""

import re
from pathlib import Path

import jax
import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = ["architecture.md", "tutorial_custom_architecture.md"]


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


@pytest.mark.parametrize("page", PAGES)
def test_page_code_runs(page):
    namespace: dict = {}
    # doc code is user code: it runs under JAX's default (standard) dtype promotion
    with jax.numpy_dtype_promotion("standard"):
        for block in python_blocks(DOCS / page):
            exec(compile(block, f"{page}", "exec"), namespace)


def test_tutorial_has_code():
    assert len(python_blocks(DOCS / "tutorial_custom_architecture.md")) >= 4
