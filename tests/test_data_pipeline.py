"""The grain input pipeline on shards the tests write: batches, skip counts, seeds, exact resume,
the split over processes and worker processes."""

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from eqvlp.data import DataConfig, Loader, fit_tokenizer, global_batch, write_shards
from eqvlp.data.shards import ShardSource, index_tar

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """40 coloured images as 4 JPEG shards of 10."""
    directory = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    samples = []
    for i in range(40):
        name = list(COLOURS)[i % 3]
        image = np.clip(rng.normal(COLOURS[name], 20, (40, 48, 3)), 0, 255).astype(np.uint8)
        samples.append({"image": image, "text": f"a {name} picture number {i}", "label": i % 3})
    write_shards(samples, directory, samples_per_shard=10)
    return str(directory / "{00000..00003}.tar")


@pytest.fixture(scope="module")
def tokenizer(shards):
    return fit_tokenizer(ShardSource(shards), vocab_size=300)


def config(shards, **kw):
    return DataConfig(**{"data": shards, "image_size": 32, "batch_size": 8,
                         "context_length": 12, **kw})


def take(loader, n):
    return [next(loader) for _ in range(n)]


def test_batches_of_tokens_rendered_text_raw_and_views(shards, tokenizer):
    batch = next(Loader(config(shards), tokenizer=tokenizer, process_index=0, process_count=1))
    assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.uint8
    assert batch["text"].shape == (8, 12) and batch["text"].dtype == np.int32
    assert np.all(batch["text"][:, 0] == 1)  # BOS
    assert batch["label"].dtype == np.int32 and batch["index"].dtype == np.int64
    assert set(batch["label"].tolist()) <= {0, 1, 2} and len(batch["key"]) == 8
    views = next(Loader(config(shards, views=2, image_size=(24, 40), text="render",
                               render_size=(16, 64)), process_index=0, process_count=1))
    assert views["image"].shape == (8, 2, 24, 40, 3)
    assert not np.array_equal(views["image"][:, 0], views["image"][:, 1])  # independent crops
    assert views["text"].shape == (8, 16, 64, 3) and views["text"].dtype == np.uint8
    raw = next(Loader(config(shards, text="raw", training=False), process_index=0,
                      process_count=1))
    assert raw["text"][0] == "a red picture number 0" and raw["index"].tolist() == list(range(8))


def test_rendered_text_is_drawn_as_the_render_config_says(shards):
    from eqvlp.render import RenderConfig, render_text

    small = RenderConfig(font_size=8, wrap="word")
    batch = next(Loader(config(shards, text="render", training=False, render=small),
                        process_index=0, process_count=1))
    expected = render_text(["a red picture number 0"], image_size=(32, 32), font_size=8,
                           wrap="word")
    np.testing.assert_array_equal(batch["text"][:1], expected)
    default = next(Loader(config(shards, text="render", training=False), process_index=0,
                          process_count=1))
    assert not np.array_equal(default["text"][0], batch["text"][0])


def test_eval_is_one_ordered_pass_with_a_short_last_batch(shards, tokenizer):
    loader = Loader(config(shards, training=False, batch_size=16), tokenizer=tokenizer,
                    process_index=0, process_count=1)
    batches = list(loader)
    assert [len(b["index"]) for b in batches] == [16, 16, 8]
    assert np.concatenate([b["index"] for b in batches]).tolist() == list(range(40))


def test_seed_decides_order_and_augmentation(shards, tokenizer):
    def first(seed):
        return next(Loader(config(shards, seed=seed), tokenizer=tokenizer, process_index=0,
                           process_count=1))

    a, b, c = first(1), first(1), first(2)
    assert np.array_equal(a["index"], b["index"]) and np.array_equal(a["image"], b["image"])
    assert not np.array_equal(a["index"], c["index"])


