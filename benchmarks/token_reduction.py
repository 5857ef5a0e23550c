"""Image-tower forward+backward time with CLIPA token reduction, against the full 224 px input.

For a ViT-B/16 image tower: 224 px unmasked, lower resolutions, random masks, a 2x2 grid mask
and a 25% block mask. The speed-up of each setting is compared with its token-count ratio
(target: speed-up >= 80% of the ratio). Not part of the test suite.

    python -m benchmarks.token_reduction --json token_reduction.json
"""

import argparse
import json
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp

from eqvlp import masking, models

SETTINGS = [
    ("224px", 224, None),
    ("112px", 112, None),
    ("64px", 64, None),
    ("random 50%", 224, masking.ImageMask("random", keep_ratio=0.5)),
    ("random 75%", 224, masking.ImageMask("random", keep_ratio=0.25)),
    ("grid 2x2", 224, masking.ImageMask("grid", window=2)),
    ("block 25%", 224, masking.ImageMask("block", keep_ratio=0.25)),
]


def time_setting(vit_cfg, image_size, mask, batch, repeats):
    cfg = models.ViTConfig.b16(**(vit_cfg | {"image_size": image_size}))
    vit = models.ViT(cfg, key=jax.random.key(0))
    images = jax.random.normal(jax.random.key(1), (batch, image_size, image_size, 3))

    def loss(vit, images, key):
        if mask is None:
            out = jax.vmap(vit)(images)
        else:
            def one(image, k):
                tokens = mask(vit.embed(image), k, grid=cfg.grid, num_prefix=cfg.num_prefix)
                return vit.encode_tokens(tokens)
            out = jax.vmap(one)(images, jax.random.split(key, batch))
        return jnp.sum(out**2)

    step = eqx.filter_jit(eqx.filter_grad(loss))
    key = jax.random.key(2)
    jax.block_until_ready(step(vit, images, key))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(vit, images, key))
        times.append(time.perf_counter() - start)
    tokens = cfg.num_prefix + (mask.num_kept(cfg.grid) if mask else cfg.grid[0] * cfg.grid[1])
    return tokens, 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--depth", type=int, default=12, help="encoder depth (12 = ViT-B)")
    parser.add_argument("--json", help="write {'results': [...]} to this file")
    args = parser.parse_args()
    vit_cfg = {"depth": args.depth}
    results = []
    for setting, size, mask in SETTINGS:
        tokens, ms = time_setting(vit_cfg, size, mask, args.batch, args.repeats)
        results.append({"setting": setting, "tokens": tokens, "ms_per_step": ms})
        print(f"  measured {setting}: {tokens} tokens, {ms:.1f} ms", flush=True)
    base = results[0]
    print(f"\nViT-B/16 image tower (depth {args.depth}), batch {args.batch}, forward+backward, "
          f"{jax.devices()[0].device_kind}")
    print(f"{'setting':>12} {'tokens':>7} {'ms/step':>9} {'speed-up':>9} {'token ratio':>12} "
          f"{'% of ratio':>11}")
    for r in results:
        speedup = base["ms_per_step"] / r["ms_per_step"]
        ratio = base["tokens"] / r["tokens"]
        r["speedup"], r["token_ratio"] = speedup, ratio
        print(f"{r['setting']:>12} {r['tokens']:>7} {r['ms_per_step']:>9.1f} {speedup:>9.2f} "
              f"{ratio:>12.2f} {100 * speedup / ratio:>10.0f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "batch": args.batch, "depth": args.depth,
                       "device": jax.devices()[0].device_kind}, f, indent=2)


if __name__ == "__main__":
    main()
