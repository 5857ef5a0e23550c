"""eqvlp: typed, composable, sharded vision-language pre-training on JAX and Equinox."""

__version__ = "0.1.0"
