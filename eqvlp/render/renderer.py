"""CLIPPO's text renderer: strings to grey images of GNU Unifont glyphs, vectorised over a batch.

Reproduces big_vision's `render_unifont` op (`big_vision/pp/proj/clippo/pp_ops.py`) pixel for
pixel on the same font file:

1. Lower-case ASCII letters (`lower`), take code points, keep the first `max_chars`.
2. Look up each code point's 16x16 glyph; code points without one are blank. Control
   characters (newline, tab, ...) are drawn as Unifont's boxed control pictures.
3. Trim each glyph (unless `monospace`) to the columns `[first, last)`, where
   `first = max(first_ink - spacing, 0)` and `last = max(last_ink + spacing, first + min_width)`:
   one blank column on the left, none on the right, blank glyphs `min_width` wide.
4. Break lines greedily per character: with glyph widths `w_i` and `div = width - max_i w_i`,
   glyph `i` goes to line `floor(cumsum(w)_i / div)` (`wrap="word"`, an eqvlp extension,
   instead moves a word that does not fit to the next line).
5. Stack `font_size`-pixel lines from the top-left, crop to the image height, pad with
   background, and replicate the grey image to RGB.

The whole batch is laid out with array operations: every visible glyph column is scattered
as one 16-bit integer (bit `r` = row `r`) into a canvas with one row per text line of the
batch, and the canvas is expanded to pixels once (bits transposed to pixel rows, 8 RGB pixels
looked up per byte). `reference.render_text_reference` is the plain per-string version.
"""

import dataclasses
import functools
from collections.abc import Sequence
from typing import Literal

import numpy as np
from jaxtyping import UInt8

from eqvlp.config_checks import check_fields
from eqvlp.render.unifont import GlyphTable, load_unifont

Texts = str | bytes | Sequence[str | bytes]


@dataclasses.dataclass(frozen=True)
class RenderConfig:
    """How text is drawn (everything except the image size); see `render_text`.

    Defaults are big_vision's CLIPPO settings.
    """

    font_size: int = 16
    max_chars: int | None = 768
    background_brightness: int = 127
    text_brightness: int = 0
    lower: bool = True
    monospace: bool = False
    spacing: int = 1
    min_width: int = 4
    wrap: Literal["char", "word"] = "char"

    def __post_init__(self):
        check_fields(self)
        if self.font_size < 1:
            raise ValueError(
                f"font_size must be >= 1, got {self.font_size}: use 16 (Unifont's size)"
            )
        if self.max_chars is not None and self.max_chars < 0:
            raise ValueError(f"max_chars must be >= 0 or None (no limit), got {self.max_chars}")
        for name in ("background_brightness", "text_brightness"):
            value = getattr(self, name)
            if not 0 <= value <= 255:
                raise ValueError(f"{name} must be a grey level in 0..255, got {value}")
        if self.spacing < 0 or self.min_width < 0:
            raise ValueError(
                f"spacing and min_width must be >= 0, got {self.spacing} and {self.min_width}: "
                "big_vision uses spacing=1, min_width=4"
            )


def image_hw(image_size: int | tuple[int, int], font_size: int) -> tuple[int, int]:
    """`(height, width)` of the rendered image, checked against the font size."""
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        h = w = int(image_size)
    else:
        try:
            h, w = (int(s) for s in image_size)
        except (TypeError, ValueError):
            raise ValueError(
                f"image_size must be an int or a (height, width) pair, got {image_size!r}"
            ) from None
    if h < 1 or w <= font_size:
        raise ValueError(
            f"cannot render into {h}x{w} pixels with font_size={font_size}: the width must exceed "
            "one glyph cell and the height be >= 1; use a larger image_size"
        )
    return h, w


