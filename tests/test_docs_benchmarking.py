"""Runs the ```python blocks of docs/benchmarking.md and checks what they report."""

from doc_pages import run_page

from eqvlp.benchmarking import Measurement, Sweep


def test_benchmarking_page_runs(capsys):
    namespace = run_page("benchmarking.md", min_blocks=4)
    assert isinstance(namespace["m"], Measurement) and namespace["m"].peak_bytes > 0
    result = namespace["result"]
    assert isinstance(result, Sweep)
    assert {m.name for m in result.rows} == {"reference", "chunked", "ring", "bidir", "hard_negative_sigmoid"}
    assert any("fused (Pallas) left out" in note for note in result.notes)
    assert {m.params["chunk_size"] for m in namespace["chunks"].rows} == {128, 512}
    assert "| hard_negative_sigmoid | 4096 |" in capsys.readouterr().out
