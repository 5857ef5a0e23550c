"""Your attention beside eqvlp's implementations, forward + backward, over sequence lengths.

Inputs are `(batch, seq, heads, head_dim)` as in `jax.nn.dot_product_attention`; each function
`attn(q, k, v)` (with `causal=True` passed when asked) is timed as the gradient of
`sum(attn(q, k, v))` with respect to q, k and v. eqvlp's implementations:

- `xla`: `attention_reference`, plain softmax attention (float32 logits), what
  `eqvlp.kernels.attention(impl="xla")` runs.
- `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")`; GPU with bf16/fp16 only.
- `pallas`: the flash kernel `flash_attention`. On CPU Pallas only runs in its interpreter,
  which says nothing about speed, so it is included by default on GPU only.

GFLOP/s counts the nominal FLOPs of a flash kernel's forward + backward, 3.5x the forward's
`4 B H T^2 D` (halved when causal): the backward recomputes the scores.
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
from eqvlp.kernels import attention_reference, flash_attention

__all__ = ["ATTENTION_VARIANTS", "attention_flops", "attention_inputs", "check_attention", "compare_attention",
           "summed"]

ATTENTION_VARIANTS = ("xla", "cudnn", "pallas")


def attention_inputs(
    seq: int, batch: int, heads: int, head_dim: int, dtype: jnp.dtype | str = jnp.float32
) -> tuple[Float[Array, "batch seq heads head_dim"], ...]:
    """`(q, k, v)`: standard normal, seeded by `seq`."""
    keys = jax.random.split(jax.random.key(seq), 3)
    return tuple(jax.random.normal(k, (batch, seq, heads, head_dim), dtype) for k in keys)


def attention_flops(seq: int, batch: int, heads: int, head_dim: int, *, causal: bool = False) -> float:
    """Nominal forward + backward FLOPs of flash attention: 3.5x the forward's 4 B H T^2 D."""
    forward = 4.0 * batch * heads * seq * seq * head_dim * (0.5 if causal else 1.0)
    return 3.5 * forward


def summed(attn: Callable) -> Callable:
    """`sum(attn(q, k, v))` in float32: a scalar to differentiate, as a training loss would."""

    @functools.wraps(attn)
    def loss(q, k, v):
        return jnp.sum(attn(q, k, v).astype(jnp.float32))

    return loss


def check_attention(fn: Callable, name: str, *, causal: bool = False) -> None:
    """Fails early, with the fix, if `fn` cannot be called as `attn(q, k, v)` returning q's shape."""
    if not callable(fn):
        raise BenchmarkError(f"{name} is a {type(fn).__name__}, not a function: give an attn(q, k, v)")
    call = "attn(q, k, v, causal=True)" if causal else "attn(q, k, v)"
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        try:
            signature.bind(None, None, None, **({"causal": True} if causal else {}))
        except TypeError as error:
            example = ("lambda q, k, v, causal: my_attention(q, k, v, is_causal=causal)" if causal
                       else "lambda q, k, v: my_attention(q, k, v, mask=None)")
            raise BenchmarkError(f"{name}{signature} cannot be called as {call} ({error}): wrap it, e.g. "
                                 f"{example}") from None
    q = jax.ShapeDtypeStruct((1, 8, 2, 16), jnp.float32)
    try:
        out = jax.eval_shape(functools.partial(fn, causal=True) if causal else fn, q, q, q)
    except Exception as error:
        first = str(error).splitlines()[0] if str(error) else ""
        raise BenchmarkError(f"{name}: tracing it as {call} on q, k, v of shape {list(q.shape)} raised "
                             f"{type(error).__name__}: {first}") from error
    if not (isinstance(out, jax.ShapeDtypeStruct) and out.shape == q.shape):
        got = jax.tree.map(lambda s: f"{s.dtype}{list(s.shape)}", out)
        raise BenchmarkError(f"{name} returned {got} for q, k, v of shape {list(q.shape)}: attention must return "
                        "an array of q's shape (batch, seq, heads, head_dim)")


def _eqvlp_attention(name: str, causal: bool) -> Callable:
    if name == "xla":
        return functools.partial(attention_reference, causal=causal)
    if name == "cudnn":
        return functools.partial(jax.nn.dot_product_attention, is_causal=causal, implementation="cudnn")
    return functools.partial(flash_attention, causal=causal)


