"""`python -m eqvlp.benchmarking`: benchmark your loss or attention against eqvlp's, from the shell.

    python -m eqvlp.benchmarking losses --loss mypkg.losses:my_loss --batch-sizes 1024 4096 --dim 512
    python -m eqvlp.benchmarking attention --attention mypkg.attn:my_attention --seqs 256 1024

Functions are named `MODULE:FUNCTION` and imported as Python would (the current directory and
PYTHONPATH are searched). The report (Markdown) goes to stdout, progress to stderr; `--json` also
writes every figure. A function that cannot be found or called as expected is one line on stderr
and exit status 2, before anything is compiled.
"""

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable

__all__ = ["load_function", "main"]

PROG = "python -m eqvlp.benchmarking"


def load_function(spec: str, option: str) -> Callable:
    """Imports `MODULE:FUNCTION` (FUNCTION may be dotted, e.g. `mod:Class.method`).

    Raises `BenchmarkError` naming the option, what was not found, and the fix.
    """
    from eqvlp.benchmarking.measure import BenchmarkError

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise BenchmarkError(f"{option} {spec!r}: expected MODULE:FUNCTION, e.g. mypkg.losses:my_loss")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and (module_name == error.name or module_name.startswith(error.name + ".")):
            raise BenchmarkError(f"{option} {spec}: no module named {error.name!r}: run from the directory "
                                 "that holds it or add that directory to PYTHONPATH") from None
        raise BenchmarkError(f"{option} {spec}: importing {module_name} failed: {error}") from None
    except Exception as error:  # noqa: BLE001 - whatever the user's module raises becomes one line
        first = str(error).splitlines()[0] if str(error) else ""
        raise BenchmarkError(f"{option} {spec}: importing {module_name} raised {type(error).__name__}: "
                             f"{first}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise BenchmarkError(f"{option} {spec}: module {module_name} has no attribute {attr!r}: "
                                 "check the name after the colon")
        obj = getattr(obj, part)
    if not callable(obj):
        raise BenchmarkError(f"{option} {spec}: {module_name}.{attr} is not callable (a {type(obj).__name__} "
                             "value): name a function")
    return obj


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Benchmark your loss or attention against eqvlp's.")
    sub = parser.add_subparsers(dest="command", required=True)

    losses = sub.add_parser("losses", help="your sigmoid-style loss vs eqvlp's sigmoid variants",
                            description="Time forward+backward and compiled peak memory of your loss(es) "
                                        "and eqvlp's sigmoid-loss variants, on the same inputs.")
    losses.add_argument("--loss", action="append", default=[], metavar="MODULE:FUNCTION",
                        help="your loss(zimg, ztxt, scale, bias) -> scalar; repeat for several")
    losses.add_argument("--reference", default="eqvlp", metavar="eqvlp|MODULE:FUNCTION",
                        help="what rows are compared with: eqvlp's sigmoid_loss (default) or a function of yours")
    losses.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 4096], help="global batch sizes B")
    losses.add_argument("--dim", type=int, default=512, help="embedding dim D (default 512)")
    losses.add_argument("--variants", nargs="+", choices=["reference", "chunked", "ring", "bidir", "fused"],
                        help="eqvlp's variants (default: all; fused on GPU only unless --pallas)")
    losses.add_argument("--chunk-size", type=int, default=512, help="chunk_size of the chunked variant")
    losses.add_argument("--devices", type=int, help="devices of ring/bidir (default: all; on CPU 8 simulated)")
    losses.add_argument("--pallas", action="store_true",
                        help="include the fused Pallas loss on CPU too (interpreted: not a speed result)")
    losses.add_argument("--repeats", type=int, default=3, help="timed runs per row; the median is reported")
    losses.add_argument("--matmul-size", type=int, metavar="N",
                        help="the N^3 float32 matmul that is 100%% (default 2048 on CPU, 8192 elsewhere)")
    losses.add_argument("--json", help="also write every figure here")

    attention = sub.add_parser("attention", help="your attention vs eqvlp's implementations",
                               description="Time forward+backward and compiled peak memory of your attention "
                                           "function(s) and eqvlp's implementations over sequence lengths.")
    attention.add_argument("--attention", action="append", default=[], metavar="MODULE:FUNCTION",
                           help="your attn(q, k, v) on (batch, seq, heads, head_dim); repeat for several")
    attention.add_argument("--reference", default="eqvlp", metavar="eqvlp|MODULE:FUNCTION",
                           help="what rows are compared with: eqvlp's xla reference (default) or yours")
    attention.add_argument("--seqs", type=int, nargs="+", default=[256, 1024], help="sequence lengths")
    attention.add_argument("--batch", type=int, default=1)
    attention.add_argument("--heads", type=int, default=4)
    attention.add_argument("--head-dim", type=int, default=64)
    attention.add_argument("--causal", action="store_true", help="causal attention (calls yours with causal=True)")
    attention.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                           help="default bfloat16 on GPU, float32 elsewhere")
    attention.add_argument("--variants", nargs="+", choices=["xla", "cudnn", "pallas"],
                           help="eqvlp's implementations (default: those native here)")
    attention.add_argument("--pallas", action="store_true",
                           help="include the Pallas flash kernel on CPU too (interpreted: not a speed result)")
    attention.add_argument("--repeats", type=int, default=3)
    attention.add_argument("--matmul-size", type=int, metavar="N",
                           help="the N^3 matmul in --dtype that is 100%% (default 2048 on CPU, 8192 elsewhere)")
    attention.add_argument("--json", help="also write every figure here")
    return parser


