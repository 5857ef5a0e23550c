"""Runs the ```python blocks of docs/evaluation.md in order, in one namespace, as a reader would
paste them, and checks that the worked example produced its results."""

from doc_pages import python_blocks, run_page


def test_evaluation_page_runs(capsys):
    assert len(python_blocks("evaluation.md")) == 4, \
        "evaluation.md: features, zero-shot, retrieval and probe examples"
    # Runs under the suite's strict dtype promotion (the page's code is valid under both), so
    # that the compiled encoders and L-BFGS loop are shared with tests/test_eval.py.
    namespace = run_page("evaluation.md")
    assert set(namespace["result"]) >= {"top1", "top5", "per_class_accuracy", "num_samples"}
    assert {"i2t_r1", "t2i_r5", "i2t_r10"} <= set(namespace["recall"])
    assert sorted(namespace["shots"]) == [1, 10]
    assert namespace["probe"]["l2"] in namespace["probe"]["l2_grid"]
    assert capsys.readouterr().out.count("\n") == 4  # the four prints
