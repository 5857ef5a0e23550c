"""The `eqvlp` command line: `eqvlp demo` runs the embedded default job; `eqvlp render` draws
text the way CLIPPO sees it; `eqvlp finetune` transfers a model to a downstream task."""

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
    from eqvlp.tokenizer import train_tokenizer
    from eqvlp.train.loop import text_mode, text_preparer

    if args.model not in models.PRESETS:
        raise SystemExit(f"eqvlp demo: unknown --model {args.model!r}: use one of "
                         f"{', '.join(sorted(models.PRESETS))}")
    if args.steps < 0:
        raise SystemExit(f"eqvlp demo: --steps must be >= 0, got {args.steps}")
    model = models.create(args.model, key=jax.random.key(args.seed))
    cfg = model.config
    tokenizer = None
    if text_mode(cfg) == "tokens":  # CLIPPO renders its captions instead
        vocab = getattr(getattr(cfg, "text", None), "vocab_size", None) or cfg.vocab_size
        tokenizer = train_tokenizer(DEMO_CAPTIONS, vocab_size=min(300, vocab))
    ids = jnp.asarray(text_preparer(model, cfg, tokenizer)(list(DEMO_CAPTIONS)))
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
    try:
        write_png(args.output, image)
    except OSError as error:
        raise SystemExit(f"eqvlp render: -o {args.output}: {error.strerror}" if error.strerror
                         else f"eqvlp render: {error}") from None
    print(f"wrote {args.output}: {image.shape[0]}x{image.shape[1]} px, "
          f"{len(text)} characters ({font.num_glyphs} glyphs in {', '.join(font.paths)})")


def _start_jax(args: argparse.Namespace):
    """Simulated CPU devices and `jax.distributed` for multi-process runs, before JAX starts."""
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
                f"eqvlp {args.command}: --num-processes > 1 needs --coordinator HOST:PORT and "
                "--process-id I (or EQVLP_COORDINATOR and EQVLP_PROCESS_ID)"
            )
        if jax.config.jax_platforms in (None, "", "cpu") and args.cpu_devices:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        from eqvlp.train import processes

        if args.distributed_timeout is not None:
            processes.set_timeout(args.distributed_timeout)
        try:
            processes.initialize(coordinator, num_processes, process_id)
        except ValueError as error:
            raise SystemExit(f"eqvlp {args.command}: {error}") from None
    elif args.auto_distributed:
        jax.distributed.initialize()  # cluster auto-detection (SLURM, TPU pods, ...)
    return jax


def _mesh_arg(value: str) -> tuple[int, int, int]:
    """`DATA,FSDP,TENSOR` axis sizes, e.g. `2,4,1` or `-1,1,1`."""
    try:
        sizes = tuple(int(v) for v in value.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 3:
        raise argparse.ArgumentTypeError(
            f"--mesh {value!r}: give three axis sizes DATA,FSDP,TENSOR, e.g. 2,4,1 (-1: the rest)")
    return sizes


def train_config_from_args(args: argparse.Namespace):
    """The run's `TrainConfig`: --config, then the flags, then every --set (last wins)."""
    from eqvlp.train.config import load_config, override

    cfg = load_config(args.config)
    sets = []
    if args.workdir:
        sets.append(f"workdir={args.workdir}")
    if args.data:
        sets.append(f"data.data={args.data}")
    if args.eval_data:
        sets.append(f"eval.data={args.eval_data}")
    if args.zeroshot:
        sets.append(f"eval.zeroshot={args.zeroshot}")
    if args.steps is not None:
        sets.append(f"steps={args.steps}")
    if args.mesh:
        sets += [f"mesh.{axis}={size}" for axis, size in zip(("data", "fsdp", "tensor"), args.mesh)]
    return override(cfg, sets + list(args.set or []))


def run_train(args: argparse.Namespace) -> None:
    if args.help_config:
        from eqvlp.train.config import reference_markdown

        print(reference_markdown(), end="")
        return
    try:
        cfg = train_config_from_args(args)
    except (ValueError, FileNotFoundError, TypeError) as error:
        raise SystemExit(f"eqvlp train: {error}") from None
    jax = _start_jax(args)

    from eqvlp.train.loop import train

    log = print if jax.process_index() == 0 else (lambda *a, **k: None)
    model = cfg.model if isinstance(cfg.model, str) else type(cfg.model).__name__
    log(f"eqvlp train: {args.config or 'default'} ({model}) on {cfg.data.data}, "
        f"{cfg.steps} steps of {cfg.batch_size}, {jax.process_count()} process(es), "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s) -> {cfg.workdir}")
    import signal

    # SIGTERM (a scheduler's stop, `kill`) unwinds like Ctrl-C: train() closes its data workers
    # and the last committed checkpoint stays the resume point.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        results = train(cfg, log=log, progress=not args.no_progress,
                        allow_config_change=args.allow_config_change)
    except (ValueError, OSError) as error:  # OSError: unwritable, locked or unshared directories
        raise SystemExit(f"eqvlp train: process {jax.process_index()}: {error}"
                         if jax.process_count() > 1 else f"eqvlp train: {error}") from None
    log(results_table(results))


