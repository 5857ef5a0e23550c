"""Your sigmoid-style loss beside eqvlp's variants, on the same inputs, in one run.

Each function is timed as `jit(value_and_grad(loss, argnums=(0, 1, 2, 3)))` on random unit-norm
`(B, dim)` embeddings with scale 10 and bias -10 (row i of each batch is a pair), the way
`benchmarks/losses.py` measures eqvlp's own. eqvlp's variants:

- `reference`: `sigmoid_loss`, the full B x B logits.
- `chunked`: `chunked_sigmoid_loss(chunk_size=...)`, O(chunk * B) memory on one device.
- `ring`, `bidir`: `distributed_sigmoid_loss` under `shard_loss` over `devices` devices (on CPU
  these are simulated and share the cores: the time shows the algorithm's overhead, not a
  speed-up; memory is per device).
- `fused`: the Pallas kernel `fused_sigmoid_loss`. On CPU Pallas only runs in its interpreter,
  which checks the kernel but says nothing about speed, so it is included by default on GPU only.

GFLOP/s counts the nominal 6 B^2 dim FLOPs of a sigmoid loss's forward and backward (three
B x B x dim matmuls) for every row, so rates compare the same problem solved in different ways.
"""

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from eqvlp.benchmarking.measure import BenchmarkError
from eqvlp.benchmarking.peak import MatmulPeak, matmul_peak
from eqvlp.benchmarking.sweep import Sweep, sweep
from eqvlp.kernels import fused_sigmoid_loss
from eqvlp.losses import (
    chunked_sigmoid_loss,
    distributed_sigmoid_loss,
    normalize,
    shard_loss,
    sigmoid_loss,
)

__all__ = ["LOSS_VARIANTS", "check_loss", "compare_losses", "loss_flops", "loss_inputs"]

LOSS_VARIANTS = ("reference", "chunked", "ring", "bidir", "fused")
_SHARDED = ("ring", "bidir")


def loss_inputs(
    batch: int, dim: int
) -> tuple[Float[Array, "batch dim"], Float[Array, "batch dim"], Float[Array, ""], Float[Array, ""]]:
    """`(zimg, ztxt, scale, bias)`: random unit-norm float32 pairs (seeded by `batch`), 10, -10."""
    k1, k2 = jax.random.split(jax.random.key(batch))
    zimg = normalize(jax.random.normal(k1, (batch, dim), jnp.float32))
    ztxt = normalize(jax.random.normal(k2, (batch, dim), jnp.float32))
    return zimg, ztxt, jnp.float32(10.0), jnp.float32(-10.0)


def loss_flops(batch: int, dim: int) -> float:
    """Nominal FLOPs of a sigmoid loss's forward + backward: three B x B x dim matmuls."""
    return 6.0 * batch * batch * dim


def check_loss(fn: Callable, name: str, dim: int = 8) -> None:
    """Fails early, with the fix, if `fn` cannot be called as `loss(zimg, ztxt, scale, bias)`.

    Checks the signature, then traces `fn` (no compilation) on a `(4, dim)` batch and checks it
    returns a float scalar.
    """
    if not callable(fn):
        raise BenchmarkError(f"{name} is a {type(fn).__name__}, not a function: give a loss(zimg, ztxt, scale, bias)")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some callables (builtins, C extensions) have none
        signature = None
    if signature is not None:
        try:
            signature.bind(None, None, None, None)
        except TypeError as error:
            raise BenchmarkError(
                f"{name}{signature} cannot be called as loss(zimg, ztxt, scale, bias) ({error}): "
                "wrap it, e.g. lambda zimg, ztxt, scale, bias: my_loss(zimg, ztxt, scale)"
            ) from None
    try:
        out = jax.eval_shape(fn, *loss_inputs(4, dim))
    except Exception as error:
        first = str(error).splitlines()[0] if str(error) else ""
        raise BenchmarkError(
            f"{name}: tracing it as loss(zimg, ztxt, scale, bias) on a (4, {dim}) batch raised "
            f"{type(error).__name__}: {first}"
        ) from error
    if not (isinstance(out, jax.ShapeDtypeStruct) and out.shape == () and jnp.issubdtype(out.dtype, jnp.floating)):
        got = jax.tree.map(lambda s: f"{s.dtype}{list(s.shape)}", out)
        raise BenchmarkError(f"{name} returned {got} on a (4, {dim}) batch: a loss must return a float scalar")


def _eqvlp_losses(variants: Sequence[str], chunk_size: int, devices: int) -> dict[str, Callable]:
    out: dict[str, Callable] = {}
    for name in variants:
        if name == "reference":
            out[name] = sigmoid_loss
        elif name == "chunked":
            out[name] = functools.partial(chunked_sigmoid_loss, chunk_size=chunk_size)
        elif name in _SHARDED:
            mesh = jax.make_mesh((devices,), ("data",), devices=jax.devices()[:devices],
                                 axis_types=(jax.sharding.AxisType.Auto,))
            out[name] = shard_loss(distributed_sigmoid_loss, mesh, method=name)
        elif name == "fused":
            out[name] = fused_sigmoid_loss
    return out


