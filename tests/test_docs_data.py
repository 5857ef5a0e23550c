"""Runs the ```python blocks of docs/data.md in order in one namespace, as a reader would."""

import pathlib
import re

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


def test_data_page_runs():
    text = (DOCS / "data.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
    assert len(blocks) >= 4
    namespace = {"__name__": "docs_data"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"data.md[block {i}]", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"data.md, python block {i} failed:\n{code}") from e
    assert namespace["batch"]["image"].shape == (16, 64, 64, 3)