def results_table(results: dict) -> str:
    """The headline numbers of a run or an evaluation as a small table."""
    keys = ("accuracy", *sorted(k for k in results if k.startswith("accuracy_")),
            "zeroshot_top1", "zeroshot_top5", "i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5",
            "linear_probe", *sorted(k for k in results if k.startswith("fewshot_")),
            "final_loss", "steps", "wall_s", "images_per_s", "skipped_steps", "data_skipped")
    rows = [(k, results[k]) for k in keys if k in results]
    width = max(len(k) for k, _ in rows) if rows else 0
    lines = []
    for key, value in rows:
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"  {key:<{width}}  {shown}")
    return "\n".join(lines)


def _eval_model(args: argparse.Namespace):
    """(model, model config, prepare_text, normalization, run config or None)."""
    import jax

    from eqvlp import models
    from eqvlp.train.loop import context_length, text_preparer

    if args.checkpoint:
        from eqvlp.train.run import load_run

        model, cfg, tokenizer = load_run(args.checkpoint, ema=args.ema)
        return model, model.config, text_preparer(model, model.config, tokenizer), \
            cfg.normalization, cfg
    if args.transformers:
        from pathlib import Path

        import tokenizers

        from eqvlp.convert import from_transformers

        model = from_transformers(args.transformers)
        path = Path(args.transformers) / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: save the model's tokenizer beside it "
                                    "(processor.save_pretrained(directory))")
        tokenizer = tokenizers.Tokenizer.from_file(str(path))
        length = context_length(model.config)
        tokenizer.enable_truncation(length)
        pad = tokenizer.token_to_id("<pad>")
        tokenizer.enable_padding(length=length,
                                 pad_id=pad if pad is not None else tokenizer.token_to_id(
                                     "<|endoftext|>") or 0)
        import numpy as np

        def prepare(texts):
            return np.asarray([e.ids for e in tokenizer.encode_batch(texts)], np.int32)

        return model, model.config, prepare, "clip" if models.loss_kind(model) == "softmax" \
            else "signed", None
    model = models.create(args.preset, key=jax.random.key(0))
    tokenizer = None
    if not args.preset.startswith("clippo"):
        from eqvlp.data import (
            DataConfig,
            Shapes,
            ShapesConfig,
            fit_tokenizer,
            make_source,
        )

        source = make_source(DataConfig(data=args.data)) if args.data != "shapes" else \
            Shapes("train", num_samples=2000, config=ShapesConfig())
        vocab = getattr(getattr(model.config, "text", None), "vocab_size", None) or \
            model.config.vocab_size
        tokenizer = fit_tokenizer(source, vocab_size=min(vocab, 1000))
    norm = "signed" if args.preset.startswith(("clippo", "siglip")) else "clip"
    return model, model.config, text_preparer(model, model.config, tokenizer), norm, None


