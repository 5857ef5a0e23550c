"""Webdataset shards: pattern resolution, tar indexing and its cache, and every kind of bad sample."""

import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from eqvlp.data.shards import (
    ShardSource,
    expand_braces,
    index_tar,
    load_index,
    resolve_shards,
    write_shards,
)


def _samples(n, size=24, start=0):
    rng = np.random.default_rng(start)
    for i in range(start, start + n):
        yield {"image": rng.integers(0, 255, (size, size, 3), np.uint8),
               "text": f"caption number {i}", "label": i % 5}


def test_expand_braces_keeps_padding_and_multiplies():
    assert expand_braces("s/{00008..00010}.tar") == ["s/00008.tar", "s/00009.tar", "s/00010.tar"]
    assert expand_braces("{0..1}/{a}-{08..09}") == ["0/{a}-08", "0/{a}-09", "1/{a}-08", "1/{a}-09"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(ValueError, match="backwards"):
        expand_braces("{5..2}.tar")


def test_resolve_shards_patterns_globs_lists(tmp_path):
    paths = write_shards(_samples(7), tmp_path, samples_per_shard=3)
    assert len(paths) == 3
    assert resolve_shards(str(tmp_path / "{00000..00002}.tar")) == paths
    assert resolve_shards(str(tmp_path / "*.tar")) == paths
    assert resolve_shards(",".join(paths[:2])) == paths[:2]
    assert resolve_shards([paths[2], paths[0]]) == [paths[2], paths[0]]
    with pytest.raises(FileNotFoundError, match=r"3 of the 6 shards.*00003\.tar"):
        resolve_shards(str(tmp_path / "{00000..00005}.tar"))
    with pytest.raises(FileNotFoundError, match="matches no file"):
        resolve_shards(str(tmp_path / "nothing-*.tar"))
    with pytest.raises(ValueError, match="no shards"):
        resolve_shards([])


def test_source_reads_captions_labels_and_json_fallback(tmp_path):
    write_shards(_samples(5), tmp_path / "a", samples_per_shard=2)
    source = ShardSource(str(tmp_path / "a" / "*.tar"))
    assert len(source) == 5
    record = source[3]
    assert record["key"] == "000010001" and record["text"] == "caption number 3"
    assert record["label"] == 3 and record["problem"] is None
    assert Image.open(io.BytesIO(record["image"])).size == (24, 24)
    # DataComp-style: caption only in KEY.json, label in a json field
    path = tmp_path / "b.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in [("k1.png", _png()), ("k1.json", json.dumps({"caption": "from json",
                                                                         "label": 7}).encode())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    record = ShardSource(str(path))[0]
    assert (record["text"], record["label"], record["image_ext"]) == ("from json", 7, "png")
    with pytest.raises(IndexError):
        source[5]


def _png():
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_index_is_cached_beside_the_shard_and_in_a_cache_dir(tmp_path, monkeypatch):
    (path,) = write_shards(_samples(3), tmp_path / "w", samples_per_shard=10)
    first = load_index(path)
    assert os.path.exists(path + ".eqvlp-index.json")
    import eqvlp.data.shards as shards

    monkeypatch.setattr(shards, "index_tar", lambda p: pytest.fail("index rebuilt"))
    assert load_index(path) == first
    monkeypatch.undo()
    # the shard directory cannot take the index (here: its name is taken by a directory, which
    # also stands for a read-only directory, since root may write anywhere): the cache dir is used
    os.remove(path + ".eqvlp-index.json")
    os.mkdir(path + ".eqvlp-index.json")
    assert load_index(path, cache_dir=str(tmp_path / "cache")) == first
    assert not [p for p in os.listdir(tmp_path / "w") if p.endswith(".tmp")]
    assert any((tmp_path / "cache").rglob("*.json"))


def test_index_of_a_changed_shard_is_rebuilt(tmp_path):
    (path,) = write_shards(_samples(3), tmp_path, samples_per_shard=10)
    assert len(load_index(path)) == 3
    write_shards(_samples(4), tmp_path, samples_per_shard=10)
    assert len(load_index(path)) == 4


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_truncated_tar_keeps_whole_samples_and_flags_the_cut_one(tmp_path):
    (path,) = write_shards(_samples(4), tmp_path, samples_per_shard=10)
    data = open(path, "rb").read()
    entries, truncated = index_tar(path)
    assert not truncated and [e.problem for e in entries] == [None] * 4
    cut = tmp_path / "cut.tar"
    second_image = entries[1].members["jpg"]
    cut.write_bytes(data[: second_image[0] + 10])  # inside sample 1's image
    entries, truncated = index_tar(str(cut))
    assert truncated
    assert [(e.key, e.problem) for e in entries] == [("000000000", None),
                                                     ("000000001", "truncated_tar")]
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 10)
    entries, truncated = index_tar(str(junk))
    assert truncated and [e.problem for e in entries] == ["unreadable_tar"]


def test_every_kind_of_bad_sample_is_flagged_not_fatal(tmp_path):
    good = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 0, 0)).save(good, format="JPEG")
    good = good.getvalue()
    _tar(tmp_path / "bad.tar", [
        ("ok.jpg", good), ("ok.txt", b"a red square"),
        ("corrupt.jpg", b"\xff\xd8 not really a jpeg"), ("corrupt.txt", b"caption"),
        ("cut.jpg", good[: len(good) // 2]), ("cut.txt", b"caption"),
        ("nocap.jpg", good),
        ("empty.jpg", good), ("empty.txt", b"   "),
        ("odd.tiff", b"II*\x00"), ("odd.txt", b"caption"),
        ("notext.txt", b"caption without image"),
        ("badjson.jpg", good), ("badjson.json", b"{not json"),
    ])
    source = ShardSource(str(tmp_path / "bad.tar"))
    problems = {source[i]["key"]: source[i]["problem"] for i in range(len(source))}
    assert problems == {"ok": None, "corrupt": None, "cut": None, "nocap": None, "empty": None,
                        "odd": "unknown_extension", "notext": "missing_image",
                        "badjson": "bad_metadata"}
