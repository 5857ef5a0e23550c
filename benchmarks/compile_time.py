"""Compile time and step time of the scanned encoder versus an unrolled one, by depth.

`lax.scan` traces one block whatever the depth, so its compile time should stay flat while the
unrolled encoder's grows linearly. Not part of the test suite.

    python -m benchmarks.compile_time --depths 2 6 12 24 --json compile_time.json
"""

import argparse
import json
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp

from eqvlp import nn


def measure(depth: int, unroll: bool, width: int, seq: int, repeats: int) -> dict:
    encoder = nn.Encoder(depth, width, width // 64, 4 * width, key=jax.random.key(0))
    x = jnp.ones((8, seq, width))

    def loss(enc, x):
        return jnp.sum(jax.vmap(lambda t: enc(t, unroll=unroll))(x) ** 2)

    step = eqx.filter_jit(eqx.filter_value_and_grad(loss))
    start = time.perf_counter()
    compiled = step.lower(encoder, x).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(encoder, x))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(encoder, x))
        times.append(time.perf_counter() - start)
    return {"depth": depth, "encoder": "unrolled" if unroll else "scan",
            "compile_s": compile_s, "step_ms": 1e3 * statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 6, 12, 24])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    rows = [measure(d, u, args.width, args.seq, args.repeats)
            for d in args.depths for u in (False, True)]
    print(f"device: {jax.devices()[0].device_kind}, width {args.width}, seq {args.seq}, batch 8")
    print(f"{'depth':>5} {'encoder':>9} {'compile s':>10} {'step ms':>9}")
    for r in rows:
        print(f"{r['depth']:>5} {r['encoder']:>9} {r['compile_s']:>10.2f} {r['step_ms']:>9.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
