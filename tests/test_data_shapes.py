"""The captioned-shapes dataset: determinism, splits, truthful captions, drawn pixels, tasks."""

import collections
import pickle
import re

import numpy as np
import pytest

from eqvlp.data.shapes import (
    CAPTION_TEMPLATES,
    COLOUR_RGB,
    COLOURS,
    HELD_OUT,
    POSITIONS,
    SHAPE_WORDS,
    SHAPES,
    SIZE_WORDS,
    SIZES,
    WHERE_PHRASES,
    ShapeObject,
    Shapes,
    ShapesConfig,
    captions_corpus,
    coverage,
    draw,
    held_out_mask,
    label,
    zeroshot_task,
)

TRAIN_SCENES = 2000  # scenes only, no drawing


def mentions(text: str, words) -> bool:
    return any(re.search(rf"\b{re.escape(w)}\b", text) for w in words)


def test_same_seed_same_bytes_other_seed_other_images():
    a = Shapes("train", config=ShapesConfig(seed=1))
    b = Shapes("train", config=ShapesConfig(seed=1))
    c = Shapes("train", config=ShapesConfig(seed=2))
    # order of access (batch composition) does not matter
    first = {i: a[i] for i in (3, 0, 7)}
    second = {i: b[i] for i in (7, 3, 0)}
    for i in first:
        x, y = first[i], second[i]
        assert x["key"] == y["key"] and x["image"].tobytes() == y["image"].tobytes()
        assert x["captions"] == y["captions"]
    assert all(not np.array_equal(a[i]["image"], c[i]["image"]) for i in range(4))
    # splits are different streams; a record and the source survive pickling
    assert not np.array_equal(Shapes("val")[0]["image"], Shapes("train")[0]["image"])
    record = pickle.loads(pickle.dumps(a[5]))
    assert record["image"].tobytes() == a[5]["image"].tobytes()
    assert pickle.loads(pickle.dumps(a))[5]["captions"] == a[5]["captions"]


@pytest.mark.parametrize("size, hw", [(32, (32, 32)), (64, (64, 64)), (224, (224, 224)),
                                      ((48, 96), (48, 96))])
def test_records_have_the_documented_layout(size, hw):
    source = Shapes("test", num_samples=6, config=ShapesConfig(image_size=size,
                                                                 second_object_prob=0.5))
    assert len(source) == 6
    for i in range(len(source)):
        r = source[i]
        assert r["key"] == f"shapes-test-{i:08d}"
        assert r["image"].shape == (*hw, 3) and r["image"].dtype == np.uint8
        assert len(r["captions"]) == 5 and r["text"] == r["captions"][0]
        assert all(isinstance(c, str) for c in r["captions"])
        assert isinstance(r["held_out"], bool) and r["label"] == r["shape"]
        for key, names in [("shape", SHAPES), ("colour", COLOURS), ("size", SIZES),
                           ("position", POSITIONS)]:
            assert type(r[key]) is int and 0 <= r[key] < len(names)
    assert source[-1]["key"] == "shapes-test-00000005"
    with pytest.raises(IndexError, match="num_samples"):
        source[6]
    with pytest.raises(IndexError):
        source[-7]


def test_split_lengths():
    assert [len(Shapes(s)) for s in ("train", "val", "test")] == [100_000, 1_000, 1_000]
    assert len(Shapes("train", num_samples=12)) == 12
    # the first samples do not depend on the nominal length
    assert Shapes("train", num_samples=3)[2]["text"] == Shapes("train")[2]["text"]


def test_held_out_pairs_form_a_latin_square():
    shapes = [s for s, _ in HELD_OUT]
    colours = [c for _, c in HELD_OUT]
    assert sorted(shapes) == list(range(len(SHAPES)))  # one per shape
    assert len(set(colours)) == len(colours)  # each colour at most once
    assert len(HELD_OUT) / (len(SHAPES) * len(COLOURS)) == pytest.approx(1 / 8)


