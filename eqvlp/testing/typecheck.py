"""Switching off a test suite's jaxtyping import hook for a block of code."""

import contextlib
from collections.abc import Iterator

import jaxtyping


@contextlib.contextmanager
def unchecked() -> Iterator[None]:
    """Runs the block as users run eqvlp: without the runtime shape checks of a jaxtyping
    import hook (`--jaxtyping-packages`). The hook rejects some bad inputs with its own
    `TypeCheckError` before eqvlp's checks run; tests of eqvlp's error messages need those
    checks to speak."""
    old = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", old)