def test_epochs_reshuffle_and_cover_every_sample(shards, tokenizer):
    loader = Loader(config(shards), tokenizer=tokenizer, process_index=0, process_count=1)
    epochs = np.concatenate([b["index"] for b in take(loader, 10)]).reshape(2, 40)
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(40))
    assert not np.array_equal(epochs[0], epochs[1])


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_at_exactly_the_next_sample(shards, tokenizer, workers):
    cfg = config(shards, workers=workers)
    loader = Loader(cfg, tokenizer=tokenizer, process_index=0, process_count=1)
    take(loader, 3)
    state = json.loads(json.dumps(loader.state()))  # what a checkpoint stores
    expected = take(loader, 3)
    loader.close()
    resumed = Loader(cfg, tokenizer=tokenizer, process_index=0, process_count=1, state=state)
    for want, got in zip(expected, take(resumed, 3), strict=True):
        assert np.array_equal(want["index"], got["index"])
        assert np.array_equal(want["image"], got["image"])
        assert np.array_equal(want["text"], got["text"])
    resumed.close()


def test_processes_read_disjoint_samples_whose_union_is_the_single_process_batch(
        shards, tokenizer):
    single = take(Loader(config(shards), tokenizer=tokenizer, process_index=0,
                         process_count=1), 6)
    parts = [take(Loader(config(shards), tokenizer=tokenizer, process_index=p,
                         process_count=2), 6) for p in range(2)]
    for step, whole in enumerate(single):
        a, b = (part[step]["index"] for part in parts)
        assert len(a) == len(b) == 4 and not set(a) & set(b)
        assert sorted([*a, *b]) == sorted(whole["index"])
    with pytest.raises(ValueError, match="multiple of 3"):
        Loader(config(shards), tokenizer=tokenizer, process_index=0, process_count=3)


def _jpeg(colour=(200, 0, 0)):
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_samples_are_skipped_counted_and_named(tmp_path, tokenizer, workers):
    good = _jpeg()
    members = [("ok1.jpg", good), ("ok1.txt", b"a red picture"),
               ("corrupt.jpg", b"\xff\xd8 not a jpeg"), ("corrupt.txt", b"a red picture"),
               ("cut.jpg", good[: len(good) // 2]), ("cut.txt", b"a red picture"),
               ("nocap.jpg", good),
               ("empty.jpg", good), ("empty.txt", b"  \n"),
               ("odd.tiff", b"II*\x00"), ("odd.txt", b"a red picture"),
               ("ok2.jpg", good), ("ok2.txt", b"a red picture")]
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (whole,) = write_shards([{"image": np.zeros((8, 8, 3), np.uint8), "text": "x"}] * 3,
                            tmp_path / "t", samples_per_shard=5)
    data = open(whole, "rb").read()
    offset, _ = index_tar(whole)[0][1].members["jpg"]
    (tmp_path / "00001.tar").write_bytes(data[: offset + 10])  # cut inside the second image
    loader = Loader(config(str(tmp_path / "*.tar"), training=False, batch_size=2,
                           workers=workers), tokenizer=tokenizer, process_index=0,
                    process_count=1)
    keys = [k for batch in loader for k in batch["key"]]
    assert sorted(keys) == ["000000000", "ok1", "ok2"]
    counts = loader.skipped.counts
    assert counts == {"corrupt_image": 2, "missing_caption": 2, "unknown_extension": 1,
                      "truncated_tar": 1}
    assert loader.skipped.examples["unknown_extension"] == [f"{tmp_path}/00000.tar:odd"]
    assert any("corrupt image" in e for e in loader.skipped.examples["corrupt_image"])
    assert loader.state()["skipped"]["counts"] == counts  # checkpointed with the position


def test_bad_configuration_is_a_clear_error(shards, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="needs a tokenizer"):
        Loader(config(shards), process_index=0, process_count=1)
    with pytest.raises(FileNotFoundError, match="matches no file"):
        Loader(config(str(tmp_path / "*.tar")), tokenizer=tokenizer, process_index=0,
               process_count=1)
    with pytest.raises(ValueError, match="views"):
        DataConfig(views=0)
    with pytest.raises(ValueError, match="image size"):
        DataConfig(image_size=0)


def test_global_batch_assembles_a_sharded_array(shards, tokenizer):
    import jax

    from eqvlp.sharding import make_mesh

    mesh = make_mesh(data=8)
    batch = next(Loader(config(shards), tokenizer=tokenizer, process_index=0, process_count=1))
    arrays = global_batch(batch, mesh)
    assert isinstance(arrays["image"], jax.Array) and arrays["image"].shape == (8, 32, 32, 3)
    assert len(arrays["image"].sharding.device_set) == 8
    assert np.array_equal(np.asarray(arrays["text"]), batch["text"])
    assert arrays["key"] == batch["key"]  # host fields stay on the host
