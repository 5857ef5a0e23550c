"""Test-suite set-up: eight fake CPU devices, strict dtype promotion, a key fixture.

XLA_FLAGS must be set before JAX is imported anywhere, so it happens at the top of this file.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Many tests (and the `eqvlp train` subprocesses they start) compile the same tiny programs:
# one persistent compilation cache per test session, shared by the xdist workers and their
# subprocesses through the environment, saves ~10-15% of the suite's CPU time. It starts empty
# on every run, so no stale executable can pass a test.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile  # noqa: E402

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="eqvlp-test-jax-cache-")
    os.environ["EQVLP_TEST_OWNS_JAX_CACHE"] = "1"
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

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


def pytest_unconfigure(config):
    """The session's compilation cache goes with it (only the process that made it removes it)."""
    if os.environ.get("EQVLP_TEST_OWNS_JAX_CACHE") and not hasattr(config, "workerinput"):
        import shutil

        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
