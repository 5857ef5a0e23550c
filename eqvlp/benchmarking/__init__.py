"""Microbenchmarks of any JAX function, your own losses and kernels included, the way eqvlp measures its own.

- `measure(fn, *args, grad=True)`: compile once, median time of repeats with the spread, compile
  time, peak memory from XLA's compiled memory analysis (per device for sharded programs), FLOPs
  given or from XLA's cost analysis. Returns a `Measurement`.
- `matmul_peak()`: the dense matmul rate measured in the same process: the 100% of "% matmul".
- `sweep(functions, make_args, sizes, grid=...)`: every function at every size (and chunk or
  block size); a `Sweep` shows how time and memory grow, and each row against a reference.
- `compare_losses(my_loss)`, `compare_attention(my_attention)`: yours beside eqvlp's variants.

Every result is a frozen dataclass with `to_json()` and `to_markdown()`. The same comparisons run
from the shell: `python -m eqvlp.benchmarking losses --loss pkg.module:fn` (or `attention
--attention pkg.module:fn`). See docs/benchmarking.md.
"""

from eqvlp.benchmarking.attention import (
    ATTENTION_VARIANTS,
    attention_flops,
    attention_inputs,
    check_attention,
    compare_attention,
    summed,
)
from eqvlp.benchmarking.losses import (
    LOSS_VARIANTS,
    check_loss,
    compare_losses,
    loss_flops,
    loss_inputs,
)
from eqvlp.benchmarking.measure import BenchmarkError, Measurement, measure
from eqvlp.benchmarking.peak import MatmulPeak, matmul_peak
from eqvlp.benchmarking.sweep import Failure, Sweep, machine, sweep

__all__ = [
    "ATTENTION_VARIANTS",
    "LOSS_VARIANTS",
    "BenchmarkError",
    "Failure",
    "MatmulPeak",
    "Measurement",
    "Sweep",
    "attention_flops",
    "attention_inputs",
    "check_attention",
    "check_loss",
    "compare_attention",
    "compare_losses",
    "loss_flops",
    "loss_inputs",
    "machine",
    "matmul_peak",
    "measure",
    "summed",
    "sweep",
]