def codepoints(texts: Sequence[str | bytes], *, lower: bool, max_chars: int | None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated code points of a batch and each string's length.

    Bytes are decoded as UTF-8 (invalid bytes become U+FFFD). Only ASCII A-Z are lower-cased,
    as big_vision's `tf.strings.lower` does without an encoding.
    """
    strings = [t.decode("utf-8", "replace") if isinstance(t, bytes) else t for t in texts]
    if max_chars:
        strings = [s[:max_chars] for s in strings]
    lengths = np.fromiter(map(len, strings), np.int64, len(strings))
    cps = np.frombuffer("".join(strings).encode("utf-32-le", "surrogatepass"), np.uint32)
    if lower:
        cps = np.where((cps >= 65) & (cps <= 90), cps + np.uint32(32), cps)
    return cps, lengths


def resize_area(glyphs: np.ndarray, size: int) -> np.ndarray:
    """TensorFlow's area resize (`tf.image.resize(method="area")`) of `(n, 16, 16)` glyphs.

    Each output pixel averages the input cells it covers, weighted by the covered fraction,
    accumulated in float32 in TensorFlow's order (columns within a row, then rows).
    """
    n, in_size = len(glyphs), glyphs.shape[1]
    scale = np.float32(in_size / size)
    # cells[o]: (input index, weight) pairs of output index o, padded with weight 0.
    cells = []
    for o in range(size):
        a, b = np.float32(o) * scale, np.float32(o + 1) * scale
        row = []
        for i in range(int(np.floor(a)), int(np.ceil(b))):
            if i < a:
                weight = scale if i + 1 > b else np.float32(i + 1) - a
            else:
                weight = b - np.float32(i) if i + 1 > b else np.float32(1)
            row.append((min(max(i, 0), in_size - 1), np.float32(weight)))
        cells.append(row)
    k = max(map(len, cells))
    idx = np.array([[c[0] for c in row] + [0] * (k - len(row)) for row in cells])
    wgt = np.array([[c[1] for c in row] + [0] * (k - len(row)) for row in cells], np.float32)
    g = glyphs.astype(np.float32)
    out = np.zeros((n, size, size), np.float32)
    for ky in range(k):  # sum over the input rows of the column sums, as TensorFlow does
        rows = g[:, idx[:, ky], :]  # (n, out_y, in_x)
        colsum = np.zeros((n, size, size), np.float32)
        for kx in range(k):
            colsum += rows[:, :, idx[:, kx]] * wgt[None, None, :, kx]
        out += colsum * wgt[None, :, ky, None]
    return out * np.float32(1.0 / float(scale * scale))  # a double division, as in TensorFlow


def glyph_columns(font: GlyphTable, glyphs: np.ndarray, cfg: RenderConfig
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The columns to draw for each glyph of the batch.

    **Returns:** `(table, rows, start, width)`: `table` holds per-glyph columns (uint16 bit
    columns for font size 16, else float32 `(font_size,)` grey columns), `rows` each glyph's
    row in `table`, and the trimmed `[start, start + width)` column range.
    """
    fs = cfg.font_size
    if fs == 16:
        table, rows = font.columns, glyphs
        first_ink = font.first_ink[glyphs].astype(np.int64)
        last_ink = font.last_ink[glyphs].astype(np.int64)
    else:
        unique, rows = np.unique(glyphs, return_inverse=True)
        bits = (font.columns[unique][:, None, :] >> np.arange(16, dtype=np.uint16)[:, None]) & 1
        table = resize_area(bits, fs).transpose(0, 2, 1).copy()  # (glyph, column, row)
        ink = (table > 0).any(axis=2)
        has_ink = ink.any(axis=1)
        first_ink = np.where(has_ink, ink.argmax(axis=1), 0)[rows]
        last_ink = np.where(has_ink, fs - 1 - ink[:, ::-1].argmax(axis=1), 0)[rows]
    if cfg.monospace:
        return table, rows, np.zeros(len(glyphs), np.int64), np.full(len(glyphs), fs, np.int64)
    first = np.maximum(first_ink - cfg.spacing, 0)
    last = np.maximum(last_ink + cfg.spacing, first + cfg.min_width)
    return table, rows, first, np.minimum(last, fs) - first


def char_wrap(widths: np.ndarray, lengths: np.ndarray, line_width: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """big_vision's greedy per-character line breaking, for a whole batch at once.

    Glyph `i` of a string goes to line `floor(cumsum(w)_i / (line_width - max(w)))` (float32,
    as TensorFlow computes it) and starts where the previous glyphs of its line end.

    **Returns:** `(line, x)` of every glyph.
    """
    total = len(widths)
    if total == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    string = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.cumsum(lengths) - lengths
    nonempty = lengths > 0
    widest = np.zeros(len(lengths), np.int64)
    widest[nonempty] = np.maximum.reduceat(widths, starts[nonempty])
    cum = np.cumsum(widths)
    inclusive = cum - np.concatenate([[0], cum])[starts][string]
    exclusive = inclusive - widths
    div = (line_width - widest).astype(np.float32)[string]
    line = np.floor(inclusive.astype(np.float32) / div).astype(np.int64)
    new_line = np.ones(total, bool)
    new_line[1:] = (line[1:] != line[:-1]) | (string[1:] != string[:-1])
    first = np.maximum.accumulate(np.where(new_line, np.arange(total), 0))
    return line, exclusive - exclusive[first]


def word_wrap(widths: np.ndarray, lengths: np.ndarray, cps: np.ndarray, line_width: int,
              max_lines: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy word wrapping at spaces (U+0020), an eqvlp extension.

    A word that does not fit on the current line starts the next one; a word wider than the
    image is broken per character; the spaces at an automatic line break are dropped (line
    `-1`). Lines hold at most `line_width` pixels. Glyphs past `max_lines` get line `-1`.
    """
    line = np.full(len(widths), -1, np.int64)
    x = np.zeros(len(widths), np.int64)
    w, space = widths.tolist(), (cps == 32).tolist()
    start = 0
    for length in lengths.tolist():
        i, end, cur, pos, at_break = start, start + length, 0, 0, False
        while i < end and cur < max_lines:
            if space[i]:
                if at_break:
                    pass
                elif pos + w[i] <= line_width:
                    line[i], x[i], pos = cur, pos, pos + w[i]
                else:
                    cur, pos, at_break = cur + 1, 0, True
                i += 1
                continue
            j = i
            while j < end and not space[j]:
                j += 1
            word = sum(w[i:j])
            if pos + word > line_width and word <= line_width:
                cur, pos = cur + 1, 0
            for k in range(i, j):
                if pos + w[k] > line_width:
                    cur, pos = cur + 1, 0
                line[k], x[k], pos = cur, pos, pos + w[k]
            at_break, i = False, j
        start = end
    return np.where(line < max_lines, line, -1), x


def render_text(
    texts: Texts,
    *,
    image_size: int | tuple[int, int] = 224,
    font_size: int = 16,
    max_chars: int | None = 768,
    background_brightness: int = 127,
    text_brightness: int = 0,
    lower: bool = True,
    monospace: bool = False,
    spacing: int = 1,
    min_width: int = 4,
    wrap: Literal["char", "word"] = "char",
    font: GlyphTable | None = None,
) -> UInt8[np.ndarray, "*batch height width 3"]:
    """Renders text to RGB images the way CLIPPO (big_vision's `render_unifont`) does.

    **Arguments:**

    - `texts`: one string (gives one `(H, W, 3)` image) or a sequence of strings (gives
      `(N, H, W, 3)`); bytes are decoded as UTF-8.
    - `image_size`: `224` or `(height, width)`.
    - `font_size`: glyph cell size; 16 draws Unifont's bitmaps exactly, other sizes resize
      each glyph with TensorFlow's area filter (grey edges).
    - `max_chars`: characters kept per string (`None` or 0: all).
    - `background_brightness`, `text_brightness`: grey levels of the background and the ink.
    - `lower`: lower-case ASCII A-Z first.
    - `monospace`: keep every glyph's full cell instead of trimming it to its ink.
    - `spacing`, `min_width`: trimming, see the module docstring.
    - `wrap`: `"char"` (big_vision: break anywhere) or `"word"` (break at spaces when a word
      fits).
    - `font`: a glyph table from `load_unifont`; default the process-wide Unifont.

    **Returns:** uint8 images, grey replicated to RGB.
    """
    cfg = RenderConfig(font_size, max_chars, background_brightness, text_brightness, lower,
                       monospace, spacing, min_width, wrap)
    height, width = image_hw(image_size, font_size)
    font = load_unifont() if font is None else font
    single = isinstance(texts, (str, bytes))
    batch = [texts] if single else list(texts)
    cps, lengths = codepoints(batch, lower=lower, max_chars=max_chars)
    table, rows, start, widths = glyph_columns(font, font.index[cps], cfg)
    max_lines = -(-height // font_size)
    if wrap == "char":
        line, x = char_wrap(widths, lengths, width)
    else:
        line, x = word_wrap(widths, lengths, cps, width, max_lines)
    images = draw(table, rows, start, widths, line, x, lengths, (height, width), cfg)
    return images[0] if single else images


def draw(table: np.ndarray, rows: np.ndarray, start: np.ndarray, widths: np.ndarray,
         line: np.ndarray, x: np.ndarray, lengths: np.ndarray, hw: tuple[int, int],
         cfg: RenderConfig) -> np.ndarray:
    """Scatters the visible glyph columns into one canvas row per text line, then pixels.

    Only the `(string, line)` pairs that hold a visible glyph get a canvas row, so short
    captions in a batch do not pay for a long one.
    """
    (height, width), fs, n = hw, cfg.font_size, len(lengths)
    bg, ink = cfg.background_brightness, cfg.text_brightness
    num_lines = -(-height // fs)  # lines that fit, the last one possibly cropped
    string = np.repeat(np.arange(n), lengths)
    visible = (line >= 0) & (line < num_lines) & (widths > 0)
    # Lines of a batch in order: flat line ids never decrease, so slots come from a diff.
    flat = (string * num_lines + line)[visible]
    new_slot = np.ones(len(flat), bool)
    new_slot[1:] = flat[1:] != flat[:-1]
    slots, slot = flat[new_slot], np.cumsum(new_slot) - 1

    buffer = np.empty((n * num_lines, fs, width, 3), np.uint8)
    unused = np.ones(n * num_lines, bool)
    unused[slots] = False
    buffer[unused] = bg
    if len(slots):
        stride = -(-width // 8) * 8  # canvas rows padded to whole bytes
        w = widths[visible]
        column = np.arange(int(w.sum())) - np.repeat(np.cumsum(w) - w, w)  # within each glyph
        src = np.repeat(rows[visible] * fs + start[visible], w) + column
        dst = np.repeat(slot * stride + x[visible], w) + column
        cell = table.shape[2:]  # () for bit columns, (fs,) for grey columns
        canvas = np.zeros((len(slots) * stride, *cell), table.dtype)
        canvas[dst] = table.reshape(-1, *cell)[src]
        if table.dtype == np.uint16:
            # Transpose the bits from columns to rows, pack each 8 pixels of a row into a
            # byte, and look up 8 RGB pixels per byte (24 bytes, gathered as one item).
            bits = np.unpackbits(canvas.astype("<u2", copy=False).view(np.uint8), bitorder="little")
            by_row = np.ascontiguousarray(bits.reshape(-1, stride, 16).transpose(0, 2, 1))
            packed = np.packbits(by_row.reshape(-1)).reshape(-1, fs, stride // 8)
            rgb = _byte_to_pixels(ink, bg)[packed].view(np.uint8).reshape(-1, fs, stride, 3)
            buffer[slots] = rgb[:, :, :width]
        else:
            value = canvas.reshape(-1, stride, fs).transpose(0, 2, 1)
            grey = np.clip(value * np.float32(ink - bg) + np.float32(bg), 0, 255).astype(np.uint8)
            buffer[slots] = grey[:, :, :width, None]
    images = buffer.reshape(n, num_lines * fs, width, 3)
    return images if num_lines * fs == height else np.ascontiguousarray(images[:, :height])


@functools.lru_cache(maxsize=16)
def _byte_to_pixels(ink: int, bg: int) -> np.ndarray:
    """`(256,)` items of 24 bytes: the 8 RGB pixels of a byte of row bits, MSB first."""
    bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(bool)
    pixels = np.where(bits[:, :, None], np.uint8(ink), np.uint8(bg)).repeat(3, axis=2)
    return np.ascontiguousarray(pixels).reshape(256, 24).view("V24").reshape(256)
