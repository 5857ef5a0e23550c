"""Throughput of `eqvlp.render.render_text` (CLIPPO's Unifont renderer) on realistic captions.

Captions are generated (no data set is needed): a mix of COCO-style sentences, web alt-text
(title case, sizes, separators, brand-like names), longer multi-sentence descriptions, and
multilingual text (accents, Cyrillic, CJK, an occasional emoji), with lengths like alt-text
data (median around 60 characters, a long tail up to several hundred). Reports the glyph
table's load time and captions per second at each batch size, on one process and thread.
Not part of the test suite.

    python -m benchmarks.render --image-size 224 --batch-sizes 64 256 1024 --json render.json
"""

import argparse
import json
import os
import random
import statistics
import time

import numpy as np

from eqvlp.render import render_text, render_text_reference
from eqvlp.render import unifont

ADJ = ("red small large old wooden white black young smiling empty busy green modern vintage "
       "little tall colorful sunny snowy blue bright dark open").split()
NOUN = ("man woman dog cat bus train table kitchen street bicycle horse pizza laptop child "
        "beach mountain city building plate flower field boat bird clock sign car").split()
VERB = "sitting standing riding holding eating walking parked lying looking playing".split()
PREP = "on in next to near under behind with beside".split()
BRAND = "Acme Nordic Urban Classic Premium Eco Royal Studio Alpine Coastal".split()
SITE = "Etsy eBay Amazon.com Pinterest Flickr Shutterstock iStock".split()
FOREIGN = ("Café Müller niño façade Zürich crème brûlée Ærø São Paulo Москва вечером "
           "東京の夜景 一只猫 在公园里 서울 야경 ελληνικό νησί 🌅 😀").split()


def coco(rng: random.Random) -> str:
    words = ["A", rng.choice(ADJ), rng.choice(NOUN), rng.choice(VERB), rng.choice(PREP), "a",
             rng.choice(ADJ), rng.choice(NOUN)]
    if rng.random() < 0.5:
        words += ["with", rng.choice(("a", "two", "some")), rng.choice(NOUN)]
    return " ".join(words) + "."


def alt_text(rng: random.Random) -> str:
    title = " ".join(w.title() for w in (rng.choice(ADJ), rng.choice(NOUN), rng.choice(NOUN)))
    size = f"{rng.randint(8, 60)} x {rng.randint(8, 60)} {rng.choice(('in', 'cm'))}"
    parts = [rng.choice(BRAND), title, size]
    if rng.random() < 0.5:
        parts.append(f"#{rng.randint(100, 99999)}")
    return f"{' - '.join(parts)} | {rng.choice(SITE)}"


def description(rng: random.Random) -> str:
    return " ".join(coco(rng) for _ in range(rng.randint(2, 6)))


def multilingual(rng: random.Random) -> str:
    return " ".join(rng.choice(FOREIGN + NOUN) for _ in range(rng.randint(3, 12)))


def realistic_captions(n: int, seed: int = 0) -> list[str]:
    """`n` captions: 40% COCO-style, 30% alt-text, 20% long descriptions, 10% multilingual."""
    rng = random.Random(seed)
    makers = [coco] * 4 + [alt_text] * 3 + [description] * 2 + [multilingual]
    return [rng.choice(makers)(rng) for _ in range(n)]


def captions_per_second(captions: list[str], batch: int, seconds: float, image_size: int,
                        wrap: str) -> float:
    """Median rate over repeated passes of `seconds` each."""
    batches = [captions[i : i + batch] for i in range(0, len(captions) - batch + 1, batch)]
    render_text(batches[0], image_size=image_size, wrap=wrap)  # warm up
    rates = []
    for _ in range(3):
        done, start, i = 0, time.perf_counter(), 0
        while time.perf_counter() - start < seconds / 3:
            render_text(batches[i % len(batches)], image_size=image_size, wrap=wrap)
            done, i = done + batch, i + 1
        rates.append(done / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--captions", type=int, default=8192)
    parser.add_argument("--seconds", type=float, default=3.0, help="per batch size")
    parser.add_argument("--wrap", choices=("char", "word"), default="char")
    parser.add_argument("--reference", type=int, default=200,
                        help="captions to time the one-string reference renderer on (0: skip)")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()

    path, upper = unifont.resolve_paths()
    start = time.perf_counter()
    font = unifont._load.__wrapped__(path, upper)  # parse without the per-process cache
    load_s = time.perf_counter() - start
    unifont.load_unifont()

    captions = realistic_captions(args.captions)
    lengths = np.array([len(c) for c in captions])
    sample = render_text(captions[:1024], image_size=args.image_size, wrap=args.wrap)
    ink_rows = (sample[..., 0] != 127).any(axis=2)
    lines = np.array([np.flatnonzero(r).max() // 16 + 1 if r.any() else 0 for r in ink_rows])
    print(f"glyph table: {font.num_glyphs} glyphs from {path}, parsed in {load_s * 1e3:.0f} ms")
    print(f"captions: {len(captions)}, characters mean {lengths.mean():.0f}, median "
          f"{np.median(lengths):.0f}, p95 {np.percentile(lengths, 95):.0f}, max {lengths.max()}; "
          f"lines per {args.image_size}-px image mean {lines.mean():.1f}, max {lines.max()}")
    print(f"cpus: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; one process, one thread")
    rows = []
    for batch in args.batch_sizes:
        rate = captions_per_second(captions, batch, args.seconds, args.image_size, args.wrap)
        rows.append({"batch": batch, "captions_per_s": rate})
        print(f"  batch {batch:5d}: {rate:8.0f} captions/s  "
              f"({args.image_size} px, wrap={args.wrap})")
    result = {"image_size": args.image_size, "wrap": args.wrap, "load_s": load_s,
              "mean_chars": float(lengths.mean()), "results": rows}
    if args.reference:
        subset = captions[: args.reference]
        start = time.perf_counter()
        for caption in subset:
            render_text_reference(caption, image_size=args.image_size, wrap=args.wrap)
        rate = len(subset) / (time.perf_counter() - start)
        result["reference_captions_per_s"] = rate
        print(f"  reference (one string at a time): {rate:8.0f} captions/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
