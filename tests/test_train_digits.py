"""A small real dataset through the whole job: scikit-learn's handwritten digits written as
shards (PNG + varied captions + KEY.cls), trained with `eqvlp train`, zero-shot on held-out
shards. 300 steps take under a minute on 2 cores."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from eqvlp.data import write_shards

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
CAPTIONS = ["a handwritten {}", "the digit {}", "a scan of the number {}", "{} written by hand",
            "a blurry handwritten digit: {}", "the number {} in black ink", "an image of a {}"]


def digits_shards(directory):
    """80% of the digits as training shards, 20% held out, and a zero-shot class file."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(digits.target))
    cut = int(0.8 * len(order))

    def samples(indices):
        for i in indices:
            pixels = (255 - digits.data[i].reshape(8, 8) * 255 / 16).astype(np.uint8)
            image = np.asarray(Image.fromarray(pixels).resize((32, 32), Image.Resampling.BICUBIC))
            label = int(digits.target[i])
            caption = CAPTIONS[rng.integers(len(CAPTIONS))].format(NAMES[label])
            yield {"image": np.repeat(image[..., None], 3, -1), "text": caption, "label": label}

    write_shards(samples(order[:cut]), directory / "train", samples_per_shard=500,
                 image_format="png")
    write_shards(samples(order[cut:]), directory / "heldout", samples_per_shard=500,
                 image_format="png")
    classes = directory / "classes.json"
    classes.write_text(json.dumps({"classnames": NAMES, "templates": [
        "a handwritten {}", "the digit {}", "the number {}"]}))
    return directory / "train" / "*.tar", directory / "heldout" / "*.tar", classes


def test_digits_shards_zero_shot_on_held_out_shards(tmp_path):
    train, heldout, classes = digits_shards(tmp_path)
    sets = ["model=clip-tiny", "batch_size=64", "optim.lr=2e-3", "optim.warmup_steps=30",
        "data.workers=0",
            "eval.num_samples=None", "vocab_size=300"]
    cmd = [sys.executable, "-m", "eqvlp", "train", "--workdir", str(tmp_path / "run"),
           "--data", str(train), "--eval-data", str(heldout), "--zeroshot", str(classes),
           "--steps", "300", "--no-progress", *[a for s in sets for a in ("--set", s)]]
    env = os.environ | {"JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["num_images"] == 360  # every held-out digit, no sample skipped
    assert results["data_skipped"] == {}
    assert results["zeroshot_top1"] >= 0.9, results  # 0.931 measured (chance: 0.1)
