"""One microbenchmark: compile a function once, time it, and read XLA's memory and cost analyses.

The method is the one eqvlp's own benchmarks have always used: `jit` (of `value_and_grad` when
`grad=True`), lower and compile once (timed separately), one warm-up call, then the median of
`repeats` timed calls, each ended by `block_until_ready`. Memory and FLOPs come from the compiled
executable, not from a run:

- `compiled.memory_analysis()`: XLA's buffer assignment for the program. The peak reported here is
  its temporaries plus outputs (arguments excluded), the same figure on CPU and GPU; CPU has no
  allocator high-water mark to read instead.
- `compiled.cost_analysis()["flops"]`: XLA's static count. It counts a loop body once, whatever
  the trip count, so for functions built on `lax.scan`/`fori_loop` (chunked or ring losses) pass
  the nominal FLOPs yourself.

For a sharded function (sharded inputs, or `shard_map` inside) XLA compiles one SPMD program that
every device runs; both analyses describe that per-device program. So `peak_bytes` is the memory
of ONE device, and the FLOPs from the cost analysis are multiplied here by the number of devices
the program runs on, so that `flops` is always the whole computation's.
"""

import dataclasses
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["BenchmarkError", "Measurement", "measure"]


class BenchmarkError(ValueError):
    """A benchmark cannot be set up as asked (bad function, shapes, devices); the message says the fix."""


@dataclasses.dataclass(frozen=True)
class Measurement:
    """What `measure` found for one function on one set of inputs.

    **Fields:**

    - `name`: a label for tables; `params`: what the inputs were (e.g. `{"batch": 1024}`).
    - `times`: seconds of each timed call; `seconds` is their median, `seconds_min`/`_max` the spread.
    - `compile_seconds`: lowering plus compilation.
    - `peak_bytes`: temporaries + outputs of the compiled program (per device when sharded); None
      when the backend gives no memory analysis. `argument_bytes`: its inputs, likewise.
    - `devices`: how many devices the program runs on.
    - `flops`: FLOPs of one call over all devices; `flops_source`: "given", "cost_analysis" or
      "unknown".
    - `value`: the function's value (the loss when `grad=True`) if it is a scalar, else None.
    - `grad`: whether `value_and_grad` was timed rather than the function alone.
    """

    name: str
    params: Mapping[str, Any]
    times: tuple[float, ...]
    compile_seconds: float
    peak_bytes: int | None
    argument_bytes: int | None
    devices: int
    flops: float | None
    flops_source: str
    value: float | None
    grad: bool

    @property
    def seconds(self) -> float:
        """Median seconds per call."""
        return statistics.median(self.times)

    @property
    def seconds_min(self) -> float:
        return min(self.times)

    @property
    def seconds_max(self) -> float:
        return max(self.times)

    @property
    def flops_per_second(self) -> float | None:
        return None if self.flops is None else self.flops / self.seconds

    def fraction_of(self, peak_flops_per_second: float) -> float | None:
        """This rate as a fraction of another (e.g. `MatmulPeak.flops_per_second`)."""
        rate = self.flops_per_second
        return None if rate is None else rate / peak_flops_per_second

    def to_json(self) -> dict:
        """Plain JSON types, derived figures included."""
        return {
            "name": self.name,
            **dict(self.params),
            "seconds": self.seconds,
            "seconds_min": self.seconds_min,
            "seconds_max": self.seconds_max,
            "times": list(self.times),
            "compile_seconds": self.compile_seconds,
            "peak_bytes": self.peak_bytes,
            "argument_bytes": self.argument_bytes,
            "devices": self.devices,
            "flops": self.flops,
            "flops_source": self.flops_source,
            "gflops": None if self.flops is None else self.flops_per_second / 1e9,
            "value": self.value,
            "grad": self.grad,
        }

    def to_markdown(self) -> str:
        """A one-row Markdown table (see `eqvlp.benchmarking.Sweep` for many rows)."""
        from eqvlp.benchmarking.sweep import Sweep

        return Sweep(rows=(self,)).to_markdown()


def _float_argnums(args: Sequence[Any]) -> tuple[int, ...]:
    """The positional arguments whose leaves are all floating-point arrays."""

    def is_float(x):
        return isinstance(x, jax.Array | np.ndarray | np.generic) and jnp.issubdtype(x.dtype, jnp.inexact)

    return tuple(
        i for i, a in enumerate(args)
        if (leaves := jax.tree.leaves(a)) and all(is_float(x) for x in leaves)
    )


