"""`TrainConfig`: named configs, Python config files, dotted overrides, JSON round trip, docs."""

import json
import pathlib

import pytest

from eqvlp import models
from eqvlp.train.config import (
    CONFIGS,
    TrainConfig,
    dotted_fields,
    from_json,
    load_config,
    override,
    reference_markdown,
    to_json,
)

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


def test_named_configs_build_and_differ():
    configs = {name: load_config(name) for name in CONFIGS}
    assert load_config(None) == configs["default"]
    assert configs["siglip-tiny"].model_config().loss == "sigmoid"
    assert type(configs["clippo-tiny"].model_config()).__name__ == "CLIPPOConfig"
    for cfg in configs.values():
        assert cfg.model_config().vision.image_size == cfg.data.image_size


def test_clippo_data_draws_captions_as_the_model_renders_them():
    from eqvlp.train.loop import data_config

    cfg = load_config("clippo-tiny")
    model_config = cfg.model_config()
    data = data_config(cfg, model_config)
    assert data.text == "render" and data.render == model_config.render
    assert data.render.font_size == 8  # a whole caption fits the 64 px image


def test_overrides_parse_by_field_type():
    cfg = override(load_config(), [
        "optim.lr=3e-4", "steps=7", "data.image_size=(48, 64)", "eval.tasks=('retrieval',)",
        "optim.ema_decay=0.99", "optim.clip_norm=None", "eval.zeroshot=classes.json",
        "model.vision.depth=2", "precision=bfloat16", "data.workers=2",
    ])
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float) and cfg.steps == 7
    assert cfg.data.image_size == (48, 64) and cfg.eval.tasks == ("retrieval",)
    assert cfg.optim.ema_decay == 0.99 and cfg.optim.clip_norm is None
    assert cfg.eval.zeroshot == "classes.json" and cfg.model.vision.depth == 2
    assert cfg.model_config().dtype == "bfloat16" and cfg.data.workers == 2
    # a preset name becomes its config so that nested keys can be set
    nested = override(TrainConfig(model="clip-tiny"), ["model.text.depth=1"])
    assert nested.model.text.depth == 1
    assert nested.model.vision == models.config("clip-tiny").vision
    assert override(load_config(), ["model=siglip-tiny"]).model == "siglip-tiny"


def test_unknown_keys_and_bad_values_name_the_fix():
    with pytest.raises(ValueError, match=r"'optim.lrr'.*did you mean optim.lr"):
        override(load_config(), ["optim.lrr=1"])
    with pytest.raises(ValueError, match="did you mean steps"):
        override(load_config(), ["stepz=1"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        override(load_config(), ["steps"])
    with pytest.raises(ValueError, match="did you mean clip-tiny"):
        override(load_config(), ["model=clip-tiyn"])
    with pytest.raises(ValueError, match="accumulation"):
        override(load_config(), ["accumulation=3"])  # 128 does not split into 3
    with pytest.raises(ValueError, match="unknown config 'defualt'.*default"):
        load_config("defualt")
    with pytest.raises(ValueError, match="not a TextAugment"):
        override(load_config(), ["data.text_augment=0.3"])


def test_a_nested_config_can_be_given_whole():
    cfg = override(load_config(), ['data.text_augment={"delete": 0.3}'])
    assert cfg.data.text_augment.delete == 0.3 and cfg.data.text_augment.swap == 0.1


def test_python_config_file(tmp_path):
    path = tmp_path / "my_run.py"
    path.write_text(
        "import dataclasses\n"
        "from eqvlp.train.config import load_config\n"
        "def config():\n"
        "    return dataclasses.replace(load_config('siglip-tiny'), steps=11)\n")
    assert load_config(str(path)).steps == 11
    (tmp_path / "bad.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="must define config"):
        load_config(str(tmp_path / "bad.py"))
    with pytest.raises(FileNotFoundError):
        load_config(str(tmp_path / "missing.py"))


def test_json_round_trip_of_every_named_config():
    for name in CONFIGS:
        cfg = override(load_config(name), ["data.image_size=(64, 64)"])
        assert from_json(json.loads(json.dumps(to_json(cfg)))) == cfg
    with pytest.raises(ValueError, match="only eqvlp"):
        from_json({"__class__": "os:system"})


def test_every_key_is_documented_and_the_reference_is_current():
    text = reference_markdown()
    assert (DOCS / "config.md").read_text() == text, \
        "docs/config.md is stale: python -m eqvlp.train.config > docs/config.md"
    for key, value in dotted_fields(TrainConfig()).items():
        if not key.startswith("model.") and not hasattr(value, "__dataclass_fields__"):
            assert f"`{key}`" in text, key
