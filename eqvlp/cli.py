"""The `eqvlp` command line: `eqvlp demo` runs the embedded default job; `eqvlp render` draws
text the way CLIPPO sees it."""

import argparse
import dataclasses
import sys
import time

import numpy as np

DEMO_CAPTIONS = (
    "a red square",
    "a green square",
    "a blue square",
    "a white square",
    "a black square",
    "a yellow square",
)
_DEMO_COLOURS = {
    "red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1),
    "white": (1, 1, 1), "black": (0, 0, 0), "yellow": (1, 1, 0),
}


def demo_images(captions, size: int, seed: int = 0) -> np.ndarray:
    """One noisy image per caption: a coloured square on a grey background, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    images = np.full((len(captions), size, size, 3), 0.5, np.float32)
    for i, caption in enumerate(captions):
        colour = _DEMO_COLOURS[caption.split()[1]]
        lo, hi = size // 4, 3 * size // 4
        images[i, lo:hi, lo:hi] = colour
    images += rng.normal(0, 0.05, images.shape).astype(np.float32)
    return images * 2 - 1


def run_demo(args: argparse.Namespace) -> None:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    from eqvlp import models
    from eqvlp.tokenizer import tokenize, train_tokenizer

    model = models.create(args.model, key=jax.random.key(args.seed))
    cfg = model.config
    tokenizer = train_tokenizer(DEMO_CAPTIONS, vocab_size=min(300, cfg.text.vocab_size))
    ids = jnp.asarray(tokenize(tokenizer, DEMO_CAPTIONS, context_length=cfg.text.context_length))
    images = jnp.asarray(demo_images(DEMO_CAPTIONS, cfg.vision.image_shape[0], args.seed))
    print(f"eqvlp demo: {args.model} on {len(DEMO_CAPTIONS)} generated image/caption pairs "
          f"({jax.devices()[0].platform})")

    def loss_fn(model):
        logits = model.logits(images, ids)
        targets = jnp.arange(len(logits))
        return 0.5 * (optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
                      + optax.softmax_cross_entropy_with_integer_labels(logits.T, targets).mean())

    optimizer = optax.adamw(1e-3)
    state = optimizer.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, state):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        # optax mixes Python floats with its int32 step count: allow standard promotion
        # even when the caller runs under strict promotion.
        with jax.numpy_dtype_promotion("standard"):
            updates, state = optimizer.update(grads, state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), state, loss

    start = time.perf_counter()
    for i in range(args.steps):
        model, state, loss = step(model, state)
        if i == 0 or (i + 1) % max(1, args.steps // 4) == 0:
            print(f"  step {i + 1:4d}  contrastive loss {float(loss):.4f}")
    if args.steps:
        print(f"  {args.steps} steps in {time.perf_counter() - start:.1f}s")

    probs = jax.nn.softmax(eqx.filter_jit(lambda m: m.logits(images, ids))(model), axis=1)
    width = max(len(c) for c in DEMO_CAPTIONS)
    print("\nimage -> caption probabilities (rows: images, columns: captions)")
    print(" " * (width + 2) + " ".join(f"{j:>6d}" for j in range(len(DEMO_CAPTIONS))))
    for i, caption in enumerate(DEMO_CAPTIONS):
        row = " ".join(f"{float(p):6.3f}" for p in probs[i])
        print(f"{caption:>{width}}  {row}")
    correct = int(jnp.sum(jnp.argmax(probs, axis=1) == jnp.arange(len(DEMO_CAPTIONS))))
    print(f"\nimages matched to their own caption: {correct}/{len(DEMO_CAPTIONS)}")


def image_size_arg(value: str) -> int | tuple[int, int]:
    """`224` or `HEIGHTxWIDTH` (e.g. `64x256`)."""
    try:
        if "x" in value:
            height, width = value.split("x")
            return int(height), int(width)
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"image size {value!r} is not N or HEIGHTxWIDTH, e.g. 224 or 64x256"
        ) from None


def run_render(args: argparse.Namespace) -> None:
    from eqvlp.render import load_unifont, render_text, write_png

    text = sys.stdin.read() if args.text == "-" else args.text
    try:
        font = load_unifont(args.font, args.font_upper)
        image = render_text(
            text, image_size=args.image_size, font_size=args.font_size,
            max_chars=args.max_chars, background_brightness=args.background,
            text_brightness=args.ink, lower=not args.keep_case, monospace=args.monospace,
            spacing=args.spacing, min_width=args.min_width, wrap=args.wrap, font=font,
        )
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"eqvlp render: {error}") from None
    write_png(args.output, image)
    print(f"wrote {args.output}: {image.shape[0]}x{image.shape[1]} px, "
          f"{len(text)} characters ({font.num_glyphs} glyphs in {', '.join(font.paths)})")


def run_train(args: argparse.Namespace) -> None:
    import os

    if args.cpu_devices:
        # must happen before JAX initialises its backends
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.cpu_devices}")
    import jax

    num_processes = args.num_processes or int(os.environ.get("EQVLP_NUM_PROCESSES", "1"))
    if num_processes > 1:
        coordinator = args.coordinator or os.environ.get("EQVLP_COORDINATOR")
        process_id = args.process_id
        if process_id is None and "EQVLP_PROCESS_ID" in os.environ:
            process_id = int(os.environ["EQVLP_PROCESS_ID"])
        if coordinator is None or process_id is None:
            raise SystemExit(
                "eqvlp train: --num-processes > 1 needs --coordinator HOST:PORT and "
                "--process-id I (or EQVLP_COORDINATOR and EQVLP_PROCESS_ID)"
            )
        if jax.config.jax_platforms in (None, "", "cpu") and args.cpu_devices:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator, num_processes, process_id)
    elif args.auto_distributed:
        jax.distributed.initialize()  # cluster auto-detection (SLURM, TPU pods, ...)

    from eqvlp.train.loop import TrainConfig, train, write_summary

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields and v is not None})
    log = print if jax.process_index() == 0 else (lambda *a, **k: None)
    log(f"eqvlp train: {cfg.model}, rules {cfg.rules}, {jax.process_count()} process(es), "
        f"{jax.device_count()} devices")
    summary = train(cfg, log=log)
    log(f"final loss {summary['final_loss']:.4f} after {summary['steps']} steps "
        f"({summary['seconds']:.1f}s)")
    if args.json:
        write_summary(args.json, summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eqvlp", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="train a tiny CLIP on generated image/caption pairs and print similarities"
    )
    demo.add_argument("--model", default="clip-tiny", help="preset name (default: clip-tiny)")
    demo.add_argument("--steps", type=int, default=60, help="training steps (default: 60)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=run_demo)

    train = commands.add_parser(
        "train", help="sharded, checkpointed training on generated pairs (multi-process ready)",
        description="Train a preset with a sharding rule table on a (data, fsdp, tensor) mesh. "
        "Multi-host: start one process per host with the same --coordinator (process 0's "
        "HOST:PORT), --num-processes and its own --process-id, or set EQVLP_COORDINATOR, "
        "EQVLP_NUM_PROCESSES, EQVLP_PROCESS_ID; --auto-distributed lets JAX detect SLURM/TPU.",
    )
    train.add_argument("--model", help="preset (default clip-tiny)")
    train.add_argument("--steps", type=int)
    train.add_argument("--batch-size", dest="batch_size", type=int)
    train.add_argument("--learning-rate", dest="learning_rate", type=float)
    train.add_argument("--rules", choices=["dp", "fsdp", "fsdp_tp"])
    train.add_argument("--data", type=int, help="data axis size (-1: the rest)")
    train.add_argument("--fsdp", type=int)
    train.add_argument("--tensor", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--checkpoint-dir", dest="checkpoint_dir")
    train.add_argument("--checkpoint-every", dest="checkpoint_every", type=int)
    train.add_argument("--log-every", dest="log_every", type=int)
    train.add_argument("--num-processes", dest="num_processes", type=int)
    train.add_argument("--process-id", dest="process_id", type=int)
    train.add_argument("--coordinator", help="HOST:PORT of process 0")
    train.add_argument("--auto-distributed", action="store_true")
    train.add_argument("--cpu-devices", dest="cpu_devices", type=int,
                       help="simulate this many CPU devices per process (testing)")
    train.add_argument("--json", help="write a run summary (losses, checksum) here")
    train.set_defaults(run=run_train)
    render = commands.add_parser(
        "render", help="render text to a PNG the way CLIPPO sees it (GNU Unifont)"
    )
    render.add_argument("text", help="the text to draw ('-' reads standard input)")
    render.add_argument("-o", "--output", default="render.png",
                        help="PNG file (default: render.png)")
    render.add_argument("--image-size", type=image_size_arg, default=224,
                        help="N or HEIGHTxWIDTH pixels (default: 224)")
    render.add_argument("--font-size", type=int, default=16, help="glyph cell size (default: 16)")
    render.add_argument("--max-chars", type=int, default=768, help="characters kept (default: 768)")
    render.add_argument("--background", type=int, default=127,
                        help="background grey (default: 127)")
    render.add_argument("--ink", type=int, default=0, help="text grey (default: 0)")
    render.add_argument("--keep-case", action="store_true", help="do not lower-case A-Z")
    render.add_argument("--monospace", action="store_true", help="full 16-px cells, no trimming")
    render.add_argument("--spacing", type=int, default=1, help="trimming spacing (default: 1)")
    render.add_argument("--min-width", type=int, default=4, help="narrowest glyph (default: 4)")
    render.add_argument("--wrap", choices=("char", "word"), default="char",
                        help="line breaks: anywhere (big_vision) or at spaces (default: char)")
    render.add_argument("--font", default=None,
                        help="Unifont .hex file (default: $EQVLP_UNIFONT or "
                             "/usr/share/unifont/unifont.hex)")
    render.add_argument("--font-upper", default=None,
                        help="upper-plane Unifont .hex file "
                             "(default: $EQVLP_UNIFONT_UPPER or none)")
    render.set_defaults(run=run_render)
    args = parser.parse_args(argv)
    args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
