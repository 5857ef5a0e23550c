"""Runs a docs page's ```python blocks in order in one namespace, as a reader would paste them."""

import pathlib
import re

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


def python_blocks(page: str) -> list[str]:
    text = (DOCS / page).read_text()
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def run_page(page: str, *, min_blocks: int = 1) -> dict:
    """Executes every python block of `docs/page`; returns the namespace they filled."""
    blocks = python_blocks(page)
    assert len(blocks) >= min_blocks, f"{page} lost its python blocks"
    namespace = {"__name__": f"docs_{page.replace('.', '_')}"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{page}[block {i}]", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"{page}, python block {i} failed:\n{code}") from e
    return namespace
