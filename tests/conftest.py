"""Test-suite set-up: eight fake CPU devices, strict dtype promotion, a key fixture.

XLA_FLAGS must be set before JAX is imported anywhere, so it happens at the top of this file.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import itertools  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")

# Property tests draw the same examples on every run (a seed per test): CI fails only on a
# change, never on a new random draw. Explore afresh with --hypothesis-seed=random.
from hypothesis import settings  # noqa: E402

settings.register_profile("eqvlp", derandomize=True, database=None)
settings.load_profile("eqvlp")


@pytest.fixture
def getkey():
    """Returns a function that hands out a fresh PRNG key on each call."""
    counter = itertools.count()
    base = jax.random.key(0)
    return lambda: jax.random.fold_in(base, next(counter))
