"""docs/sharding.md: its code runs, and the printed report on the page is the real one."""

import contextlib
import io
import re
from pathlib import Path

import jax

PAGE = Path(__file__).resolve().parents[1] / "docs" / "sharding.md"


def test_sharding_page_code_runs_and_report_is_current():
    text = PAGE.read_text()
    namespace: dict = {}
    printed = io.StringIO()
    with jax.numpy_dtype_promotion("standard"), contextlib.redirect_stdout(printed):
        for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
            exec(compile(block, str(PAGE), "exec"), namespace)
    page_report = re.search(r"```text\n(.*?)```", text, flags=re.S).group(1)
    assert page_report in printed.getvalue()
    assert "P(None, 'fsdp', 'tensor')" in printed.getvalue()
