"""The machine's dense matmul rate, measured in the same process as the benchmarks it scales.

A FLOP rate means little on its own: the same loss runs at 80 GFLOP/s on a busy 2-core CPU and at
hundreds of TFLOP/s on a GPU. Dividing by the best matmul rate measured in the same run gives a
fraction that survives a change of machine, and of load on a shared one.
"""

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from eqvlp.benchmarking.measure import Measurement, measure

__all__ = ["MatmulPeak", "matmul_peak"]


@dataclasses.dataclass(frozen=True)
class MatmulPeak:
    """Rates of `(m x k) @ (k x n)` matmuls; the best one is the 100% of "% of matmul rate"."""

    dtype: str
    measurements: tuple[Measurement, ...]

    @property
    def best(self) -> Measurement:
        return max(self.measurements, key=lambda m: m.flops_per_second)

    @property
    def flops_per_second(self) -> float:
        return self.best.flops_per_second

    def to_json(self) -> dict:
        return {
            "dtype": self.dtype,
            "rates": [{"shape": m.params["shape"], "gflops": m.flops_per_second / 1e9, "seconds": m.seconds}
                      for m in self.measurements],
            "best_shape": self.best.params["shape"],
            "best_gflops": self.flops_per_second / 1e9,
        }

    def to_markdown(self) -> str:
        lines = [f"| {self.dtype} matmul | GFLOP/s | ms |", "| --- | ---: | ---: |"]
        for m in self.measurements:
            best = " (best)" if m is self.best else ""
            lines.append(f"| {m.params['shape']}{best} | {m.flops_per_second / 1e9:.1f} | {1e3 * m.seconds:.2f} |")
        return "\n".join(lines)


def _default_shapes() -> tuple[tuple[int, int, int], ...]:
    n = 2048 if jax.default_backend() == "cpu" else 8192
    return ((n, n, n),)


def matmul_peak(
    shapes: Sequence[tuple[int, int, int]] | None = None,
    *,
    dtype: jnp.dtype | str = jnp.float32,
    repeats: int = 3,
) -> MatmulPeak:
    """Measures `a @ b` for each `(m, k, n)` in `shapes` (default: 2048^3 on CPU, 8192^3 elsewhere).

    Rates count `2 m k n` FLOPs per call, on the default device. Give the shapes your function
    actually multiplies (e.g. `(chunk, dim, batch)`) to see how far it is from the matmul it is
    made of, as well as from the best square one.
    """
    dtype = jnp.dtype(dtype)
    results = []
    for m, k, n in shapes or _default_shapes():
        a = jax.random.normal(jax.random.key(0), (m, k), dtype)
        b = jax.random.normal(jax.random.key(1), (k, n), dtype)
        results.append(measure(jnp.matmul, a, b, grad=False, repeats=repeats, flops=2 * m * k * n,
                               name="matmul", params={"shape": f"({m}x{k})@({k}x{n})"}))
    return MatmulPeak(dtype=dtype.name, measurements=tuple(results))
