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
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp

from eqvlp.kernels import AttentionBlockSizes, LossBlockSizes, flash_attention, fused_sigmoid_loss
from eqvlp.losses import chunked_sigmoid_loss


def timed(fn, *args, repeats: int) -> float:
    """Median seconds per call after one compiling call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rate(dtype, n: int, repeats: int) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    f = jax.jit(lambda a: a @ a)
    return 2 * n**3 / timed(f, a, repeats=repeats) / 1e12


def attention_rows(seqs, dtype, batch, heads, head_dim, causal, repeats, impls):
    rows = []
    for t in seqs:
        keys = jax.random.split(jax.random.key(t), 3)
        q, k, v = (jax.random.normal(kk, (batch, t, heads, head_dim), dtype) for kk in keys)
        fwd_flops = 4 * batch * heads * t * t * head_dim * (0.5 if causal else 1.0)
        flops = 3.5 * fwd_flops  # forward + backward with the backward's recomputation
        candidates = {
            "pallas": lambda q, k, v: flash_attention(q, k, v, causal=causal,
                                                      block_sizes=AttentionBlockSizes(128, 128)),
            "xla": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal,
                                                                implementation="xla"),
            "cudnn": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal,
                                                                  implementation="cudnn"),
        }
        for name in impls:
            loss = lambda q, k, v, f=candidates[name]: jnp.sum(f(q, k, v).astype(jnp.float32))
            step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
            try:
                seconds = timed(step, q, k, v, repeats=repeats)
            except Exception as error:  # noqa: BLE001 - a peer may be unavailable here
                rows.append({"kernel": "attention", "impl": name, "seq": t,
                             "error": f"{type(error).__name__}: {str(error)[:120]}"})
                continue
            rows.append({"kernel": "attention", "impl": name, "seq": t, "ms": 1e3 * seconds,
                         "tflops": flops / seconds / 1e12})
    return rows


def loss_rows(batches, dim, repeats, chunk):
    rows = []
    for b in batches:
        k1, k2 = jax.random.split(jax.random.key(b))
        zi = jax.random.normal(k1, (b, dim))
        zt = jax.random.normal(k2, (b, dim))
        zi, zt = (z / jnp.linalg.norm(z, axis=1, keepdims=True) for z in (zi, zt))
        flops = 8 * b * b * dim  # forward 2B^2D + backward (recompute + two products) 6B^2D
        candidates = {
            "pallas": lambda zi, zt: fused_sigmoid_loss(zi, zt, 10.0, -10.0,
                                                        block_sizes=LossBlockSizes(128, 128)),
            "jnp-chunked": lambda zi, zt: chunked_sigmoid_loss(zi, zt, 10.0, -10.0,
                                                               chunk_size=min(chunk, b)),
        }
        for name, f in candidates.items():
            step = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))
            seconds = timed(step, zi, zt, repeats=repeats)
            rows.append({"kernel": "sigmoid_loss", "impl": name, "batch": b, "ms": 1e3 * seconds,
                         "tflops": flops / seconds / 1e12})
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
