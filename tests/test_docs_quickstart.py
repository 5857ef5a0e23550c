"""The Python config file of docs/quickstart.md is a valid config."""

from doc_pages import python_blocks

from eqvlp.train.config import TrainConfig, load_config


def test_quickstart_config_file_loads(tmp_path):
    (block,) = python_blocks("quickstart.md")
    (tmp_path / "my_run.py").write_text(block)
    cfg = load_config(str(tmp_path / "my_run.py"))
    assert isinstance(cfg, TrainConfig) and cfg.loss.name == "chunked_sigmoid"
    assert cfg.steps == 3000 and cfg.model_config().loss == "sigmoid"
