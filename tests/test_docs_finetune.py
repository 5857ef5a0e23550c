"""Runs the python blocks of docs/finetune.md in order, in one namespace, as a reader would
paste them: the worked fine-tuning example, the task and head pieces, and the export."""

import jax
import numpy as np
from doc_pages import python_blocks, run_page


def test_finetune_page_runs(capsys):
    assert len(python_blocks("finetune.md")) == 3, \
        "finetune.md: the worked example, the pieces, the export"
    namespace = run_page("finetune.md")
    results = namespace["results"]
    assert 0.0 <= results["accuracy"] <= 1.0 and results["steps"] == 8
    assert results["num_examples"] == 4 * 64 and "accuracy_colour" in results  # 4 per image
    assert namespace["exported"].architecture == "SiglipModel"
    assert {"config.json", "model.safetensors"} <= {
        p.name for p in namespace["exported"].directory.iterdir()}
    out = capsys.readouterr().out
    assert "held-out questions" in out and "SiglipModel" in out
    assert "how many shapes? -> one" in out or "how many shapes? -> two" in out
    # the page's fused example: the band is above the image
    fused, example = namespace["fused"], namespace["example"]
    np.testing.assert_array_equal(fused[0, 48:], example["image"])
    # every weight came back (the page compares them one by one)
    assert len(jax.tree.leaves(namespace["back"])) == len(jax.tree.leaves(namespace["siglip"]))