def _devices(compiled) -> int:
    shardings = jax.tree.leaves((compiled.input_shardings, compiled.output_shardings))
    return max((s.num_devices for s in shardings), default=1)


def _memory(compiled) -> tuple[int | None, int | None]:
    try:
        stats = compiled.memory_analysis()
    except NotImplementedError:  # a backend without buffer-assignment statistics
        stats = None
    if stats is None:
        return None, None
    return int(stats.temp_size_in_bytes + stats.output_size_in_bytes), int(stats.argument_size_in_bytes)


def _cost_flops(compiled) -> float | None:
    try:
        cost = compiled.cost_analysis()
    except NotImplementedError:
        return None
    if isinstance(cost, list | tuple):  # older jax: one dict per program
        cost = cost[0] if cost else None
    flops = None if not cost else cost.get("flops")
    return None if flops is None or flops <= 0 else float(flops)


def _scalar(x) -> float | None:
    if isinstance(x, jax.Array | np.ndarray | np.generic) and x.shape == () and jnp.issubdtype(x.dtype, jnp.number):
        return float(x)
    return None


def measure(
    fn: Callable,
    *args: Any,
    grad: bool = True,
    argnums: int | Sequence[int] | None = None,
    repeats: int = 5,
    warmup: int = 1,
    flops: int | float | None = None,  # noqa: PYI041 - the runtime type checks want int spelled out
    name: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> Measurement:
    """Times `fn(*args)` (or its `value_and_grad`) compiled once; reads XLA's memory and FLOPs.

    **Arguments:**

    - `fn`: any JAX-traceable function of positional arguments (bind keywords with
      `functools.partial`). Already-jitted functions are fine.
    - `args`: the inputs, arrays or pytrees of arrays; sharded arrays give a sharded program.
    - `grad`: time `jax.value_and_grad(fn, argnums)` (a training step's loss work) instead of
      `fn`; `fn` must then return a scalar.
    - `argnums`: what to differentiate; default: every argument made only of float arrays.
    - `repeats`: timed calls after compilation and `warmup` untimed ones; the median is reported.
    - `flops`: FLOPs of one call (forward and backward when `grad`) over all devices; default:
      XLA's cost analysis, which counts a loop body once (see the module docstring).
    - `name`, `params`: labels for tables and JSON.

    **Returns:** a `Measurement`. Its `peak_bytes` is XLA's compiled memory analysis
    (temporaries + outputs, arguments excluded) of the per-device program: for a sharded
    function it is the memory of one device, not the sum over devices.
    """
    if repeats < 1 or warmup < 0:
        raise BenchmarkError(f"measure needs repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    label = name or getattr(fn, "__name__", type(fn).__name__)
    target = fn
    if grad:
        if argnums is None:
            argnums = _float_argnums(args)
            if not argnums:
                raise BenchmarkError(
                    f"measure({label}, grad=True): no argument is a floating-point array to "
                    "differentiate; pass grad=False or argnums="
                )
        out = jax.eval_shape(fn, *args)
        if not (isinstance(out, jax.ShapeDtypeStruct) and out.shape == () and jnp.issubdtype(out.dtype, jnp.floating)):
            shape = jax.tree.map(lambda s: (s.shape, str(s.dtype)), out)
            raise BenchmarkError(
                f"measure({label}, grad=True) needs fn to return a float scalar, got {shape}: "
                "reduce the output (e.g. lambda *a: jnp.sum(fn(*a))) or pass grad=False"
            )
        target = jax.value_and_grad(fn, argnums=argnums)

    start = time.perf_counter()
    compiled = jax.jit(target).lower(*args).compile()
    compile_seconds = time.perf_counter() - start

    for _ in range(warmup):
        jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)

    devices = _devices(compiled)
    peak_bytes, argument_bytes = _memory(compiled)
    if flops is not None:
        total, source = float(flops), "given"
    elif (per_device := _cost_flops(compiled)) is not None:
        total, source = per_device * devices, "cost_analysis"
    else:
        total, source = None, "unknown"
    return Measurement(
        name=label,
        params=dict(params or {}),
        times=tuple(times),
        compile_seconds=compile_seconds,
        peak_bytes=peak_bytes,
        argument_bytes=argument_bytes,
        devices=devices,
        flops=total,
        flops_source=source,
        value=_scalar(result[0] if grad else result),
        grad=grad,
    )
