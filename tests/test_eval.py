"""eqvlp.eval: metrics on hand-made scores, blocked retrieval against NumPy, prompt ensembling,
the probe against scikit-learn, and feature extraction (padding, one compilation, mesh, cache).

Shapes are tiny and shared between tests so that the file compiles few programs.
"""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxtyping import Array, Float, Int

from eqvlp import eval as ev
from eqvlp import models
from eqvlp.sharding import make_mesh
from eqvlp.testing import unchecked
from eqvlp.tokenizer import tokenize, train_tokenizer


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ---------------------------------------------------------------- classification metrics


def test_classification_metrics_ties_count_against_and_k_above_classes():
    logits = np.array([[3, 1, 2, 0], [1, 1, 0, 0], [0, 2, 2, 0], [5, 4, 3, 0]], np.float32)
    # ranks of the true class: 0; 1 (tie with class 0); 1 (tie with class 1); 2
    out = ev.classification_metrics(logits, np.array([0, 1, 2, 2]), ks=(1, 2, 3, 5))
    assert (out["top1"], out["top2"], out["top3"], out["top5"]) == (0.25, 0.75, 1.0, 1.0)
    assert out["per_class_accuracy"] == [1.0, 0.0, 0.0, None]  # class 3 has no sample
    assert out["mean_per_class_recall"] == pytest.approx(1 / 3)
    assert out["num_samples"] == 4
    # one class: every k is 1.0; all-equal logits: a tie is never a hit
    one = ev.classification_metrics(np.zeros((3, 1), np.float32), np.zeros(3, np.int64))
    assert one["top1"] == one["top5"] == 1.0
    flat = ev.classification_metrics(np.zeros((2, 3), np.float32), np.array([0, 1]), ks=(1, 3))
    assert flat["top1"] == 0.0 and flat["top3"] == 1.0


def test_classification_and_zeroshot_bad_inputs(tmp_path):
    logits = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\), got \[3\]"):
        ev.classification_metrics(logits, np.array([0, 3]))
    with pytest.raises(ValueError, match="NaN or inf"):
        ev.classification_metrics(np.full((2, 3), np.nan, np.float32), np.array([0, 1]))
    with pytest.raises(ValueError, match="ks must be positive ints"):
        ev.classification_metrics(logits, np.array([0, 1]), ks=(0,))
    feats = unit(np.eye(3)[:2]).astype(np.float32)
    with pytest.raises(ValueError, match="class_embs is empty"):
        ev.zeroshot(feats, np.zeros((0, 3), np.float32), np.array([0, 1]))
    with unchecked():
        with pytest.raises(ValueError, match=r"labels must have shape \(2,\), one per sample, got \(3,\)"):
            ev.zeroshot(feats, feats, np.array([0, 1, 1]))
        with pytest.raises(ValueError, match="dim 3 but class_embs have dim 2"):
            ev.zeroshot(feats, feats[:, :2], np.array([0, 1]))
    with pytest.raises(ValueError, match="classnames is empty"):
        ev.class_embeddings(lambda t: np.ones((len(t), 2)), [], ["a {}."])

    def write(data):
        path = tmp_path / "zs.json"
        path.write_text(json.dumps(data))
        return path

    good = {"classnames": ["cat", "dog"], "templates": ["a photo of a {}.", "{{{}}}"]}
    assert ev.load_zeroshot_file(write(good)) == (good["classnames"], good["templates"])
    cases = {
        "missing key": ({"classnames": ["cat"]}, r"missing key\(s\) \['templates'\]"),
        "no braces": ({"classnames": ["cat"], "templates": ["a cat"]}, "exactly one '{}'"),
        "two braces": ({"classnames": ["cat"], "templates": ["{} and {}"]}, "exactly one '{}'"),
        "named field": ({"classnames": ["cat"], "templates": ["{name}"]}, "exactly one '{}'"),
        "empty": ({"classnames": [], "templates": ["{}"]}, "classnames is empty"),
        "duplicates": ({"classnames": ["crane", "crane"], "templates": ["{}"]}, "duplicate class names"),
    }
    for data, message in cases.values():
        with pytest.raises(ValueError, match=message):
            ev.load_zeroshot_file(write(data))
    with pytest.raises(FileNotFoundError, match="classnames"):
        ev.load_zeroshot_file(tmp_path / "missing.json")


# ---------------------------------------------------------------- zero-shot


