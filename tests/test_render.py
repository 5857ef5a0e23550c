"""render_text: big_vision's observed renders, layout properties, equality with the reference."""

import dataclasses
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eqvlp.cli import main
from eqvlp.render import (
    RenderConfig,
    encode_png,
    load_unifont,
    render_text,
    render_text_reference,
    write_png,
)

BG, INK = 127, 0


def ink(image: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels drawn in the default ink colour."""
    assert np.array_equal(image[..., 0], image[..., 1])
    assert np.array_equal(image[..., 0], image[..., 2])
    return image[..., 0] == INK


def ink_columns(image: np.ndarray, line: int) -> np.ndarray:
    return np.flatnonzero(ink(image)[16 * line : 16 * (line + 1)].any(axis=0))


# --- what big_vision's own op draws with Debian's unifont 15.0 (REFERENCE.md section 1) ---


def test_a_photo_of_a_cat_matches_big_vision():
    image = render_text("a photo of a cat.")
    assert image.shape == (224, 224, 3) and image.dtype == np.uint8
    assert set(np.unique(image)) == {INK, BG}
    rows, cols = np.nonzero(ink(image))
    assert len(rows) == 241
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (3, 15, 1, 99)


def test_upper_case_renders_like_lower_case():
    assert np.array_equal(render_text("A Photo Of A Cat."), render_text("a photo of a cat."))


@pytest.mark.parametrize("text", ["", " ", "   "])
def test_empty_and_blank_text_give_the_background(text):
    assert np.all(render_text(text) == BG)


def test_long_runs_wrap_per_character_with_a_seven_pixel_advance():
    image = render_text("x" * 100)
    # 'x' is 6 ink columns plus one blank column on its left: 7 px per glyph, and
    # div = 224 - 7 = 217 puts glyph i (1-based) on line floor(7 i / 217).
    counts = [len(ink_columns(image, line)) // 6 for line in range(5)]
    assert counts == [30, 31, 31, 8, 0]
    first = ink_columns(image, 1)
    assert first[0] == 1 and np.all(np.diff(first.reshape(-1, 6)[:, 0]) == 7)


def test_i_l_space_i_layout():
    cols = ink_columns(render_text("il i"), 0)
    assert cols.tolist() == [1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 17, 18, 19, 20, 21]  # space: 4 px


# --- properties ---


@settings(max_examples=25, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz .,!?0123456789", max_size=60))
def test_lower_casing_makes_ascii_case_irrelevant(text):
    upper, lower = render_text([text.upper(), text], image_size=64)
    assert np.array_equal(upper, lower)


def test_only_ascii_letters_are_lower_cased():
    # tf.strings.lower without an encoding leaves non-ASCII letters alone
    assert not np.array_equal(render_text("É"), render_text("é"))
    assert not np.array_equal(render_text("A", lower=False), render_text("a", lower=False))


@pytest.mark.parametrize("n", [1, 31, 62, 93, 200, 400, 434])
def test_number_of_lines_of_long_strings(n):
    image = render_text("x" * n)
    lines = sum(ink(image)[16 * i : 16 * (i + 1)].any() for i in range(14))
    assert lines == min(7 * n // 217 + 1, 14)  # 14 lines fit into 224 rows


def test_text_beyond_the_image_is_cropped():
    image = render_text("x" * 768)  # 25 lines of text, 14 fit into 224 rows
    assert ink(image)[208:].any()
    cropped = render_text("x" * 768, image_size=(40, 224))  # 2.5 lines
    assert cropped.shape == (40, 224, 3)
    assert np.array_equal(cropped, render_text("x" * 768)[:40])


def test_max_chars_truncates():
    tall = (512, 224)  # 32 lines: 768 x's fill 25 of them, 800 x's 26
    x800, x768 = render_text(["x" * 800, "x" * 768], image_size=tall)
    assert np.array_equal(x800, x768)
    assert not np.array_equal(render_text("x" * 800, image_size=tall, max_chars=None), x768)
    assert np.array_equal(render_text("hello world", max_chars=5), render_text("hello"))


def test_control_characters_are_glyphs_not_line_breaks():
    image = render_text("a\nb\tc")
    assert ink(image)[:16].sum() > ink(render_text("abc"))[:16].sum()  # boxed control pictures
    assert not ink(image)[16:].any()


def test_batches_strings_and_shapes():
    batch = render_text(["one", "two", ""], image_size=(48, 100))
    assert batch.shape == (3, 48, 100, 3)
    assert np.array_equal(batch[1], render_text("two", image_size=(48, 100)))
    assert render_text([], image_size=32).shape == (0, 32, 32, 3)
    assert np.array_equal(render_text(b"caf\xc3\xa9"), render_text("café"))


def test_brightness_and_monospace():
    image = render_text("hi", background_brightness=255, text_brightness=40)
    assert set(np.unique(image)) == {40, 255}
    # monospace: every glyph keeps its whole 16x16 cell, untrimmed
    mono, font = ink(render_text("il", monospace=True)), load_unifont()
    assert np.array_equal(mono[:16, :16], font.bitmap("i"))
    assert np.array_equal(mono[:16, 16:32], font.bitmap("l"))
    assert not mono[:, 32:].any() and not mono[16:].any()


def test_other_font_sizes_resize_glyphs():
    image = render_text("hello world " * 10, font_size=8, image_size=64)
    levels = np.unique(image)
    assert len(levels) > 2 and levels.min() >= INK and levels.max() == BG  # grey edges
    small = render_text("hi", font_size=8)
    assert np.all(small[8:] == BG)  # one 8-px line


def test_word_wrap_keeps_words_whole():
    text = "x" * 29 + " yyyy zz"
    char = render_text(text)
    word = render_text(text, wrap="word")
    # char wrap: 29 x + space + 1 y fill line 0 (7 * 31 + 4 > 217); word wrap moves "yyyy" down
    assert len(ink_columns(char, 0)) > len(ink_columns(word, 0)) == 29 * 6
    assert ink_columns(word, 1)[0] == 1  # the new line starts with the word, not a space
    assert np.array_equal(render_text("short text", wrap="word"), render_text("short text"))


def test_word_wrap_breaks_words_longer_than_a_line():
    image = render_text("x" * 40, wrap="word", image_size=(64, 100))
    assert ink(image)[16:32].any()


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(image_size=16), "width must exceed"), (dict(wrap="line"), "unknown wrap"),
     (dict(text_brightness=300), "0..255"), (dict(spacing=-1), "spacing"),
     (dict(font_size=0), "font_size")],
)
def test_invalid_options_name_the_fix(kwargs, match):
    # jaxtyping's signature check (a TypeError) may fire first on the Literal in the test suite
    with pytest.raises((ValueError, TypeError), match=match + "|Literal"):
        render_text("x", **kwargs)


def test_render_config_holds_the_options():
    cfg = RenderConfig(monospace=True, wrap="word")
    assert np.array_equal(render_text("ab cd", **dataclasses.asdict(cfg)),
                          render_text("ab cd", monospace=True, wrap="word"))


# --- the vectorised renderer against the one-string reference ---

ALPHABET = "abcXYZ019 .,:!?-'\n\té中語한😀\x00\u0301\u3000"
OPTIONS = [
    {}, dict(monospace=True), dict(spacing=0, min_width=0), dict(spacing=2, min_width=6),
    dict(max_chars=7), dict(lower=False), dict(wrap="word"), dict(font_size=8),
    dict(font_size=12, wrap="word"), dict(font_size=20),
    dict(text_brightness=250, background_brightness=3),
]


@settings(max_examples=60, deadline=None)
@given(
    texts=st.lists(st.text(alphabet=ALPHABET, max_size=50), min_size=1, max_size=3),
    options=st.sampled_from(OPTIONS),
    size=st.sampled_from([40, (37, 61), (64, 24), (20, 90)]),
)
def test_batched_renderer_equals_reference(texts, options, size):
    width = size if isinstance(size, int) else size[1]
    if width <= options.get("font_size", 16):
        return
    batch = render_text(texts, image_size=size, **options)
    for text, image in zip(texts, batch):
        expected = render_text_reference(text, image_size=size, **options)
        np.testing.assert_array_equal(image, expected)


def test_reference_facts_hold_for_the_reference_too():
    assert (ink(render_text_reference("a photo of a cat."))).sum() == 241


# --- PNG and the command line ---


def decode_png(data: bytes) -> tuple[tuple[int, int, int], bytes]:
    """(width, height, colour type) and the unfiltered scanlines of our encoder's output."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = np.frombuffer(data[pos : pos + 4], ">u4")
        kind, payload = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        crc = int(np.frombuffer(data[pos + 8 + length : pos + 12 + length], ">u4")[0])
        assert crc == zlib.crc32(kind + payload)
        chunks[kind] = payload
        pos += 12 + int(length)
    header = chunks[b"IHDR"]
    width, height = (int(x) for x in np.frombuffer(header[:8], ">u4"))
    return (width, height, header[9]), zlib.decompress(chunks[b"IDAT"])


@pytest.mark.parametrize("shape", [(5, 7, 3), (4, 6)])
def test_png_round_trip(shape):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    (width, height, colour), raw = decode_png(encode_png(image))
    assert (height, width) == shape[:2] and colour == (2 if len(shape) == 3 else 0)
    rows = np.frombuffer(raw, np.uint8).reshape(height, -1)
    assert np.all(rows[:, 0] == 0)  # filter type none
    assert np.array_equal(rows[:, 1:].reshape(shape), image)
    with pytest.raises(TypeError, match="uint8"):
        encode_png(image.astype(np.float32))


def test_cli_render_writes_the_png(tmp_path, capsys):
    out = tmp_path / "cat.png"
    assert main(["render", "A photo of a cat.", "-o", str(out), "--image-size", "32x128"]) == 0
    (width, height, _), raw = decode_png(out.read_bytes())
    image = np.frombuffer(raw, np.uint8).reshape(height, -1)[:, 1:].reshape(height, width, 3)
    assert np.array_equal(image, render_text("a photo of a cat.", image_size=(32, 128)))
    assert "32x128" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="width must exceed"):
        main(["render", "x", "-o", str(out), "--image-size", "8"])
    write_png(tmp_path / "grey.png", render_text("x", image_size=32)[..., 0])
    assert decode_png((tmp_path / "grey.png").read_bytes())[0] == (32, 32, 0)


def test_glyph_table_is_shared_with_the_renderer():
    assert load_unifont() is load_unifont()
