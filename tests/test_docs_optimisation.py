"""Runs the ```python blocks of docs/optimisation.md in order, in one namespace, as a reader would
paste them (under the suite's strict dtype promotion)."""

import pathlib
import re

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
PAGE = "optimisation.md"


def test_doc_code_runs():
    blocks = re.findall(r"^```python\n(.*?)^```", (DOCS / PAGE).read_text(), flags=re.S | re.M)
    assert len(blocks) >= 3, f"{PAGE} lost its python blocks"
    namespace = {"__name__": "docs_optimisation_md"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{PAGE}[block {i}]", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"{PAGE}, python block {i} failed:\n{code}") from e
    assert int(namespace["opt_state"].skipped) == 1  # the page's last block ran to the end