def test_class_embeddings_ensemble_like_numpy():
    rng = np.random.default_rng(0)
    classnames, templates = ["cat", "dog", "bird"], ["a {}.", "a photo of a {}.", "{}!"]
    table = {t.format(c): rng.normal(size=5) * rng.uniform(0.5, 3) for c in classnames for t in templates}
    calls = []

    def encode(texts):
        calls.append(len(texts))
        return np.stack([table[t] for t in texts]).astype(np.float32)

    got = ev.class_embeddings(encode, classnames, templates, chunk_size=4)
    assert calls == [4, 4, 1] and got.shape == (3, 5) and got.dtype == np.float32
    for c, name in enumerate(classnames):
        mean = np.mean([unit(table[t.format(name)]) for t in templates], axis=0)
        np.testing.assert_allclose(got[c], unit(mean), rtol=1e-6, atol=1e-7)


class Colours(eqx.Module):
    """Two towers that are known functions: an image's mean colour, and a one-hot of its
    caption's first token (token t in 4..6 means colour t - 4)."""

    scale: Float[Array, ""]

    def encode_image(self, images: Float[Array, "batch h w 3"]) -> Float[Array, "batch 3"]:
        return self.scale * jnp.mean(images, axis=(1, 2))

    def encode_text(self, ids: Int[Array, "batch length"]) -> Float[Array, "batch 3"]:
        return self.scale * jax.nn.one_hot(ids[:, 0] - 4, 3)


WORDS = {"red": 4, "green": 5, "blue": 6}


def colour_ids(texts):
    return np.array([[next(WORDS[w] for w in t.split() if w in WORDS), 0] for t in texts], np.int32)


def test_zeroshot_on_known_encoders():
    model = Colours(jnp.asarray(2.0))
    encode = ev.text_encoder(model, colour_ids, batch_size=4)
    class_embs = ev.class_embeddings(encode, list(WORDS), ["a {} photo", "the {} thing"])
    np.testing.assert_allclose(class_embs, np.eye(3), atol=1e-6)
    colours = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.9, 0.2, 0], [0.1, 0.2, 0.8]], np.float32)
    images = np.broadcast_to(colours[:, None, None], (5, 2, 2, 3)).copy()
    feats = ev.embed_images(model, images, batch_size=4)
    np.testing.assert_allclose(feats, unit(colours), rtol=1e-6, atol=1e-6)
    labels = np.array([0, 1, 2, 1, 2])  # the fourth is red, labelled green: 4/5 right
    out = ev.zeroshot(feats, class_embs, labels, ks=(1, 2))
    assert out["top1"] == 0.8 and out["top2"] == 1.0
    assert out["per_class_accuracy"] == [1.0, 0.5, 1.0]
    # uint8 images are normalised on the device; the raw features keep the model's scale
    pixels = np.array([[[[0, 128, 255]]]], np.uint8)
    raw = ev.embed_images(model, pixels, normalize=((0.5, 0.5, 0.5), (0.25, 0.5, 0.5)),
                          normalized=False, batch_size=4)
    expected = 2 * (np.array([0, 128, 255]) / 255 - 0.5) / np.array([0.25, 0.5, 0.5])
    np.testing.assert_allclose(raw[0], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="uint8 images need normalize="):
        ev.embed_images(model, pixels, batch_size=4)
    with pytest.raises(ValueError, match="normalize= applies to uint8 images"):
        ev.embed_images(model, images, normalize=ev.CLIP_MEAN_STD, batch_size=4)
    with unchecked(), pytest.raises(ValueError, match=r"normalize must be \(mean, std\)"):
        ev.embed_images(model, pixels, normalize=(0.5,), batch_size=4)
    with unchecked(), pytest.raises(ValueError, match="batch 0 is a str"):
        ev.embed_texts(model, ["a red photo"], batch_size=4)


# ---------------------------------------------------------------- retrieval


