"""docs/data.md's code runs as written."""

from doc_pages import run_page


def test_data_page_runs():
    namespace = run_page("data.md", min_blocks=5)
    assert namespace["batch"]["image"].shape == (16, 64, 64, 3)
