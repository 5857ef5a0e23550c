"""Throughput of the training input pipeline on JPEG shards, against an open_clip-style peer.

    python -m benchmarks.data --help
    python -m benchmarks.data --json benchmarks/data_cpu.json

Writes shards the way img2dataset does (images resized to fit 256 x 256 with a border, JPEG
quality 95, `KEY.jpg` + `KEY.txt` + `KEY.json`), then measures images/s of eqvlp's train
pipeline (global shuffle, decode with JPEG draft mode, random resized crop to 224, tokenize, batch)
with 1 and 2 grain workers, and in the same run the open_clip-style peer: webdataset's
`WebDataset(...).shuffle().decode("pil")` in a torch `DataLoader` with the same number of workers,
the same crop (torchvision's RandomResizedCrop algorithm, bicubic, via Pillow: torchvision's own
wheel does not load beside the CPU torch build) and the same tokenizer.

Each pipeline is started, one batch per worker is taken (worker start-up), then `--images`
images are timed.
"""

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.data", description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=2000, help="samples written as shards")
    p.add_argument("--images", type=int, default=3072, help="images timed per pipeline")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--directory", help="where to write shards (default: a temporary directory)")
    p.add_argument("--json", help="write the results here")
    return p.parse_args(argv)


def write_img2dataset_shards(directory: str, samples: int) -> str:
    """Shards of 500 photos-like images (smooth colour fields plus shapes plus noise), 256 px
    with a border as img2dataset's `resize_mode="border"`, JPEG quality 95."""
    from PIL import Image, ImageDraw

    from eqvlp.data import write_shards

    rng = np.random.default_rng(0)

    def images():
        for i in range(samples):
            w, h = int(rng.integers(300, 640)), int(rng.integers(240, 480))
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            base = rng.uniform(0, 255, 3) + 60 * np.sin(xx[..., None] / rng.uniform(20, 80)
                                                        + yy[..., None] / rng.uniform(20, 80))
            image = Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255)
                                    .astype(np.uint8))
            draw = ImageDraw.Draw(image)
            for _ in range(3):
                x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
                draw.ellipse((x0, y0, x0 + int(rng.integers(20, 160)), y0 + int(rng.integers(20, 160))),
                             fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
            image.thumbnail((256, 256), Image.Resampling.BICUBIC)
            canvas = Image.new("RGB", (256, 256))
            canvas.paste(image, ((256 - image.width) // 2, (256 - image.height) // 2))
            yield {"image": canvas, "text": f"a photo of thing {i} with {i % 7} circles"}

    paths = write_shards(images(), directory, samples_per_shard=500, image_format="jpg", quality=95)
    return os.path.join(directory, f"{{00000..{len(paths) - 1:05d}}}.tar")


def time_iterator(batches, batch_size: int, images: int, warmup: int) -> float:
    """Images/s over `images` images after `warmup` batches (one from every worker: a worker
    process's start-up, imports included, is not throughput)."""
    for _ in range(warmup):
        next(batches)
    count, start = 0, time.perf_counter()
    while count < images:
        next(batches)
        count += batch_size
    return count / (time.perf_counter() - start)


def eqvlp_pipeline(pattern, tokenizer, args, workers):
    from eqvlp.data import DataConfig, Loader

    config = DataConfig(data=pattern, image_size=args.image_size, batch_size=args.batch_size,
                        context_length=77, workers=workers, seed=0)
    loader = Loader(config, tokenizer=tokenizer, process_index=0, process_count=1)
    try:
        return time_iterator(loader, args.batch_size, args.images, warmup=workers + 1)
    finally:
        loader.close()


class _PeerTransform:
    """open_clip's train transform on a PIL image: RandomResizedCrop(224, scale=(0.9, 1.0),
    bicubic), then a uint8 tensor (normalisation happens on the device in both pipelines)."""

    def __init__(self, size):
        self.size = size
        self.rng = np.random.default_rng(os.getpid())

    def __call__(self, image):
        import torch

        from eqvlp.data.transforms import sample_crop_box
        from PIL import Image

        box = sample_crop_box(image.width, image.height, (0.9, 1.0), (3 / 4, 4 / 3), self.rng)
        image = image.resize((self.size, self.size), Image.Resampling.BICUBIC, box=box)
        return torch.from_numpy(np.asarray(image).copy())


class _PeerTokenize:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, text):
        import torch

        from eqvlp.tokenizer import tokenize

        return torch.from_numpy(tokenize(self.tokenizer, [text], context_length=77)[0])


def peer_pipeline(pattern, tokenizer, args, workers):
    import torch
    import webdataset as wds

    torch.set_num_threads(1)
    dataset = (wds.WebDataset(pattern, shardshuffle=False, nodesplitter=wds.split_by_node,
                              workersplitter=wds.split_by_worker, empty_check=False)
               .repeat().shuffle(1000).decode("pil").to_tuple("jpg", "txt")
               .map_tuple(_PeerTransform(args.image_size), _PeerTokenize(tokenizer)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, num_workers=workers,
                                         persistent_workers=False)
    return time_iterator(iter(loader), args.batch_size, args.images, warmup=workers + 1)


def main(argv=None):
    args = _parse(argv)
    from eqvlp.data import ShardSource, fit_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        directory = args.directory or tmp
        start = time.perf_counter()
        pattern = write_img2dataset_shards(directory, args.samples)
        print(f"wrote {args.samples} samples to {pattern} in {time.perf_counter() - start:.1f}s")
        tokenizer = fit_tokenizer(ShardSource(pattern), vocab_size=500)
        results = {"machine": platform.processor() or platform.machine(),
                   "cpus": os.cpu_count(), "batch_size": args.batch_size,
                   "image_size": args.image_size, "images_timed": args.images}
        for workers in args.workers:
            ours = eqvlp_pipeline(pattern, tokenizer, args, workers)
            peer = peer_pipeline(pattern, tokenizer, args, workers)
            results[f"eqvlp_images_per_s_{workers}w"] = round(ours, 1)
            results[f"peer_images_per_s_{workers}w"] = round(peer, 1)
            print(f"{workers} worker(s): eqvlp {ours:8.1f} images/s   "
                  f"webdataset+DataLoader {peer:8.1f} images/s   ratio {ours / peer:.2f}x")
        top = max(args.workers)
        results["eqvlp_images_per_s"] = results[f"eqvlp_images_per_s_{top}w"]
        results["peer_images_per_s"] = results[f"peer_images_per_s_{top}w"]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
