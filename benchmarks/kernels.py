"""Microbenchmarks of eqvlp's Pallas kernels against their XLA/cuDNN peers.

Attention (forward + backward, bf16 on GPU): the Pallas flash kernel vs
`jax.nn.dot_product_attention(implementation="xla")` and `"cudnn"`, over sequence lengths.
Sigmoid loss (forward + backward): the fused Pallas kernel vs the jnp chunked loss
(`eqvlp.losses.chunked_sigmoid_loss`) over batch sizes. Every row reports the median time
after compilation and TFLOP/s, and the run measures the device's dense matmul rate (bf16 on
GPU, f32 on CPU) so the kernels can be read as a fraction of it.

On CPU the Pallas kernels only run in the interpreter, which checks them but says nothing
about speed: the CPU path uses small sizes and exists so the script always runs.

    python -m benchmarks.kernels                         # sizes chosen for the backend
    python -m benchmarks.kernels --seqs 256 1024 4096 --batches 4096 65536 --json k.json

The measuring is `eqvlp.benchmarking` (`sweep`, `matmul_peak`); this script picks the kernels and
their peers and keeps the printout and JSON of benchmarks/RESULTS.md. To put your own attention
in a table beside eqvlp's: `python -m eqvlp.benchmarking attention --attention pkg.module:fn`.
"""

import argparse
import functools
import json

import jax
import jax.numpy as jnp

from eqvlp.benchmarking import (
    Failure,
    attention_flops,
    attention_inputs,
    loss_inputs,
    matmul_peak,
    summed,
    sweep,
)
from eqvlp.kernels import flash_attention, fused_sigmoid_loss
from eqvlp.losses import chunked_sigmoid_loss


def matmul_rate(dtype, n: int, repeats: int) -> float:
    """TFLOP/s of an n x n x n matmul."""
    return matmul_peak([(n, n, n)], dtype=dtype, repeats=repeats).flops_per_second / 1e12


def _row(m, kernel: str, size: str) -> dict:
    if isinstance(m, Failure):  # the peer is unavailable here
        return {"kernel": kernel, "impl": m.name, size: m.params[size], "error": m.error}
    return {"kernel": kernel, "impl": m.name, size: m.params[size], "ms": 1e3 * m.seconds,
            "tflops": m.flops_per_second / 1e12}


def attention_rows(seqs, dtype, batch, heads, head_dim, causal, repeats, impls):
    candidates = {
        "pallas": functools.partial(flash_attention, causal=causal, block_sizes=None),  # blocks sized to fit shared memory
        "xla": functools.partial(jax.nn.dot_product_attention, is_causal=causal, implementation="xla"),
        "cudnn": functools.partial(jax.nn.dot_product_attention, is_causal=causal, implementation="cudnn"),
    }
    result = sweep(
        {name: summed(candidates[name]) for name in impls},
        lambda t: attention_inputs(t, batch, heads, head_dim, dtype), seqs, size="seq",
        flops=lambda t: attention_flops(t, batch, heads, head_dim, causal=causal), argnums=(0, 1, 2),
        repeats=repeats, errors="record",
    )
    rows = {(m.params["seq"], m.name): _row(m, "attention", "seq") for m in (*result.rows, *result.failures)}
    return [rows[(t, name)] for t in seqs for name in impls]


def loss_rows(batches, dim, repeats, chunk):
    rows = []
    for b in batches:
        candidates = {
            "pallas": functools.partial(fused_sigmoid_loss, block_sizes=None),
            "jnp-chunked": functools.partial(chunked_sigmoid_loss, chunk_size=min(chunk, b)),
        }
        # forward 2B^2D + backward (recompute + two products) 6B^2D
        result = sweep(candidates, lambda b: loss_inputs(b, dim), [b], flops=lambda b: 8 * b * b * dim,
                       argnums=(0, 1), repeats=repeats)
        rows += [_row(m, "sigmoid_loss", "batch") for m in result.rows]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    gpu = jax.default_backend() == "gpu"
    parser.add_argument("--seqs", type=int, nargs="+",
                        default=[256, 512, 1024, 2048, 4096] if gpu else [64, 128])
    parser.add_argument("--batches", type=int, nargs="+",
                        default=[4096, 16384, 65536] if gpu else [256, 512])
    parser.add_argument("--attention-batch", type=int, default=8 if gpu else 1)
    parser.add_argument("--heads", type=int, default=12 if gpu else 2)
    parser.add_argument("--head-dim", type=int, default=64 if gpu else 32)
    parser.add_argument("--dim", type=int, default=512, help="embedding width for the loss")
    parser.add_argument("--chunk", type=int, default=2048 if gpu else 256)
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--repeats", type=int, default=10 if gpu else 2)
    parser.add_argument("--json", help="write all rows here")
    args = parser.parse_args()

    dtype = jnp.bfloat16 if gpu else jnp.float32
    impls = ["pallas", "xla", "cudnn"] if gpu else ["pallas", "xla"]
    device = jax.devices()[0].device_kind
    rate = matmul_rate(dtype, 8192 if gpu else 1024, args.repeats)
    rate32 = matmul_rate(jnp.float32, 8192 if gpu else 1024, args.repeats)
    print(f"device: {device} ({jax.default_backend()}), jax {jax.__version__}")
    print(f"dense matmul: {rate:.2f} TFLOP/s {jnp.dtype(dtype).name}, {rate32:.2f} TFLOP/s float32")
    if not gpu:
        print("CPU: Pallas kernels run in the interpreter here; their times are not a speed result")
    rows = attention_rows(args.seqs, dtype, args.attention_batch, args.heads, args.head_dim,
                          args.causal, args.repeats, impls)
    rows += loss_rows(args.batches, args.dim, args.repeats, args.chunk)
    print(f"\n{'kernel':<13} {'impl':<12} {'size':>7} {'ms':>10} {'TFLOP/s':>9} {'% matmul':>9}")
    for r in rows:
        size = r.get("seq", r.get("batch"))
        if "error" in r:
            print(f"{r['kernel']:<13} {r['impl']:<12} {size:>7} unavailable: {r['error']}")
            continue
        peak = rate if r["kernel"] == "attention" else rate32
        r["pct_matmul"] = 100 * r["tflops"] / peak
        print(f"{r['kernel']:<13} {r['impl']:<12} {size:>7} {r['ms']:>10.2f} {r['tflops']:>9.3f} "
              f"{r['pct_matmul']:>8.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "backend": jax.default_backend(),
                       "jax": jax.__version__, "matmul_tflops": rate,
                       "matmul_tflops_f32": rate32, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