def test_held_out_pairs_never_in_train_and_half_of_test():
    train = Shapes("train", num_samples=TRAIN_SCENES)
    seen = collections.Counter()
    for i in range(TRAIN_SCENES):
        scene = train.scene(i)
        for obj in scene.objects:
            assert (obj.shape, obj.colour) not in HELD_OUT
        seen[scene.main.shape, scene.main.colour] += 1
    assert {s for s, _ in seen} == set(range(len(SHAPES)))
    assert {c for _, c in seen} == set(range(len(COLOURS)))
    assert len(seen) == len(SHAPES) * len(COLOURS) - len(HELD_OUT)  # every seen pair occurs
    val = Shapes("val", num_samples=300)
    assert not any(val.scene(i).held_out for i in range(300))
    test = Shapes("test", num_samples=400)
    held = [test.scene(i) for i in range(400)]
    held = [s for s in held if s.held_out]
    assert 0.4 < len(held) / 400 < 0.6
    assert {(s.main.shape, s.main.colour) for s in held} == HELD_OUT
    for i in range(20):
        r = test[i]
        assert r["held_out"] == ((r["shape"], r["colour"]) in HELD_OUT)
        assert all((o.shape, o.colour) not in HELD_OUT for o in test.scene(i).objects[1:])


def test_held_out_mask_reads_the_record_keys():
    config = ShapesConfig(image_size=32, seed=3)
    test = Shapes("test", num_samples=40, config=config)
    keys = [test[i]["key"] for i in range(40)][::-1]
    expected = [test[i]["held_out"] for i in range(40)][::-1]
    assert held_out_mask(keys, config=config).tolist() == expected
    assert 0 < sum(expected) < 40
    assert not held_out_mask([Shapes("val")[3]["key"]]).any()
    with pytest.raises(ValueError, match="not a shapes record key"):
        held_out_mask(["shard-00001/000012"])


def test_captions_are_true_distinct_and_varied():
    source = Shapes("train", num_samples=200, config=ShapesConfig(num_captions=8))
    shape_words = [w for words in SHAPE_WORDS for w in words]
    size_words = [w for words in SIZE_WORDS for w in words]
    primaries = set()
    for i in range(200):
        scene, r = source.scene(i), source[i]
        main, second = scene.main, scene.second
        objects = scene.objects
        assert len(set(r["captions"])) == 8
        for text in r["captions"]:
            assert COLOURS[main.colour] in text and mentions(text, SHAPE_WORDS[main.shape])
            # no colour, shape or size word that belongs to no object in the image
            for c, name in enumerate(COLOURS):
                assert not mentions(text, [name]) or c in [o.colour for o in objects], text
            for s, words in enumerate(SHAPE_WORDS):
                assert not mentions(text, words) or s in [o.shape for o in objects], text
            for z, words in enumerate(SIZE_WORDS):
                assert not mentions(text, words) or z in [o.size for o in objects], text
            assert not re.search(r"\ba [aeiou]", text, flags=re.I), text  # "an orange"
            if second is not None:
                assert COLOURS[second.colour] in text and mentions(text, SHAPE_WORDS[second.shape])
        # the primary caption is a full description: size and place too
        text = r["text"]
        assert mentions(text.lower(), SIZE_WORDS[main.size])
        assert (POSITIONS[main.position].capitalize() + ":" in text
                or mentions(text.lower(), WHERE_PHRASES[main.position]))
        primaries.add(re.sub("|".join(map(re.escape, shape_words + size_words + list(COLOURS))),
                             "_", text))
    assert len(primaries) > 30  # many wordings, not one sentence with words swapped in


def test_second_object_rate_size_and_placement():
    source = Shapes("train", num_samples=1200, config=ShapesConfig(image_size=(48, 96)))
    scenes = [source.scene(i) for i in range(1200)]
    with_second = [s for s in scenes if s.second is not None]
    assert 0.2 < len(with_second) / len(scenes) < 0.3
    for s in with_second:
        assert s.main.size != 0 and s.second.size == 0
        assert s.second.shape != s.main.shape and s.second.colour != s.main.colour
        assert s.second.position != s.main.position
        overlap = coverage(s.main, 48, 96) * coverage(s.second, 48, 96)
        assert not overlap.any()
    assert 0 in {s.main.size for s in scenes if s.second is None}
    for p, expected in [(0.0, 0), (1.0, 50)]:
        config = ShapesConfig(second_object_prob=p)
        assert sum(Shapes(num_samples=50, config=config).scene(i).second is not None
                   for i in range(50)) == expected


