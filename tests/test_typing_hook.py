"""The test suite's runtime type checking (pyproject's `--jaxtyping-packages`) covers every eqvlp
module except the per-sample input pipeline, and really checks shapes."""

import pkgutil
import tomllib
from pathlib import Path

import jax.numpy as jnp
import jaxtyping
import pytest

import eqvlp

ROOT = Path(__file__).resolve().parents[1]
NOT_CHECKED = {"eqvlp.data"}  # per-sample functions: see the comment in pyproject.toml


def checked_packages() -> set[str]:
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]
    for option in options["ini_options"]["addopts"].split():
        if option.startswith("--jaxtyping-packages="):
            return set(option.split("=", 1)[1].split(",")[:-1])  # the last is the checker
    raise AssertionError("pyproject.toml no longer sets --jaxtyping-packages")


def test_every_module_but_the_data_pipeline_is_checked():
    modules = {f"eqvlp.{m.name}" for m in pkgutil.iter_modules(eqvlp.__path__)
               if m.name != "__main__"}
    assert checked_packages() == modules - NOT_CHECKED, (
        "add the new module to --jaxtyping-packages in pyproject.toml")


def test_a_wrong_shape_is_caught_in_a_checked_module():
    from eqvlp.losses import clip_loss

    with pytest.raises(jaxtyping.TypeCheckError):
        clip_loss(jnp.ones((4, 8)), jnp.ones((3, 8)), jnp.asarray(1.0))
