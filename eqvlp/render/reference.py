"""The plain reference renderer: one string at a time, big_vision's steps written out literally.

`render_text` (vectorised over a batch) is tested against this function; it is slow and meant
for reading and testing, not for input pipelines.
"""

import numpy as np
from jaxtyping import UInt8

from eqvlp.render.renderer import RenderConfig, image_hw, resize_area
from eqvlp.render.unifont import GlyphTable, load_unifont


def trim(letter: np.ndarray, cfg: RenderConfig) -> np.ndarray:
    """One glyph `(rows, cols)` -> the columns it occupies, `(width, rows)`."""
    if cfg.monospace:
        return letter.T
    ink = np.flatnonzero(letter.max(axis=0))
    first, last = (int(ink[0]), int(ink[-1])) if ink.size else (0, 0)
    first = max(first - cfg.spacing, 0)
    last = max(last + cfg.spacing, first + cfg.min_width)
    return letter[:, first:last].T


def break_lines_char(widths: list[int], width: int) -> list[int]:
    """big_vision: glyph i goes to line floor(cumsum_i / (width - max width)), in float32."""
    if not widths:
        return []
    div = np.float32(width - max(widths))
    return [int(np.floor(np.float32(c) / div)) for c in np.cumsum(widths)]


def break_lines_word(chars: list[str], widths: list[int], width: int) -> list[int | None]:
    """Greedy word wrap: a word that does not fit starts a new line; spaces at a break vanish."""
    lines: list[int | None] = [None] * len(chars)
    line, pos, i = 0, 0, 0
    after_break = False
    while i < len(chars):
        if chars[i] == " ":
            if not after_break:
                if pos + widths[i] <= width:
                    lines[i], pos = line, pos + widths[i]
                else:
                    line, pos, after_break = line + 1, 0, True
            i += 1
            continue
        j = i
        while j < len(chars) and chars[j] != " ":
            j += 1
        if pos > 0 and pos + sum(widths[i:j]) > width >= sum(widths[i:j]):
            line, pos = line + 1, 0
        for k in range(i, j):
            if pos + widths[k] > width:
                line, pos = line + 1, 0
            lines[k], pos = line, pos + widths[k]
        i, after_break = j, False
    return lines


def render_text_reference(
    text: str,
    *,
    image_size: int | tuple[int, int] = 224,
    font: GlyphTable | None = None,
    **options,
) -> UInt8[np.ndarray, "height width 3"]:
    """One string rendered step by step; `options` are `RenderConfig`'s fields."""
    cfg = RenderConfig(**options)
    height, width = image_hw(image_size, cfg.font_size)
    font = load_unifont() if font is None else font
    fs = cfg.font_size
    if cfg.lower:
        text = "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in text)
    chars = list(text)[: cfg.max_chars] if cfg.max_chars else list(text)
    letters = [font.bitmap(c).astype(np.float32) for c in chars]
    if fs != 16 and letters:
        letters = list(resize_area(np.stack(letters), fs))
    columns = [trim(letter, cfg) for letter in letters]
    widths = [len(c) for c in columns]
    if cfg.wrap == "char":
        line_of = break_lines_char(widths, width)
    else:
        line_of = break_lines_word(chars, widths, width)
    placed = [(ln, c) for ln, c in zip(line_of, columns) if ln is not None]
    num_lines = max((ln for ln, _ in placed), default=-1) + 1
    lines = [np.zeros((0, fs), np.float32) for _ in range(num_lines)]
    for ln, cols in placed:
        lines[ln] = np.concatenate([lines[ln], cols])
    block = np.zeros((num_lines * fs, width), np.float32)
    for ln, cols in enumerate(lines):
        block[ln * fs : (ln + 1) * fs, : len(cols)] = cols.T
    image = np.zeros((height, width), np.float32)
    image[: min(height, len(block))] = block[:height]
    bg, ink = cfg.background_brightness, cfg.text_brightness
    grey = np.clip(image * np.float32(ink - bg) + np.float32(bg), 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)
