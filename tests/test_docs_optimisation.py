"""docs/optimisation.md's code runs as written (under the suite's strict dtype promotion)."""

from doc_pages import run_page


def test_doc_code_runs():
    namespace = run_page("optimisation.md", min_blocks=3)
    assert int(namespace["opt_state"].skipped) == 1  # the page's last block ran to the end
