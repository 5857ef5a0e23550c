"""The Python config file of docs/quickstart.md is a valid config."""

import pathlib
import re

from eqvlp.train.config import TrainConfig, load_config

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


def test_quickstart_config_file_loads(tmp_path):
    (block,) = re.findall(r"^```python\n(.*?)^```", (DOCS / "quickstart.md").read_text(),
                          flags=re.S | re.M)
    (tmp_path / "my_run.py").write_text(block)
    cfg = load_config(str(tmp_path / "my_run.py"))
    assert isinstance(cfg, TrainConfig) and cfg.loss.name == "chunked_sigmoid"
    assert cfg.steps == 3000 and cfg.model_config().loss == "sigmoid"