def _simulate_cpu_devices(count: int | None) -> None:
    """Asks XLA for `count` (default 8) CPU devices; effective if JAX has not started its backends."""
    flags = os.environ.get("XLA_FLAGS", "")
    if count is None and "xla_force_host_platform_device_count" in flags:
        return
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count or 8}".strip()


def _progress(row) -> None:
    size = row.params.get("batch", row.params.get("seq"))
    if hasattr(row, "error"):
        print(f"  {row.name} at {size}: unavailable: {row.error}", file=sys.stderr, flush=True)
    else:
        print(f"  {row.name} at {size}: {1e3 * row.seconds:.3f} ms", file=sys.stderr, flush=True)


def _functions(specs: list[str], option: str) -> dict[str, Callable]:
    return {spec: load_function(spec, option) for spec in specs}


def _run(args):
    from eqvlp import benchmarking

    n = args.matmul_size
    shapes = None if n is None else [(n, n, n)]
    if args.command == "losses":
        losses = _functions(args.loss, "--loss")
        reference = "reference"
        if args.reference != "eqvlp":
            losses.update(_functions([args.reference], "--reference"))
            reference = args.reference
        return benchmarking.compare_losses(
            losses, batch_sizes=args.batch_sizes, dim=args.dim, variants=args.variants, reference=reference,
            chunk_size=args.chunk_size, devices=args.devices, pallas=args.pallas or None, repeats=args.repeats,
            matmul_shapes=shapes, progress=_progress,
        )
    functions = _functions(args.attention, "--attention")
    reference = "xla"
    if args.reference != "eqvlp":
        functions.update(_functions([args.reference], "--reference"))
        reference = args.reference
    return benchmarking.compare_attention(
        functions, seqs=args.seqs, batch=args.batch, heads=args.heads, head_dim=args.head_dim, causal=args.causal,
        dtype=args.dtype, variants=args.variants, reference=reference, pallas=args.pallas or None,
        repeats=args.repeats, matmul_shapes=shapes, progress=_progress,
    )


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status (2 for a function or setting that cannot work)."""
    args = _parser().parse_args(argv)
    if args.command == "losses":
        _simulate_cpu_devices(args.devices)
    from eqvlp.benchmarking.measure import BenchmarkError

    try:
        result = _run(args)
    except BenchmarkError as error:
        print(f"{PROG} {args.command}: error: " + " ".join(str(error).split()), file=sys.stderr)
        return 2
    print(result.to_markdown())
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": f"{PROG} " + " ".join(sys.argv[1:] if argv is None else argv), **result.to_json()},
                      f, indent=2)
        print(f"\nwrote {args.json}")
    return 0