def test_retrieval_hand_made_ties_and_several_captions():
    e = np.eye(3, dtype=np.float32)
    images = e
    # captions 0, 1 are image 0's; 2 is image 1's (and equals caption 1); 3, 4 are image 2's
    texts = np.stack([e[0], e[1], e[1], e[2], unit(e[0] + e[2])]).astype(np.float32)
    owner = np.array([0, 0, 1, 2, 2])
    # i2t ranks: image 0 -> 0; image 1 -> 1 (caption 1 ties its own caption 2); image 2 -> 0
    # t2i ranks: 0; 2 (its image scores 0, tied by image 2, beaten by image 1); 0; 0;
    #            1 (image 0 ties image 2 at 1/sqrt 2)
    out = ev.retrieval_metrics(images, texts, owner, ks=(1, 2, 3), block_size=2)  # ties across blocks
    assert out == {
        "i2t_r1": 2 / 3, "i2t_r2": 1.0, "i2t_r3": 1.0,
        "t2i_r1": 3 / 5, "t2i_r2": 4 / 5, "t2i_r3": 1.0,
        "num_images": 3, "num_texts": 5,
    }


def numpy_retrieval(images, texts, owner, ks):
    """The unblocked definition: the full similarity matrix, ranks by counting."""
    s = unit(images) @ unit(texts).T  # (N, M)
    n, m = s.shape
    own = owner[None, :] == np.arange(n)[:, None]
    best = np.where(own, s, -np.inf).max(axis=1)
    i2t = ((s >= best[:, None]) & ~own).sum(axis=1)
    target = s[owner, np.arange(m)]
    t2i = (s >= target[None, :]).sum(axis=0) - 1
    out = {f"i2t_r{k}": float(np.mean(i2t < k)) for k in ks}
    out |= {f"t2i_r{k}": float(np.mean(t2i < k)) for k in ks}
    return out | {"num_images": n, "num_texts": m}


def test_blocked_retrieval_equals_numpy():
    rng = np.random.default_rng(1)
    n, m = 13, 29
    images = rng.normal(size=(n, 6)).astype(np.float32)
    owner = np.concatenate([np.arange(n), rng.integers(0, n, m - n)])
    # captions near their image, so the recalls are neither 0 nor 1
    texts = (images[owner] + 1.2 * rng.normal(size=(m, 6))).astype(np.float32)
    expected = numpy_retrieval(images, texts, owner, (1, 5, 10))
    assert 0 < expected["i2t_r1"] < 1 and 0 < expected["t2i_r1"] < 1
    # 7 divides neither 13 nor 29: both sweeps end on a padded block
    assert ev.retrieval_metrics(images, texts, owner, block_size=7) == expected


def test_retrieval_bad_inputs():
    images, texts = np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match=r"1 image\(s\) have no caption, e.g. \[2\]"):
        ev.retrieval_metrics(images, texts, np.array([0, 1, 1]))
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\) for 3 images, got \[5\]"):
        ev.retrieval_metrics(images, texts, np.array([0, 1, 5]))
    with pytest.raises(ValueError, match="block_size must be a positive int"):
        ev.retrieval_metrics(images, texts, np.arange(3), block_size=0)
    with unchecked():
        with pytest.raises(ValueError, match=r"text_to_image must have shape \(3,\)"):
            ev.retrieval_metrics(images, texts, np.arange(2))
        with pytest.raises(ValueError, match="dim 3 but text_features have dim 2"):
            ev.retrieval_metrics(images, texts[:, :2], np.arange(3))


# ---------------------------------------------------------------- probes


