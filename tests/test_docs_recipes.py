"""Every `eqvlp train` command of docs/recipes.md and quickstart's recipes section builds a valid
run (config keys, CLIPA phases, objective checks) without training."""

import re
import shlex

import pytest
from doc_pages import DOCS

from eqvlp.train.clipa import training_phases
from eqvlp.train.config import CONFIGS, load_config, override
from eqvlp.train.loop import check_objectives, data_config

FLAGS = {"--workdir": "workdir", "--data": "data.data", "--steps": "steps"}


def train_commands(page: str) -> list[str]:
    text = (DOCS / page).read_text()
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("eqvlp train"):
                commands.append(line)
    return commands


def config_of(command: str):
    args = shlex.split(command)[2:]
    name, sets = None, []
    for flag, value in zip(args[::2], args[1::2], strict=True):
        if flag == "--config":
            name = value
        elif flag == "--set":
            sets.append(value)
        else:
            sets.insert(0, f"{FLAGS[flag]}={value}")
    return override(load_config(name), sets)


COMMANDS = train_commands("recipes.md") + train_commands("quickstart.md")[-3:]


@pytest.mark.parametrize("command", COMMANDS)
def test_recipe_command_builds_a_valid_run(command):
    cfg = config_of(command)
    model_config = cfg.model_config()
    check_objectives(cfg, model_config)
    phases = training_phases(cfg, model_config, data_config(cfg, model_config))
    assert ("clipa" in command) == (len(phases) == 2)


def test_every_recipe_config_is_shown():
    shown = " ".join(COMMANDS)
    for name in ("clipa-tiny", "rocket-tiny", "clippo-cotraining"):
        assert name in CONFIGS and f"--config {name}" in shown