def check_writable(path: str, flag: str) -> None:
    """A file the command will write at the end, checked before the work: its directory exists
    and is writable, and it is not a directory."""
    import os
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a directory: give a file name, e.g. {path / 'out.json'}")
    parent = path.parent
    if not parent.is_dir():
        raise ValueError(f"{flag} {path}: directory {parent} does not exist (create it first)")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"{flag} {path} is not writable: give a path you can write")


def evaluate_from_args(args: argparse.Namespace) -> dict:
    """`eqvlp eval`: load the model, read the data, run the tasks, write --json."""
    import json

    import numpy as np

    from eqvlp.data import DataConfig, normalization, zeroshot_task
    from eqvlp.eval import embed_images, few_shot, linear_probe, load_zeroshot_file
    from eqvlp.eval.evaluate import evaluate, load_eval_set

    if args.json:
        check_writable(args.json, "--json")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = set(tasks) - {"zeroshot", "retrieval", "probe", "fewshot"}
    if unknown:
        raise ValueError(f"--tasks: unknown {sorted(unknown)}: use zeroshot, retrieval, probe, "
                         "fewshot")
    classnames = templates = None
    label_key = "label"
    if args.zeroshot:
        classnames, templates = load_zeroshot_file(args.zeroshot)
    elif args.data == "shapes":
        task = zeroshot_task(args.zeroshot_task)
        classnames, templates, label_key = list(task.classnames), list(task.templates), \
            task.label_key
    elif "zeroshot" in tasks:
        raise ValueError("zero-shot on shards needs --zeroshot FILE with classnames and "
                         "templates (or drop zeroshot from --tasks)")
    model, model_config, prepare, norm, _ = _eval_model(args)
    mean_std = normalization(args.normalization or norm)
    size = args.image_size or model_config.vision.image_size
    data = DataConfig(data=args.data, split="test", image_size=size, label_key=label_key)
    eval_set = load_eval_set(data, num_samples=args.num_samples)
    results = evaluate(model, eval_set, prepare_text=prepare, normalize=mean_std,
                       classnames=classnames, templates=templates,
                       tasks=[t for t in tasks if t in ("zeroshot", "retrieval")],
                       batch_size=args.batch_size,
                       progress=not args.no_progress)
    if "probe" in tasks or "fewshot" in tasks:
        if args.train_data or args.data == "shapes":
            train_set = load_eval_set(dataclasses.replace(
                data, data=args.train_data or "shapes", split="train"),
                num_samples=args.num_samples)
            test_set = eval_set
        else:  # carve the probe's training images from the shards themselves
            cut = int(0.8 * len(eval_set))
            train_set = dataclasses.replace(eval_set, images=eval_set.images[:cut],
                                            labels=eval_set.labels[:cut])
            test_set = dataclasses.replace(eval_set, images=eval_set.images[cut:],
                                           labels=eval_set.labels[cut:])
        features = [embed_images(model, s.images, normalize=mean_std, normalized=True,
                                 batch_size=args.batch_size) for s in (train_set, test_set)]
        if "probe" in tasks:
            probe = linear_probe(features[0], train_set.labels, features[1], test_set.labels)
            results["linear_probe"] = float(probe["accuracy"])
            results["linear_probe_l2"] = float(probe["l2"])
        if "fewshot" in tasks:
            shots = few_shot(features[0], train_set.labels, features[1], test_set.labels,
                             shots=args.shots, seeds=tuple(range(args.seeds)))
            for k, stats in shots.items():
                results[f"fewshot_{k}_mean"] = float(stats["mean"])
                results[f"fewshot_{k}_std"] = float(stats["std"])
    results = {k: v for k, v in results.items() if not isinstance(v, np.ndarray)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


def run_eval(args: argparse.Namespace) -> None:
    try:
        jax = _start_jax(args)
        results = evaluate_from_args(args)
    except (ValueError, FileNotFoundError, TypeError) as error:
        raise SystemExit(f"eqvlp eval: {error}") from None
    if jax.process_index() == 0:
        print(results_table(results))


def run_finetune(args: argparse.Namespace) -> None:
    from eqvlp.finetune import FinetuneConfig
    from eqvlp.train.config import dotted_fields, override

    if args.help_config:
        for key, value in dotted_fields(FinetuneConfig()).items():
            if not hasattr(value, "__dataclass_fields__"):
                print(f"{key} = {value!r}")
        return
    if not args.task:
        from eqvlp.finetune import TASKS

        raise SystemExit(f"eqvlp finetune: --task is required: one of {', '.join(TASKS)}")
    sets = [f"task={args.task}"] + [f"{key}={getattr(args, key)}" for key in
                                    ("init", "workdir", "steps") if getattr(args, key)]
    try:
        cfg = override(FinetuneConfig(), sets + list(args.set or []))
        from eqvlp.finetune import finetune

        mode = "image tower locked" if cfg.task == "lit" else cfg.mode
        print(f"eqvlp finetune: {cfg.task} ({mode}) from {cfg.init or 'scratch'}, "
              f"{cfg.steps} steps of {cfg.batch_size} -> {cfg.run_dir}")
        results = finetune(cfg, progress=not args.no_progress)
    except (ValueError, FileNotFoundError, TypeError) as error:
        raise SystemExit(f"eqvlp finetune: {error}") from None
    print(results_table(results))


def _distributed_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "multi-process", "one process per host with the same --coordinator (process 0's "
        "HOST:PORT) and --num-processes, each its own --process-id; or EQVLP_COORDINATOR, "
        "EQVLP_NUM_PROCESSES, EQVLP_PROCESS_ID; --auto-distributed lets JAX detect SLURM/TPU")
    group.add_argument("--num-processes", dest="num_processes", type=int)
    group.add_argument("--process-id", dest="process_id", type=int)
    group.add_argument("--coordinator", help="HOST:PORT of process 0")
    group.add_argument("--auto-distributed", action="store_true")
    group.add_argument("--cpu-devices", dest="cpu_devices", type=int,
                       help="simulate this many CPU devices per process (testing)")
    group.add_argument("--distributed-timeout", dest="distributed_timeout", type=float,
                       metavar="SECONDS", help="how long a process waits for its peers at "
                       "start-up and at checkpoint barriers before it stops with an error "
                       "(default: $EQVLP_DISTRIBUTED_TIMEOUT or 600)")


