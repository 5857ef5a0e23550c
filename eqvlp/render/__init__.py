"""Text rendered to pixels for CLIPPO: GNU Unifont glyphs, big_vision's layout, PNG output.

- `render_text(texts, ...)`: strings to uint8 RGB images, vectorised over the batch, pixel for
  pixel what big_vision's `render_unifont` op draws.
- `RenderConfig`: the drawing options as a frozen dataclass (what CLIPPO models store).
- `load_unifont()`: the glyph table (`$EQVLP_UNIFONT` or Debian's `/usr/share/unifont/unifont.hex`).
- `render_text_reference`: the plain one-string reference implementation.
- `encode_png`, `write_png`: PNG files with the standard library only.

See docs/rendering.md.
"""

from eqvlp.render.png import encode_png, write_png
from eqvlp.render.reference import render_text_reference
from eqvlp.render.renderer import RenderConfig, render_text
from eqvlp.render.unifont import GlyphTable, load_unifont

__all__ = [
    "GlyphTable",
    "RenderConfig",
    "encode_png",
    "load_unifont",
    "render_text",
    "render_text_reference",
    "write_png",
]
