"""Microbenchmarks of the sigmoid-loss variants: time, peak memory and FLOP rate of forward+backward.

    python -m benchmarks.losses --help
    python -m benchmarks.losses                       # B in 1024 4096 16384, D=512, 1 and 8 devices
    python -m benchmarks.losses --batch-sizes 1024 --repeats 2 --json /tmp/quick.json

Each variant is `jit(value_and_grad(loss, argnums=(0, 1, 2, 3)))`; the time is the median of
`--repeats` runs after compilation and one warm-up run. The FLOP count is the nominal 6 * B^2 * D
of forward plus backward (three B x B x D matmuls); "% matmul" compares the achieved rate with the
best float32 matmul rate measured on this machine in the same run (the table says which shape).

Peak memory: on CPU there is no allocator high-water mark, so this reports what XLA's compiled
memory analysis (`jax.jit(f).lower(...).compile().memory_analysis()`) gives for the program's
temporaries plus outputs (arguments excluded). For the 8-device variants the program is the
per-device SPMD program, so the number is per simulated device.

The 8 simulated devices (`--xla_force_host_platform_device_count`) share this machine's cores:
their times measure the algorithm's overhead (communication, smaller blocks), not a speed-up.

The measuring is `eqvlp.benchmarking` (`compare_losses`, `matmul_peak`); this script keeps the
command line, printout and JSON of the figures in benchmarks/RESULTS.md. To put your own loss in
the same table: `python -m eqvlp.benchmarking losses --loss pkg.module:fn`.
"""

import argparse
import json
import os
import platform
import sys

VARIANTS = ("reference", "chunked", "ring", "bidir")


def _parse(argv):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.losses",
        description="Time forward+backward and peak memory of eqvlp's sigmoid-loss variants.",
    )
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 4096, 16384], help="global batch sizes B")
    p.add_argument("--dim", type=int, default=512, help="embedding dim D (default 512)")
    p.add_argument("--devices", type=int, default=8, help="simulated devices for ring/bidir (default 8)")
    p.add_argument("--chunk-size", type=int, default=512, help="chunked_sigmoid_loss chunk_size (default 512)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per variant; the median is reported")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--json", default="benchmarks/losses.json", help="where to write the results")
    return p.parse_args(argv)


def main(argv=None):
    args = _parse(argv)
    # Must precede the first use of a JAX backend.
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.devices}"
    ).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import jax

    from eqvlp.benchmarking import compare_losses, matmul_peak

    # -- the machine's float32 matmul rate ---------------------------------------------------------
    shapes = [(2048, 2048, 2048), (args.chunk_size, args.dim, 4096), (4096, args.dim, 4096)]
    peak = matmul_peak(shapes, repeats=args.repeats)
    matmul = [{"shape": m.params["shape"], "gflops": m.flops_per_second / 1e9} for m in peak.measurements]
    best = {"shape": peak.best.params["shape"], "gflops": peak.flops_per_second / 1e9}
    print("float32 matmul rate:")
    for r in matmul:
        print(f"  {r['shape']:>26}: {r['gflops']:7.1f} GFLOP/s")
    print(f"  best (the 100% below): {best['gflops']:.1f} GFLOP/s at {best['shape']}\n")

    rows = []

    def record(m):
        rows.append(
            {
                "variant": m.name,
                "devices": m.devices,
                "batch": m.params["batch"],
                "dim": args.dim,
                "chunk_size": args.chunk_size if m.name == "chunked" else None,
                "seconds": m.seconds,
                "compile_seconds": m.compile_seconds,
                "peak_bytes": m.peak_bytes,
                "gflops": m.flops_per_second / 1e9,
                "pct_matmul": 100 * m.fraction_of(peak.flops_per_second),
                "loss": m.value,
            }
        )
        _print_row(rows[-1], header=len(rows) == 1)

    compare_losses(
        None, batch_sizes=args.batch_sizes, dim=args.dim, variants=args.variants,
        reference="reference" if "reference" in args.variants else None, chunk_size=args.chunk_size,
        devices=args.devices, pallas=False, repeats=args.repeats, peak=peak, progress=record,
    )

    _print_ratios(rows)
    result = {
        "command": "python -m benchmarks.losses " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "jax": jax.__version__},
        "matmul": matmul,
        "matmul_best_gflops": best["gflops"],
        "peak_memory_method": "compiled.memory_analysis(): temp + output bytes (per device for sharded)",
        "results": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nwrote {args.json}")


def _print_row(r, header):
    if header:
        print(f"{'variant':>9} {'dev':>3} {'B':>6} {'time (s)':>9} {'peak MiB':>9} {'GFLOP/s':>8} {'% matmul':>8}")
    peak = "n/a" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.1f}"
    print(
        f"{r['variant']:>9} {r['devices']:>3} {r['batch']:>6} {r['seconds']:>9.3f} {peak:>9} "
        f"{r['gflops']:>8.1f} {r['pct_matmul']:>7.1f}%",
        flush=True,
    )


def _print_ratios(rows):
    by = {(r["variant"], r["batch"]): r for r in rows}
    lines = []
    for (variant, batch), r in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        ref = by.get(("reference", batch))
        if variant == "reference" or ref is None:
            continue
        mem = (
            "n/a"
            if not (r["peak_bytes"] and ref["peak_bytes"])
            else f"{r['peak_bytes'] / ref['peak_bytes']:.3f}x"
        )
        lines.append(f"  B={batch:>6} {variant:>8}: time {r['seconds'] / ref['seconds']:.2f}x, peak memory {mem}")
    if lines:
        print("\nrelative to the full-matrix reference (memory of sharded variants is per device):")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