def _train_epilog() -> str:
    from eqvlp.train.config import CONFIGS

    lines = ["named configs (--config NAME):"]
    for name, make in CONFIGS.items():
        lines.append(f"  {name:<14} {(make.__doc__ or '').strip().splitlines()[0]}")
    lines += ["", "every key for --set: eqvlp train --help-config (or docs/config.md)",
              "examples:", "  eqvlp train                                  # the embedded default",
              "  eqvlp train --config clippo-tiny --workdir runs/clippo",
              "  eqvlp train --data 'shards/{00000..00009}.tar' --eval-data 'val/*.tar' \\",
              "      --zeroshot classes.json --set optim.lr=3e-4 --steps 5000"]
    return "\n".join(lines)


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
        "train", help="pre-train a model on the embedded shapes dataset or your shards",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Pre-train a contrastive model, evaluate it (zero-shot, retrieval) and "
        "write DIR/results.json, metrics.jsonl, curves.png and checkpoints (a rerun resumes).",
        epilog=_train_epilog(),
    )
    train.add_argument("--config", help="named config or a .py file defining config() "
                       "(default: default)")
    train.add_argument("--workdir", help="run directory (default: the config's workdir)")
    train.add_argument("--data", help="'shapes' or shard pattern(s), e.g. 'shards/{00000..00099}.tar'")
    train.add_argument("--eval-data", dest="eval_data", help="'shapes' or shard pattern(s)")
    train.add_argument("--zeroshot", help="JSON file {\"classnames\": [...], \"templates\": [...]}")
    train.add_argument("--steps", type=int)
    train.add_argument("--mesh", type=_mesh_arg, help="DATA,FSDP,TENSOR axis sizes, e.g. 2,4,1")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override any config key, e.g. --set optim.lr=3e-4 (repeatable)")
    train.add_argument("--help-config", dest="help_config", action="store_true",
                       help="print every config key with its type and default, then exit")
    train.add_argument("--no-progress", dest="no_progress", action="store_true",
                       help="no progress bar (logs still go to metrics.jsonl)")
    train.add_argument("--allow-config-change", dest="allow_config_change",
                       action="store_true", help="resume a checkpoint although it was written "
                       "under another config (seed, model, loss, optimiser, data)")
    _distributed_flags(train)
    train.set_defaults(run=run_train)

    evaluate = commands.add_parser(
        "eval", help="zero-shot, retrieval and linear-probe evaluation of a model",
        description="Evaluate a trained run (--checkpoint DIR), a preset with random weights "
        "(--preset NAME) or a transformers CLIPModel/SiglipModel directory (--transformers DIR) "
        "on the embedded dataset or shards.",
    )
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="an eqvlp train run directory")
    source.add_argument("--preset", help="a model preset, random weights")
    source.add_argument("--transformers", help="a save_pretrained directory with tokenizer.json")
    evaluate.add_argument("--data", default="shapes", help="'shapes' (test split) or shard pattern(s)")
    evaluate.add_argument("--train-data", dest="train_data",
                          help="training images for the linear probe (default: shapes train split "
                          "or the --data shards' first 80%%)")
    evaluate.add_argument("--zeroshot", help="class names + templates JSON (default for shapes: "
                          "the built-in shape_colour task)")
    evaluate.add_argument("--zeroshot-task", dest="zeroshot_task", default="shape_colour",
                          choices=("shape", "colour", "shape_colour"))
    evaluate.add_argument("--tasks", default="zeroshot,retrieval",
                          help="comma-separated: zeroshot, retrieval, probe, fewshot")
    evaluate.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10],
                          help="k of the few-shot probes (default: 1 5 10)")
    evaluate.add_argument("--seeds", type=int, default=3, help="few-shot seeds (default: 3)")
    evaluate.add_argument("--num-samples", dest="num_samples", type=int, default=1000)
    evaluate.add_argument("--batch-size", dest="batch_size", type=int, default=256)
    evaluate.add_argument("--image-size", dest="image_size", type=int,
                          help="evaluation image size (default: the model's)")
    evaluate.add_argument("--normalization", choices=("clip", "signed"),
                          help="uint8 -> float (default: the run's, else clip; CLIPPO signed)")
    evaluate.add_argument("--ema", action="store_true", help="evaluate the EMA weights of a run")
    evaluate.add_argument("--json", help="write the results here")
    evaluate.add_argument("--no-progress", dest="no_progress", action="store_true")
    _distributed_flags(evaluate)
    evaluate.set_defaults(run=run_eval)
    tune = commands.add_parser(
        "finetune", help="fine-tune a model on a downstream task (VQA, sentence pairs, "
        "classification, LiT) and report held-out accuracy",
        description="Fine-tune an eqvlp train run (--init DIR) or a new model on a task and "
        "write DIR/results.json (accuracy), metrics.jsonl, curves.png and checkpoints (a rerun "
        "resumes). Tasks: shapes-vqa, shapes-pairs, shapes-classify, shards, lit; see "
        "docs/finetune.md.",
    )
    tune.add_argument("--task", help="shapes-vqa, shapes-pairs, shapes-classify, shards or lit")
    tune.add_argument("--init", help="an eqvlp train run directory (default: a new model)")
    tune.add_argument("--workdir", help="run directory (default: runs/finetune-TASK)")
    tune.add_argument("--steps", type=int)
    tune.add_argument("--set", action="append", metavar="KEY=VALUE",
                      help="override any config key, e.g. --set mode=linear (repeatable)")
    tune.add_argument("--help-config", dest="help_config", action="store_true",
                      help="print every config key and its default, then exit")
    tune.add_argument("--no-progress", dest="no_progress", action="store_true")
    tune.set_defaults(run=run_finetune)
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