@pytest.fixture(scope="module")
def digits():
    """Handwritten digits as L2-normalised features (as CLIP's): 100 train, 300 test."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = unit(x).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    # 100 training examples, 10 per class, so that few_shot's padded size (10 shots x 10
    # classes) matches and every probe in this file shares one compiled L-BFGS loop.
    train = np.concatenate([np.flatnonzero(y == c)[:10] for c in range(10)])
    test = np.setdiff1d(np.arange(len(y)), train)[:300]
    return x[train], y[train], x[test], y[test]


def test_linear_probe_matches_sklearn(digits):
    from sklearn.linear_model import LogisticRegression

    train_x, train_y, test_x, test_y = digits
    l2 = 1e-3
    ours = ev.linear_probe(train_x, train_y, test_x, test_y, l2_grid=[l2])
    # ours: mean CE + l2/2 |W|^2; sklearn: C * sum CE + |W|^2 / 2, so C = 1 / (l2 * n)
    sk = LogisticRegression(C=1 / (l2 * len(train_y)), max_iter=5000, tol=1e-8).fit(train_x, train_y)
    assert abs(ours["accuracy"] - sk.score(test_x, test_y)) <= 0.01
    assert ours["l2"] == l2 and ours["val_accuracy"] is None and ours["iterations"] > 0

    grid = [1e-4, 1e-2, 10.0]
    swept = ev.linear_probe(train_x, train_y, test_x, test_y, l2_grid=grid, val_fraction=0.3)
    assert swept["l2_grid"] == grid and len(swept["val_accuracy"]) == 3
    best = max(swept["val_accuracy"])
    assert swept["l2"] == max(v for v, a in zip(grid, swept["val_accuracy"]) if a == best)
    assert swept["val_accuracy"][2] < best  # l2 = 10 is far too strong
    assert 0.7 < swept["accuracy"] <= 1.0


def test_few_shot_means_and_sampling(digits):
    train_x, train_y, test_x, test_y = digits
    out = ev.few_shot(train_x, train_y, test_x, test_y, shots=(1, 10), seeds=(0, 1))
    assert sorted(out) == [1, 10]
    for k, entry in out.items():
        assert entry["num_train"] == 10 * k and len(entry["accuracies"]) == 2
        assert entry["mean"] == pytest.approx(np.mean(entry["accuracies"]))
        assert entry["std"] == pytest.approx(np.std(entry["accuracies"]))
    assert out[1]["std"] > 0  # different seeds draw different single examples
    assert out[10]["std"] == 0 and out[10]["mean"] > out[1]["mean"]  # 10 shots = all the data
    one, three = (ev.few_shot_indices(train_y, k, seed=5) for k in (1, 3))
    assert np.bincount(train_y[three], minlength=10).tolist() == [3] * 10
    assert set(one) <= set(three)
    assert not np.array_equal(one, ev.few_shot_indices(train_y, 1, seed=6))
    with pytest.raises(ValueError, match="class 0 has 10 training example"):
        ev.few_shot_indices(train_y, 11, seed=0)
    with pytest.raises(ValueError, match=r"train_y must lie in \[0, 9\), got \[9\]"):
        ev.linear_probe(train_x, train_y, test_x, test_y, num_classes=9)


# ---------------------------------------------------------------- extraction


def test_extract_pads_rechunks_and_compiles_once():
    traces = []

    def fn(x):
        traces.append(x.shape)
        return jnp.concatenate([x, 2 * x], axis=1)

    data = np.arange(22, dtype=np.float32).reshape(11, 2)
    expected = np.concatenate([data, 2 * data], axis=1)
    np.testing.assert_array_equal(ev.extract(fn, data, batch_size=4), expected)
    ragged = [data[:3], data[3:4], data[4:4], data[4:10], data[10:]]
    np.testing.assert_array_equal(ev.extract(fn, iter(ragged), batch_size=4), expected)
    np.testing.assert_array_equal(ev.extract(fn, data[:1], batch_size=4), expected[:1])
    assert traces == [(4, 2)]  # one compilation for the three calls

    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        ev.extract(fn, data, batch_size=0)
    with pytest.raises(ValueError, match="hold no examples"):
        ev.extract(fn, iter([]), batch_size=4)
    with pytest.raises(ValueError, match=r"batch 1 holds float32 examples of shape \(3,\)"):
        ev.extract(fn, [data, np.zeros((2, 3), np.float32)], batch_size=4)
    with pytest.raises(ValueError, match=r"fn must return \(batch, dim\) features, got \(4,\)"):
        ev.extract(lambda x: x[:, 0], data, batch_size=4)


def test_extract_on_a_mesh_of_eight_devices():
    seen = []

    def fn(x):
        jax.debug.inspect_array_sharding(x, callback=seen.append)
        return x * 3

    data = np.arange(40, dtype=np.float32).reshape(20, 2)
    mesh = make_mesh()
    assert mesh.shape["data"] == 8
    np.testing.assert_array_equal(ev.extract(fn, data, batch_size=8, mesh=mesh), 3 * data)
    assert seen and seen[0].num_devices == 8 and not seen[0].is_fully_replicated
    with pytest.raises(ValueError, match="batch_size=12 does not split over the mesh's 8"):
        ev.extract(fn, data, batch_size=12, mesh=mesh)


def test_extract_cache_saves_and_reloads(tmp_path):
    calls = []

    def fn(x):
        calls.append(1)
        return x + 1

    data = np.ones((5, 3), np.float32)
    path = tmp_path / "sub" / "feats.npy"
    first = ev.extract(fn, data, batch_size=4, cache=path)
    assert path.exists() and [p.name for p in path.parent.iterdir()] == ["feats.npy"]

    def never():
        raise AssertionError("the cached features must be loaded, not recomputed")
        yield

    np.testing.assert_array_equal(ev.extract(fn, never(), batch_size=4, cache=path), first)
    assert len(calls) == 1
    with pytest.raises(ValueError, match=r"holds features of shape \(5, 3\), but \(6, dim\)"):
        ev.extract(fn, np.ones((6, 3), np.float32), batch_size=4, cache=path)


# ---------------------------------------------------------------- end to end


def test_clip_tiny_end_to_end(getkey):
    """Plumbing: a random-weight clip-tiny through every entry point gives numbers in range."""
    model = models.create("clip-tiny", key=getkey())
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    image_feats = ev.embed_images(model, images, normalize=ev.CLIP_MEAN_STD, batch_size=8,
                                  mesh=make_mesh())
    assert image_feats.shape == (6, 32) and image_feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(image_feats, axis=1), 1, rtol=1e-5)

    classnames = ["cat", "dog", "bird"]
    tokenizer = train_tokenizer([f"a photo of a {c}" for c in classnames], vocab_size=300)
    prepare = lambda texts: tokenize(tokenizer, texts, context_length=16)  # noqa: E731
    class_embs = ev.class_embeddings(ev.text_encoder(model, prepare, batch_size=4), classnames,
                                     ["a photo of a {}.", "a {}."])
    zs = ev.zeroshot(image_feats, class_embs, np.array([0, 1, 2, 0, 1, 2]))
    assert 0 <= zs["top1"] <= zs["top5"] == 1.0 and zs["num_samples"] == 6

    captions = [f"photo {i} of a {c}" for i, c in enumerate(classnames * 4)]  # two per image
    text_feats = ev.embed_texts(model, prepare(captions), batch_size=4)
    np.testing.assert_allclose(np.linalg.norm(text_feats, axis=1), 1, rtol=1e-5)
    out = ev.retrieval_metrics(image_feats, text_feats, np.repeat(np.arange(6), 2))
    assert out["num_images"] == 6 and out["num_texts"] == 12
    assert all(0 <= out[k] <= 1 for k in out if "_r" in k)
    assert out["t2i_r10"] == 1.0  # 6 images: each caption's own image is in its top 10


class PixelOracle(eqx.Module):
    """Image features: the top-left pixel; text features: the first three token ids."""

    def encode_image(self, images: Float[Array, "b h w 3"]) -> Float[Array, "b 3"]:
        return images[:, 0, 0, :]

    def encode_text(self, ids: Int[Array, "b n"]) -> Float[Array, "b 3"]:
        return ids[:, :3].astype(jnp.float32)


def test_evaluate_scores_groups_apart():
    """`groups` adds top-1 over each group's images, from the same class embeddings."""
    from eqvlp.eval.evaluate import EvalSet, evaluate

    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    shown = np.array([0, 1, 2, 0, 1, 0, 2, 1])  # images 5 and 6 show another class
    images = np.zeros((8, 2, 2, 3), np.uint8)
    images[np.arange(8), 0, 0, shown] = 255

    def prepare(texts):
        ids = np.zeros((len(texts), 4), np.int32)
        for row, text in enumerate(texts):
            ids[row, int(text[-1])] = 1
        return ids

    seen = np.array([True] * 4 + [False] * 4)
    results = evaluate(PixelOracle(), EvalSet(images, [["x"]] * 8, labels, [str(i) for i in
                                                                             range(8)]),
                       prepare_text=prepare, normalize=((0.0,) * 3, (1.0,) * 3), classnames=["0", "1", "2"],
                       templates=["class {}"], tasks=("zeroshot",), batch_size=8,
                       groups={"seen": seen, "unseen": ~seen})
    assert results["zeroshot_top1"] == pytest.approx(6 / 8)
    assert results["zeroshot_top1_seen"] == pytest.approx(1.0)
    assert results["zeroshot_top1_unseen"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="one bool per image"):
        evaluate(PixelOracle(), EvalSet(images, [["x"]] * 8, labels, [""] * 8),
                 prepare_text=prepare, normalize=((0.0,) * 3, (1.0,) * 3), classnames=["0", "1", "2"],
                 templates=["class {}"], tasks=("zeroshot",), batch_size=8,
                 groups={"seen": seen[:3]})