def compare_attention(
    attention: Callable | Mapping[str, Callable] | None = None,
    *,
    seqs: Sequence[int] = (256, 1024),
    batch: int = 1,
    heads: int = 4,
    head_dim: int = 64,
    causal: bool = False,
    dtype: jnp.dtype | str | None = None,
    variants: Sequence[str] | None = None,
    reference: str | None = "xla",
    pallas: bool | None = None,
    repeats: int = 3,
    peak: MatmulPeak | None = None,
    matmul_shapes: Sequence[tuple[int, int, int]] | None = None,
    progress: Callable | None = None,
) -> Sweep:
    """Measures your attention function(s) and eqvlp's implementations at each sequence length.

    **Arguments:**

    - `attention`: your `attn(q, k, v) -> (batch, seq, heads, head_dim)` (called with
      `causal=True` when `causal`), or `{name: attn}`; None for eqvlp's only.
    - `seqs`, `batch`, `heads`, `head_dim`: the shapes; `dtype`: default bf16 on GPU, else float32.
    - `variants`: eqvlp's, from `ATTENTION_VARIANTS`; default: those that run natively here
      (`xla`; `cudnn` on GPU in bf16/fp16; `pallas` on GPU or when `pallas=True`).
    - `reference`: the row others are compared with.
    - `repeats`, `peak`, `matmul_shapes`, `progress`: as for `compare_losses` (the peak in `dtype`).

    **Returns:** a `Sweep` over "seq"; its notes say what was left out and why.
    """
    gpu = jax.default_backend() == "gpu"
    dtype = jnp.dtype(dtype or (jnp.bfloat16 if gpu else jnp.float32))
    half = dtype in (jnp.bfloat16, jnp.float16)
    if pallas is None:
        pallas = gpu
    notes = []
    if variants is None:
        variants = ["xla"]
        if gpu and half:
            variants.append("cudnn")
        else:
            notes.append(f"cudnn left out: it needs a GPU and bf16/fp16 (here {jax.default_backend()}, {dtype.name})")
        if pallas:
            variants.append("pallas")
        else:
            notes.append("pallas left out: on CPU it runs only in the Pallas interpreter, which says nothing "
                         "about speed (pass pallas=True / --pallas to include it)")
    unknown = [v for v in variants if v not in ATTENTION_VARIANTS]
    if unknown:
        raise BenchmarkError(f"compare_attention: unknown variants {unknown}: choose from {ATTENTION_VARIANTS}")
    if "pallas" in variants and not gpu:
        notes.append("pallas ran in the Pallas interpreter: its time and memory are not a speed result")
    functions = {name: summed(_eqvlp_attention(name, causal)) for name in variants}
    if callable(attention) and not isinstance(attention, Mapping):
        attention = {getattr(attention, "__name__", "attention"): attention}
    for name, fn in (attention or {}).items():
        if name in functions:
            raise BenchmarkError(
                f"compare_attention: your function is named {name!r} like an eqvlp variant: rename it"
            )
        check_attention(fn, name, causal=causal)
        functions[name] = summed(functools.partial(fn, causal=True) if causal else fn)
    if reference is not None and reference not in functions:
        raise BenchmarkError(
            f"compare_attention: reference {reference!r} is not measured: choose one of {list(functions)}"
        )
    notes.append(f"batch {batch}; GFLOP/s counts 3.5x the forward's 4 B H T^2 D{' / 2' if causal else ''} "
                 "(flash forward + backward with recomputation) for every row")
    return sweep(
        functions, lambda t: attention_inputs(t, batch, heads, head_dim, dtype), seqs, size="seq",
        params={"heads": heads, "head_dim": head_dim, "dtype": dtype.name, "causal": causal},
        flops=lambda t: attention_flops(t, batch, heads, head_dim, causal=causal), grad=True, argnums=(0, 1, 2),
        repeats=repeats, peak=peak if peak is not None else matmul_peak(matmul_shapes, dtype=dtype),
        reference=reference, notes=notes, progress=progress, errors="record",
    )
