"""Image decode, crops and normalisation; EDA caption augmentation."""

import io
import math
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from eqvlp.data.text_augment import STOP_WORDS, SYNONYMS, TextAugment, augment_text
from eqvlp.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    ImageAugment,
    augment_image,
    colour_jitter,
    decode_image,
    eval_image,
    normalization,
    normalize_images,
    random_resized_crop,
    sample_crop_box,
    to_pil,
)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def smooth_rgb(height: int, width: int) -> np.ndarray:
    """A smooth gradient, which lossy codecs keep close to the original."""
    y, x = np.mgrid[0:height, 0:width]
    red, green = x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1)
    return np.stack([red, green, (x + y) * 127 // (height + width)], axis=-1).astype(np.uint8)


def coordinates(height: int, width: int) -> np.ndarray:
    """Red = column, green = row (both < 256): each pixel says where it came from."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x, y, np.zeros_like(x)], axis=-1).astype(np.uint8)


# ----------------------------------------------------------------------------- decode


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_decode_rgb_formats(fmt):
    pixels = smooth_rgb(24, 40)
    options = {"lossless": True} if fmt == "WEBP" else {"quality": 95} if fmt == "JPEG" else {}
    image = decode_image(encode(Image.fromarray(pixels), fmt, **options))
    assert image.mode == "RGB" and image.size == (40, 24)
    error = np.abs(np.asarray(image).astype(np.int32) - pixels).max()
    assert error <= (12 if fmt == "JPEG" else 0)


def test_decode_converts_gray_palette_alpha_and_16_bit():
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    out = np.asarray(decode_image(encode(Image.fromarray(gray), "PNG")))
    assert out.shape == (6, 8, 3) and np.array_equal(out, np.repeat(gray[..., None], 3, -1))

    gray_jpeg = decode_image(encode(Image.fromarray(gray), "JPEG", quality=95), target=4)
    assert gray_jpeg.mode == "RGB" and gray_jpeg.size == (8, 6)

    sixteen = gray.astype(np.uint16) * 256 + 255  # top 8 bits are `gray`
    out = np.asarray(decode_image(encode(Image.fromarray(sixteen), "PNG")))
    assert np.array_equal(out[..., 0], gray)

    # RGBA: opaque pixels stay, transparent ones become white, half-transparent blend
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)
    rgba[0, 1] = (0, 0, 0, 0)
    rgba[1, :] = (0, 0, 0, 128)
    out = np.asarray(decode_image(encode(Image.fromarray(rgba), "PNG")))
    assert out[0, 0].tolist() == [10, 20, 30] and out[0, 1].tolist() == [255, 255, 255]
    assert np.all(np.abs(out[1].astype(np.int32) - 127) <= 1)

    la = Image.fromarray(rgba).convert("LA")
    assert np.asarray(decode_image(encode(la, "PNG")))[0, 1].tolist() == [255, 255, 255]

    palette = Image.fromarray(smooth_rgb(8, 8)).convert("P", palette=Image.Palette.ADAPTIVE)
    out = decode_image(encode(palette, "PNG"))
    assert out.mode == "RGB"
    assert np.array_equal(np.asarray(out), np.asarray(palette.convert("RGB")))
    see_through = int(np.asarray(palette)[0, 0])  # pixel (0, 0)'s palette index
    out = np.asarray(decode_image(encode(palette, "PNG", transparency=see_through)))
    assert out[0, 0].tolist() == [255, 255, 255]

    cmyk = Image.fromarray(smooth_rgb(8, 8)).convert("CMYK")
    assert decode_image(encode(cmyk, "JPEG")).mode == "RGB"


def test_decode_uses_jpeg_draft_mode_and_stays_above_target():
    data = encode(Image.fromarray(smooth_rgb(480, 640)), "JPEG", quality=90)
    assert decode_image(data).size == (640, 480)
    # 640 // 72 = 8 and 480 // 56 = 8: 1/8 scale would give 80 x 60, still >= (56, 72)
    assert decode_image(data, target=(56, 72)).size == (80, 60)
    # 640 // 150 = 4 but 480 // 150 = 3: only 1/2 keeps both sides >= 150
    image = decode_image(data, target=150)
    assert image.size == (320, 240) and image.mode == "RGB"
    # no reduction when the image is less than twice the target
    assert decode_image(data, target=(300, 300)).size == (640, 480)
    out = augment_image(image, (150, 140), ImageAugment(), np.random.default_rng(0))
    assert out.shape == (150, 140, 3) and out.dtype == np.uint8
    assert eval_image(image, 150).shape == (150, 150, 3)


def test_corrupt_data_raises_value_error():
    data = encode(Image.fromarray(smooth_rgb(64, 64)), "JPEG", quality=90)
    for bad in [data[: len(data) // 2], np.random.default_rng(0).bytes(500), b""]:
        with pytest.raises(ValueError, match="corrupt image"):
            decode_image(bad, target=32)
    png = encode(Image.fromarray(smooth_rgb(64, 64)), "PNG")
    with pytest.raises(ValueError, match="corrupt image"):
        decode_image(png[:-40])


def test_decompression_bomb_is_corrupt(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # error above twice this
    data = encode(Image.fromarray(smooth_rgb(16, 16)), "PNG")
    with pytest.raises(ValueError, match="corrupt image: DecompressionBombError"):
        decode_image(data)


# ------------------------------------------------------------------------------ crops


def test_crop_box_statistics_match_scale_and_ratio():
    rng = np.random.default_rng(0)
    # on a 360 x 360 image every sampled box fits, so the draws are not truncated
    scale, ratio = (0.25, 0.75), (3 / 4, 4 / 3)
    boxes = np.array([sample_crop_box(360, 360, scale, ratio, rng) for _ in range(2000)])
    left, top, right, bottom = boxes.T
    assert left.min() >= 0 and top.min() >= 0 and right.max() <= 360 and bottom.max() <= 360
    w, h = right - left, bottom - top
    area = w * h / 360**2
    tolerance = 0.01  # the box is rounded to whole pixels
    assert area.min() >= scale[0] - tolerance and area.max() <= scale[1] + tolerance
    assert abs(area.mean() - 0.5) < 0.01  # uniform in the scale range
    aspect = np.log(w / h)
    assert aspect.min() >= math.log(ratio[0]) - tolerance
    assert aspect.max() <= math.log(ratio[1]) + tolerance
    assert abs(aspect.mean()) < 0.02  # log-uniform, symmetric around 0
    # the position is uniform over the free range, on both axes
    assert left.min() == 0 and top.min() == 0 and right.max() == 360 and bottom.max() == 360
    assert abs(np.mean((left + right) / 2) - 180) < 3 and abs(np.mean((top + bottom) / 2) - 180) < 3


class _Highest(np.random.Generator):
    """A generator whose uniform draws are always the top of the range."""

    def __init__(self):
        super().__init__(np.random.PCG64(0))
        self.calls = 0

    def uniform(self, low, high):
        self.calls += 1
        return high


def test_crop_box_fallback_is_central_and_clamps_the_ratio():
    rng = np.random.default_rng(0)
    # a 1000 x 10 strip fits no crop of ratio <= 4/3 with >= 90% of the area
    assert sample_crop_box(1000, 10, (0.9, 1.0), (3 / 4, 4 / 3), rng) == (493, 0, 506, 10)
    assert sample_crop_box(10, 1000, (0.9, 1.0), (3 / 4, 4 / 3), rng) == (0, 493, 10, 506)
    # 30 x 20 is wider than ratio 2..3 allows at full area: full width, height 30 / 2
    assert sample_crop_box(30, 20, (1.0, 1.0), (2.0, 3.0), rng) == (0, 2, 30, 17)
    # an aspect ratio inside the range: after 10 failed tries, the whole image
    stub = _Highest()
    assert sample_crop_box(30, 20, (1.0, 1.0), (1.0, 2.0), stub) == (0, 0, 30, 20)
    assert stub.calls == 20


def test_random_resized_crop_takes_the_sampled_box():
    image = to_pil(coordinates(200, 240))
    size = (40, 48)  # a 5x downscale of the whole image
    crop = random_resized_crop(image, size, scale=(1.0, 1.0), ratio=(1.2, 1.2),
                               rng=np.random.default_rng(0))
    assert crop.shape == (40, 48, 3)
    out = np.asarray(crop).astype(np.int32)
    # pixel (i, j) comes from around (5 i + 2, 5 j + 2) in the source
    assert np.abs(out[..., 0] - (5 * np.arange(48) + 2)[None]).max() <= 2
    assert np.abs(out[..., 1] - (5 * np.arange(40) + 2)[:, None]).max() <= 2

    rng = np.random.default_rng(3)
    box = sample_crop_box(240, 200, (0.3, 0.5), (3 / 4, 4 / 3), np.random.default_rng(3))
    out = np.asarray(random_resized_crop(image, 16, scale=(0.3, 0.5), ratio=(3 / 4, 4 / 3),
                                         rng=rng)).astype(np.int32)
    left, top, right, bottom = box
    assert out.shape == (16, 16, 3)
    assert left <= out[..., 0].min() and out[..., 0].max() < right
    assert top <= out[..., 1].min() and out[..., 1].max() < bottom


def test_augment_image_is_deterministic_given_rng_and_flips():
    image = to_pil(smooth_rgb(64, 80))
    augment = ImageAugment(scale=(0.5, 1.0), flip=True, colour_jitter=0.4)
    views = [augment_image(image, 32, augment, np.random.default_rng(s)) for s in range(8)]
    again = [augment_image(image, 32, augment, np.random.default_rng(s)) for s in range(8)]
    assert all(np.array_equal(a, b) for a, b in zip(views, again))
    assert len({v.tobytes() for v in views}) == 8
    assert all(v.shape == (32, 32, 3) and v.dtype == np.uint8 for v in views)

    # with the whole image kept, a flipped view is the mirror of an unflipped one
    whole = ImageAugment(scale=(1.0, 1.0), ratio=(1.25, 1.25), flip=True)
    views = {augment_image(image, (16, 20), whole, np.random.default_rng(s)).tobytes()
             for s in range(16)}
    plain = augment_image(image, (16, 20), ImageAugment(scale=(1.0, 1.0), ratio=(1.25, 1.25)),
                          np.random.default_rng(0))
    assert views == {plain.tobytes(), np.ascontiguousarray(plain[:, ::-1]).tobytes()}


def test_colour_jitter():
    rng = np.random.default_rng(0)
    image = smooth_rgb(16, 16)
    assert np.array_equal(colour_jitter(image, 0.0, rng), image)  # all factors are 1
    jittered = colour_jitter(image, 0.5, np.random.default_rng(1))
    assert jittered.dtype == np.uint8 and jittered.shape == image.shape
    assert not np.array_equal(jittered, image)
    # full desaturation (saturation factor 0 is allowed at strength 1) leaves gray intact
    gray = np.repeat(np.arange(256, dtype=np.uint8).reshape(16, 16, 1), 3, -1)
    out = colour_jitter(gray, 1.0, np.random.default_rng(2))
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


def test_eval_image_takes_the_centre():
    pattern = coordinates(100, 160)
    # square: shorter side 100 -> 100, then the middle 100 columns (30..129)
    out = eval_image(to_pil(pattern), 100)
    assert out.shape == (100, 100, 3)
    assert np.array_equal(out, pattern[:, 30:130])
    # non-square: 100 x 160 already covers (80, 60) by scale 0.8 -> 128 x 80, centre crop
    out = eval_image(to_pil(pattern), (80, 60)).astype(np.int32)
    assert out.shape == (80, 60, 3)
    assert np.abs(out[..., 0] - (np.arange(60) + 34) / 0.8 - 0.125).max() < 2.5
    assert np.abs(out[..., 1] - np.arange(80)[:, None] / 0.8 - 0.125).max() < 2.5
    # a tall image shrinks to width 50 and keeps the middle rows
    tall = to_pil(coordinates(200, 100))
    out = eval_image(tall, 50).astype(np.int32)
    centre_rows = out[:, 25, 1]
    assert abs(centre_rows.mean() - 99.5) < 1.0 and out.shape == (50, 50, 3)


def test_to_pil_round_trip_and_errors():
    pixels = smooth_rgb(5, 7)
    assert np.array_equal(np.asarray(to_pil(pixels)), pixels)
    with pytest.raises(ValueError, match="uint8"):
        to_pil(pixels.astype(np.float32))


def test_configs_are_validated_and_picklable():
    for bad in [dict(scale=(0.0, 1.0)), dict(scale=(0.9, 0.5)), dict(scale=(0.5, 1.5)),
                dict(ratio=(4 / 3, 3 / 4)), dict(ratio=(0.0, 1.0)),
                dict(colour_jitter=-0.1), dict(colour_jitter=float("nan"))]:
        with pytest.raises(ValueError, match="ImageAugment"):
            ImageAugment(**bad)
    for bad in [dict(delete=1.5), dict(swap=-0.1), dict(stopword=float("nan")),
                dict(synonym=2.0)]:
        with pytest.raises(ValueError, match="TextAugment"):
            TextAugment(**bad)
    augment = ImageAugment(scale=(0.5, 1.0), flip=True, colour_jitter=0.2)
    assert hash(augment) == hash(ImageAugment(scale=(0.5, 1.0), flip=True, colour_jitter=0.2))
    assert pickle.loads(pickle.dumps(augment)) == augment
    assert pickle.loads(pickle.dumps(TextAugment())) == TextAugment()
    assert pickle.loads(pickle.dumps(augment_image)) is augment_image


# ------------------------------------------------------------------------ normalise


def test_normalize_images_exact_values_and_under_jit():
    assert normalization("minus_one_one") == normalization("signed")
    assert normalization("clip") == (CLIP_MEAN, CLIP_STD)
    with pytest.raises(ValueError, match="unknown normalisation 'imagenet'"):
        normalization("imagenet")

    images = jnp.asarray(np.arange(256, dtype=np.uint8).reshape(2, 8, 16, 1).repeat(3, -1))
    signed = jax.jit(lambda x: normalize_images(x, *normalization("signed")))(images)
    assert signed.dtype == jnp.float32 and signed.shape == (2, 8, 16, 3)
    signed = np.asarray(signed).reshape(-1, 3)
    assert signed[0].tolist() == [-1.0, -1.0, -1.0] and signed[-1].tolist() == [1.0, 1.0, 1.0]
    np.testing.assert_allclose(signed[:, 0], np.arange(256) / 127.5 - 1, atol=1e-6)

    clip = np.asarray(normalize_images(images[0, :1]))[0]  # eager, one row of pixels
    expected = (np.arange(16)[:, None] / 255 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    np.testing.assert_allclose(clip, expected, atol=1e-6)
    half = normalize_images(images[0, :1], dtype=jnp.bfloat16)[0]
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(half, np.float32), expected, rtol=1e-2, atol=1e-2)


# ------------------------------------------------------------------------------ text

CAPTION = "A big dog and a small cat sitting on the grass near a round table, in a photo."
ALL_OFF = TextAugment(delete=0.0, swap=0.0, stopword=0.0, synonym=0.0)


def test_text_zero_probabilities_and_blank_text_are_the_identity():
    odd = "  Two  spaces\tand a tab "
    for text in [CAPTION, odd]:
        assert augment_text(text, ALL_OFF, np.random.default_rng(0)) == text
    for text in ["", "   ", "\n"]:
        assert augment_text(text, TextAugment(), np.random.default_rng(0)) == text


def test_text_augmentation_is_deterministic_given_rng():
    augment = TextAugment(delete=0.2, swap=0.2, stopword=0.3, synonym=0.5)
    views = [augment_text(CAPTION, augment, np.random.default_rng(s)) for s in range(20)]
    assert views == [augment_text(CAPTION, augment, np.random.default_rng(s)) for s in range(20)]
    assert len(set(views)) > 10


def test_deletion_never_empties_and_removes_a_fraction():
    rng = np.random.default_rng(0)
    for text in ["dog", "a dog", CAPTION]:
        for _ in range(50):
            out = augment_text(text, TextAugment(delete=1.0, swap=0.0, synonym=0.0), rng)
            assert len(out.split()) == 1 and out in text.split()
    kept = [len(augment_text(CAPTION, TextAugment(delete=0.25, swap=0.0, synonym=0.0),
                             rng).split()) for _ in range(400)]
    words = len(CAPTION.split())
    assert abs(np.mean(kept) / words - 0.75) < 0.03
    # every output is a subsequence of the caption
    out = augment_text(CAPTION, TextAugment(delete=0.5, swap=0.0, synonym=0.0), rng).split()
    it = iter(CAPTION.split())
    assert all(word in it for word in out)


def test_swaps_keep_the_multiset_of_words():
    rng = np.random.default_rng(0)
    augment = TextAugment(delete=0.0, swap=0.3, synonym=0.0)
    outs = [augment_text(CAPTION, augment, rng) for _ in range(50)]
    assert all(sorted(o.split()) == sorted(CAPTION.split()) for o in outs)
    assert sum(o != CAPTION for o in outs) > 40
    assert augment_text("one", TextAugment(delete=0.0, swap=1.0), rng) == "one"


def test_synonyms_come_from_the_table_and_keep_case_and_punctuation():
    rng = np.random.default_rng(0)
    augment = TextAugment(delete=0.0, swap=0.0, synonym=1.0)
    original = CAPTION.split()
    for _ in range(30):
        out = augment_text(CAPTION, augment, rng).split()
        assert len(out) == len(original)
        for before, after in zip(original, out):
            core = before.strip(",.").lower()
            if core in SYNONYMS:
                assert after.strip(",.").lower() in SYNONYMS[core]
                assert after[-1] == before[-1] if not before[-1].isalpha() else after[-1].isalpha()
            else:
                assert after == before
    assert augment_text("Big, BIG photo.", augment, np.random.default_rng(1)).split()[:2] in (
        [a, b] for a in ("Large,", "Huge,") for b in ("LARGE", "HUGE")
    )
    # the table is symmetric: a synonym's synonyms include the word
    assert all(word in SYNONYMS[other] for word, others in SYNONYMS.items() for other in others)


def test_stopword_removal():
    rng = np.random.default_rng(0)
    augment = TextAugment(delete=0.0, swap=0.0, stopword=1.0, synonym=0.0)
    out = augment_text(CAPTION, augment, rng)
    assert out == "big dog small cat sitting grass near round table, photo."
    assert augment_text("the of a", augment, rng) in ("the", "of", "a")
    assert not STOP_WORDS & set(out.lower().split())
