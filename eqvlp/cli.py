"""The `eqvlp` command line: `eqvlp demo` runs the embedded default job."""

import argparse
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
    args = parser.parse_args(argv)
    args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
