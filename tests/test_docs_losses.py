"""Runs the ```python blocks of docs/losses.md and docs/tutorial_property_testing.md.

Blocks of one page run in order in one namespace, as a reader would paste them. Property-suite
classes the tutorial defines (subclasses of LossProperties) are then run with fewer examples.
"""

import pytest
from doc_pages import run_page

from eqvlp.testing import LossProperties

PAGES = ["losses.md", "tutorial_property_testing.md"]


@pytest.mark.parametrize("page", PAGES)
def test_doc_code_runs(page, capsys):
    namespace = run_page(page)
    suites = [v for v in namespace.values() if isinstance(v, type) and issubclass(v, LossProperties)
              and v is not LossProperties and v.__name__.startswith("Test")]
    if page == "tutorial_property_testing.md":
        assert {s.__name__ for s in suites} == {"TestHardNegativeSigmoid", "TestMyShardedSigmoid"}
    for suite in suites:
        quick = type(suite.__name__, (suite,), {"max_examples": 5})
        instance = quick()
        for name in dir(instance):
            method = getattr(instance, name)
            if name.startswith("test_") and method is not None:  # None: property not declared
                method()