def compare_losses(
    losses: Callable | Mapping[str, Callable] | None = None,
    *,
    batch_sizes: Sequence[int] = (1024, 4096),
    dim: int = 512,
    variants: Sequence[str] | None = None,
    reference: str | None = "reference",
    chunk_size: int = 512,
    devices: int | None = None,
    pallas: bool | None = None,
    repeats: int = 3,
    peak: MatmulPeak | None = None,
    matmul_shapes: Sequence[tuple[int, int, int]] | None = None,
    progress: Callable | None = None,
) -> Sweep:
    """Measures your loss(es) and eqvlp's sigmoid variants at each batch size.

    **Arguments:**

    - `losses`: your `loss(zimg, ztxt, scale, bias) -> scalar`, or `{name: loss}`; None for eqvlp's only.
    - `batch_sizes`, `dim`: the embedding batches `(B, dim)`.
    - `variants`: eqvlp's to include, from `LOSS_VARIANTS`; default all but `fused` on CPU.
    - `reference`: the row others are compared with ("reference" = `sigmoid_loss`, or one of yours).
    - `chunk_size`: of `chunked`; `devices`: of `ring`/`bidir` (default all of `jax.devices()`).
    - `pallas`: include `fused`; default on GPU only (on CPU it is interpreted, not a speed result).
    - `repeats`: timed runs per row (the median is reported).
    - `peak`: the matmul rate for "% matmul"; default: `matmul_peak(matmul_shapes)` measured once
      the inputs are checked.
    - `progress`: called with each row as it is measured.

    **Returns:** a `Sweep` (`to_markdown()`, `to_json()`); its notes say what was left out and why.
    """
    on_cpu = jax.default_backend() == "cpu"
    if pallas is None:
        pallas = not on_cpu
    if variants is None:
        variants = [v for v in LOSS_VARIANTS if v != "fused" or pallas]
    unknown = [v for v in variants if v not in LOSS_VARIANTS]
    if unknown:
        raise BenchmarkError(f"compare_losses: unknown variants {unknown}: choose from {LOSS_VARIANTS}")
    notes = []
    if "fused" not in variants and not pallas:
        notes.append("fused (Pallas) left out: on CPU it runs only in the Pallas interpreter, which says "
                     "nothing about speed (pass pallas=True / --pallas to include it)")
    elif "fused" in variants and on_cpu:
        notes.append("fused (Pallas) ran in the Pallas interpreter (CPU): its time and memory are not a "
                     "speed result")
    devices = devices or len(jax.devices())
    if any(v in _SHARDED for v in variants):
        if devices > len(jax.devices()):
            raise BenchmarkError(
                f"compare_losses: devices={devices} but JAX sees {len(jax.devices())}: on CPU set "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={devices} before JAX starts"
            )
        uneven = [b for b in batch_sizes if b % devices]
        if uneven:
            raise BenchmarkError(f"compare_losses: ring/bidir split the batch over {devices} devices; batch sizes "
                             f"{uneven} are not multiples of {devices}: change them or drop ring and bidir")
        notes.append(f"ring/bidir: {devices} {jax.default_backend()} devices; peak memory is per device"
                     + (" (simulated devices share the CPU cores: time shows overhead, not speed-up)"
                        if on_cpu and devices > 1 else ""))
    functions = _eqvlp_losses(variants, chunk_size, devices)
    if callable(losses) and not isinstance(losses, Mapping):
        losses = {getattr(losses, "__name__", "loss"): losses}
    for name, fn in (losses or {}).items():
        if name in functions:
            raise BenchmarkError(
                f"compare_losses: your loss is named {name!r} like an eqvlp variant: rename it"
            )
        check_loss(fn, name, dim)
        functions[name] = fn
    if reference is not None and reference not in functions:
        raise BenchmarkError(
            f"compare_losses: reference {reference!r} is not measured: choose one of {list(functions)}"
        )
    if "chunked" in variants:
        notes.append(f"chunked: chunk_size={chunk_size}")
    notes.append(f"GFLOP/s counts the nominal 6 B^2 D = forward + backward of a sigmoid loss (D = {dim}) for "
                 "every row")
    return sweep(
        functions, lambda b: loss_inputs(b, dim), batch_sizes, size="batch", params={"dim": dim},
        flops=lambda b: loss_flops(b, dim), grad=True, argnums=(0, 1, 2, 3), repeats=repeats,
        peak=peak if peak is not None else matmul_peak(matmul_shapes), reference=reference, notes=notes,
        progress=progress,
    )