def test_drawn_objects_have_their_colour_place_and_size():
    config = ShapesConfig(second_object_prob=0.5)
    source = Shapes("test", num_samples=120, config=config)
    tolerance = config.colour_jitter + 6  # jitter plus what is left of the noise in a mean
    area = collections.defaultdict(list)
    for i in range(120):
        scene, image = source.scene(i), source[i]["image"].astype(np.float32)
        masks = [coverage(o, 64, 64) for o in scene.objects]
        for obj, mask in zip(scene.objects, masks):
            inside = mask > 0.999
            assert inside.sum() >= 16
            assert np.abs(image[inside].mean(0) - COLOUR_RGB[COLOURS[obj.colour]]).max() < tolerance
            ys, xs = np.nonzero(inside)
            row, col = divmod(obj.position, 3)  # the object's middle lies in its grid cell
            assert row == int(ys.mean() * 3 // 64) and col == int(xs.mean() * 3 // 64)
        area[scene.main.shape, scene.main.size].append(masks[0].sum())
        background = sum(masks) == 0
        assert abs(image[background].mean() - scene.background) < 3
        assert 4 < image[background].std() < 12  # the per-pixel noise (std 8)
    for shape in range(len(SHAPES)):
        small, medium, large = (np.mean(area[shape, z]) for z in range(3))
        assert small < medium < large


def test_shapes_are_distinct_at_32_pixels():
    # a medium object in the middle of a 32 px image: any two shapes differ on many pixels
    masks = [coverage(ShapeObject(s, 0, 1, 4, (16.0, 16.0), 0.18 * 32, (0, 0, 0)), 32, 32)
             for s in range(len(SHAPES))]
    for a in range(len(SHAPES)):
        assert masks[a].sum() > 25
        for b in range(a):
            assert np.abs(masks[a] - masks[b]).sum() > 12, (SHAPES[a], SHAPES[b])


def test_every_pair_of_colours_is_visible_on_its_background():
    # scenes with two objects of every colour pair: both differ clearly from the background
    source = Shapes("test", num_samples=400, config=ShapesConfig(second_object_prob=1.0))
    pairs = set()
    for i in range(400):
        scene = source.scene(i)
        for obj in scene.objects:
            rgb = COLOUR_RGB[COLOURS[obj.colour]]
            assert np.linalg.norm(np.subtract(rgb, scene.background)) >= 120
        pairs.add((scene.main.colour, scene.second.colour))
    assert len(pairs) > 40


def test_noise_free_drawing_is_exact_away_from_edges():
    scene = Shapes(config=ShapesConfig(noise=0.0)).scene(0)
    image = draw(scene, 0.0)
    mask = coverage(scene.main, 64, 64)
    assert (image[mask == 1] == scene.main.rgb).all()
    assert (image[mask == 0] == scene.background).all()


@pytest.mark.parametrize("task", ["shape", "colour", "shape_colour"])
def test_zeroshot_labels_index_their_classnames(task):
    classnames, templates, key = zeroshot_task(task)
    assert len(set(classnames)) == len(classnames) and len(templates) >= 6
    assert all(t.count("{}") == 1 for t in templates)
    source = Shapes("test", num_samples=40)
    for i in range(40):
        r = source[i]
        name = classnames[label(r, task)]
        assert r[key] == label(r, task)
        if task != "colour":
            assert name.endswith(SHAPES[r["shape"]])
        if task != "shape":
            assert name.startswith(COLOURS[r["colour"]])
    assert zeroshot_task()[0] == list(SHAPES)


def test_captions_corpus_covers_the_vocabulary():
    corpus = captions_corpus(20)
    words = set(" ".join(corpus).replace(",", " ").replace(":", " ").lower().split())
    vocabulary = set(" ".join(CAPTION_TEMPLATES).replace(",", " ").replace(":", " ").split())
    vocabulary = {w for w in vocabulary if "{" not in w}
    for group in (COLOURS, *SHAPE_WORDS, *SIZE_WORDS, *WHERE_PHRASES):
        vocabulary |= set(" ".join(group).split())
    for name in ("shape", "colour", "shape_colour"):
        classnames, templates, _ = zeroshot_task(name)
        vocabulary |= set(" ".join(t.format(c) for t in templates for c in classnames).split())
    assert vocabulary - words == set()
    source = Shapes("train", num_samples=20)
    assert all(c in corpus for i in range(20) for c in source[i]["captions"])


def test_bad_inputs_raise_naming_the_choices():
    with pytest.raises(ValueError, match="'train', 'val', 'test'"):
        Shapes("validation")
    with pytest.raises(ValueError, match="shape_colour"):
        zeroshot_task("size")
    for size in (8, (0, 64), (64, 15)):
        with pytest.raises(ValueError, match="image_size"):
            ShapesConfig(image_size=size)
    with pytest.raises(ValueError, match="num_captions"):
        ShapesConfig(num_captions=len(CAPTION_TEMPLATES) + 1)
    with pytest.raises(ValueError, match="second_object_prob"):
        ShapesConfig(second_object_prob=1.5)
    with pytest.raises(ValueError, match="num_samples"):
        Shapes("test", num_samples=-1)
