"""The Unifont glyph table: parsing, 8- and 16-wide glyphs, missing code points, font lookup."""

import numpy as np
import pytest

from eqvlp.render import load_unifont, render_text
from eqvlp.render.unifont import build_table, parse_hex, resolve_paths

# 'A' as an 8x16 glyph, U+4E00 as a 16x16 glyph (a horizontal bar in row 8), U+1F600 (upper plane).
A_HEX = "0041:0000000018242442427E424242420000\n"
BAR_HEX = "4E00:" + "0000" * 8 + "7FFE" + "0000" * 7 + "\n"
UPPER_HEX = "01F600:" + "0000" * 4 + "0FF0" * 8 + "0000" * 4 + "\n"


def table(*texts: str):
    parts = [parse_hex(t.encode(), f"file{i}") for i, t in enumerate(texts)]
    return build_table(parts, tuple(f"file{i}" for i in range(len(texts))))


def test_eight_wide_glyph_fills_the_left_columns():
    font = table(A_HEX)
    bitmap = font.bitmap("A")
    assert bitmap.shape == (16, 16)
    assert not bitmap[:, 8:].any()  # the right half of the cell is empty
    assert list(bitmap[4, :8]) == [0, 0, 0, 1, 1, 0, 0, 0]  # 0x18, MSB = column 0
    assert list(bitmap[9, :8]) == [0, 1, 1, 1, 1, 1, 1, 0]  # 0x7E
    index = font.index[ord("A")]
    assert not font.wide[index]
    assert (font.first_ink[index], font.last_ink[index]) == (1, 6)


def test_sixteen_wide_glyph_uses_the_whole_cell():
    font = table(BAR_HEX)
    bitmap = font.bitmap(0x4E00)
    assert bitmap[8].tolist() == [False] + [True] * 14 + [False]
    assert bitmap.sum() == 14
    index = font.index[0x4E00]
    assert font.wide[index]
    assert (font.first_ink[index], font.last_ink[index]) == (1, 14)


def test_missing_code_points_are_blank():
    font = table(A_HEX)
    assert "B" not in font and "A" in font
    assert font.index[ord("B")] == 0
    assert not font.bitmap("B").any()
    assert not font.bitmap(0x10FFFF).any()
    assert font.num_glyphs == 1


def test_later_entries_win_and_upper_plane_files_merge():
    other_a = "0041:" + "FF" * 16 + "\n"
    font = table(A_HEX + other_a, UPPER_HEX)
    assert font.bitmap("A").sum() == 16 * 8
    assert font.bitmap(0x1F600).sum() == 8 * 8
    assert font.num_glyphs == 2


def test_crlf_and_blank_lines_are_tolerated():
    font = table(A_HEX.replace("\n", "\r\n") + "\r\n\n" + BAR_HEX.rstrip("\n"))
    assert font.num_glyphs == 2 and "A" in font and chr(0x4E00) in font


@pytest.mark.parametrize(
    "text, match",
    [("0041 0000\n", "CODEPOINT:HEXBITS"), ("0041:00FF\n", "32 \\(8x16\\) or 64"),
     ("0041:" + "G" * 32 + "\n", "not a hex digit"), ("zz:" + "0" * 32 + "\n", "CODEPOINT")],
)
def test_malformed_files_name_the_problem(text, match):
    with pytest.raises(ValueError, match=match):
        parse_hex(text.encode(), "bad.hex")


def test_default_font_is_debians_unifont_and_cached():
    font = load_unifont()
    assert font.paths[0] == resolve_paths()[0]  # $EQVLP_UNIFONT, else DEFAULT_PATH
    assert font.num_glyphs > 50_000  # Debian's unifont 15.0 has 57,086
    assert load_unifont() is font  # parsed once per process
    # 8-wide Latin, 16-wide CJK, control characters drawn as boxed pictures
    assert not font.wide[font.index[ord("a")]] and font.wide[font.index[ord("中")]]
    assert font.bitmap("\n").any() and font.bitmap("\x00").any()
    assert not font.bitmap(" ").any()


def test_missing_font_names_both_fixes(tmp_path, monkeypatch):
    monkeypatch.setenv("EQVLP_UNIFONT", str(tmp_path / "nope.hex"))
    with pytest.raises(FileNotFoundError, match="apt-get install unifont") as info:
        load_unifont()
    assert "EQVLP_UNIFONT" in str(info.value) and "nope.hex" in str(info.value)


def test_environment_variables_choose_the_files(tmp_path, monkeypatch):
    plane0, upper = tmp_path / "plane0.hex", tmp_path / "upper.hex"
    plane0.write_text(A_HEX)
    upper.write_text(UPPER_HEX)
    monkeypatch.setenv("EQVLP_UNIFONT", str(plane0))
    monkeypatch.setenv("EQVLP_UNIFONT_UPPER", str(upper))
    assert resolve_paths() == (str(plane0), str(upper))
    font = load_unifont()
    assert font.paths == (str(plane0), str(upper)) and font.num_glyphs == 2


def test_upper_plane_characters_render_only_with_the_upper_file(tmp_path):
    upper = tmp_path / "upper.hex"
    upper.write_text(UPPER_HEX)
    plain = load_unifont()
    with_upper = load_unifont(upper=upper)
    assert with_upper.num_glyphs == plain.num_glyphs + 1
    emoji = "a\U0001F600b"
    # without the upper file the emoji is a blank 4-px glyph, exactly like a space
    assert np.array_equal(render_text(emoji, font=plain), render_text("a b", font=plain))
    drawn = render_text(emoji, font=with_upper)
    assert not np.array_equal(drawn, render_text("a b", font=with_upper))
    assert (drawn[..., 0] == 0).sum() == (render_text("ab", font=plain)[..., 0] == 0).sum() + 64
