"""GNU Unifont glyphs as a compact table, parsed from `.hex` files once per process.

A `.hex` line is `CODEPOINT:HEXBITS`: 32 hex digits are an 8x16 glyph, 64 a 16x16 glyph, each
row MSB first. The table keeps every glyph as a 16x16 bitmap (an 8-wide glyph in the LEFT 8
columns), one entry per glyph plus a blank entry 0 that every code point without a glyph maps to.
"""

import dataclasses
import functools
import os
from pathlib import Path

import numpy as np

DEFAULT_PATH = "/usr/share/unifont/unifont.hex"
ENV_PATH = "EQVLP_UNIFONT"
ENV_UPPER = "EQVLP_UNIFONT_UPPER"
NUM_CODEPOINTS = 0x110000

@dataclasses.dataclass(frozen=True, eq=False)
class GlyphTable:
    """Unifont glyphs, indexed by code point.

    **Fields:**

    - `index`: `(0x110000,)` int32, the glyph row of each code point; 0 (blank) if it has none.
    - `columns`: `(glyphs + 1, 16)` uint16, the glyph's columns left to right, bit `r` of a
      column = pixel in row `r` (row 0 at the top). Row 0 of the table is the blank glyph.
    - `first_ink`, `last_ink`: `(glyphs + 1,)` int8, the first and last column holding ink
      (both 0 for a blank glyph, as big_vision treats it).
    - `wide`: `(glyphs + 1,)` bool, whether the file gave 16 columns (64 hex digits).
    - `paths`: the files the table was read from.
    """

    index: np.ndarray
    columns: np.ndarray
    first_ink: np.ndarray
    last_ink: np.ndarray
    wide: np.ndarray
    paths: tuple[str, ...]

    @property
    def num_glyphs(self) -> int:
        """Number of code points with a glyph."""
        return len(self.columns) - 1

    def glyph_ids(self, codepoints: np.ndarray) -> np.ndarray:
        """Table rows of an array of code points (0 for code points without a glyph).

        Code points must be in `[0, 0x110000)`: a negative one would wrap to the end of the
        table (NumPy indexing) and draw another character's glyph.
        """
        codepoints = np.asarray(codepoints)
        check_codepoints(codepoints)
        return self.index[codepoints]

    def bitmap(self, char: str | int) -> np.ndarray:
        """The 16x16 bool bitmap (rows, columns) of one character or code point."""
        cp = ord(char) if isinstance(char, str) else int(char)
        check_codepoints(np.asarray(cp))
        cols = self.columns[self.index[cp]]
        return ((cols[None, :] >> np.arange(16, dtype=np.uint16)[:, None]) & 1).astype(bool)

    def __contains__(self, char: str | int) -> bool:
        cp = ord(char) if isinstance(char, str) else int(char)
        return 0 <= cp < NUM_CODEPOINTS and bool(self.index[cp])


def check_codepoints(codepoints: np.ndarray) -> None:
    """Raises a clear error unless every code point is an integer in `[0, 0x110000)`."""
    if codepoints.size == 0:
        return
    if not np.issubdtype(codepoints.dtype, np.integer):
        raise TypeError(f"code points must be integers, got {codepoints.dtype}: use ord(char)")
    lo, hi = int(codepoints.min()), int(codepoints.max())
    if lo < 0 or hi >= NUM_CODEPOINTS:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"code point {bad} is not a Unicode code point (0 to 0x10FFFF): pass ord(char) of "
            "the characters to draw"
        )


def parse_hex(data: bytes, source: str = "<bytes>") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parses `.hex` text into code points, bitmap rows and widths.

    **Returns:** `(codepoints (n,) int64, rows (n, 16) uint16, wide (n,) bool)`, in file order.
    Row bits are MSB first (bit 15 = column 0); an 8-wide glyph fills the high byte.

    **Raises:** `ValueError` for a file with no glyphs (every text would render blank), a
    negative code point, or a line that is not `CODEPOINT:HEXBITS`.
    """
    # One C-level split gives code point, bits, code point, bits, ... (blank lines and CRLF
    # line ends vanish); a line without exactly one ':' breaks the pairing and is caught here.
    tokens = data.replace(b":", b" ").split()
    if len(tokens) != 2 * data.count(b":"):
        raise ValueError(f"{source}: every line must be CODEPOINT:HEXBITS (hex digits)")
    hexbits = tokens[1::2]
    try:
        codepoints = np.fromiter(map(int, tokens[0::2], [16] * len(hexbits)), np.int64,
                                 len(hexbits))
    except ValueError:
        raise ValueError(f"{source}: every line must be CODEPOINT:HEXBITS (hex digits)") from None
    if len(codepoints) == 0:
        raise ValueError(
            f"{source} holds no glyphs (an empty or truncated file): every text would render "
            "blank; point EQVLP_UNIFONT at a GNU Unifont .hex file (apt-get install unifont)"
        )
    negative = np.flatnonzero(codepoints < 0)
    if negative.size:
        raise ValueError(
            f"{source}: line {negative[0] + 1} has the negative code point "
            f"{tokens[2 * negative[0]].decode('ascii', 'replace')}: code points are hex digits "
            "0 to 10FFFF; check that this is a Unifont .hex file"
        )
    ndigits = np.fromiter(map(len, hexbits), np.int64, len(hexbits))
    bad = np.flatnonzero((ndigits != 32) & (ndigits != 64))
    if bad.size:
        raise ValueError(
            f"{source}: line {bad[0] + 1} has {ndigits[bad[0]]} hex digits of glyph bits: "
            "Unifont glyphs have 32 (8x16) or 64 (16x16); check that this is a Unifont .hex file"
        )
    try:  # one C-speed conversion of every glyph's digits
        buf = np.frombuffer(bytes.fromhex(b"".join(hexbits).decode("ascii")), np.uint8)
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{source}: glyph bits hold a character that is not a hex digit") from None
    offsets = np.concatenate([[0], np.cumsum(ndigits // 2)[:-1]])
    wide = ndigits == 64
    rows = np.zeros((len(hexbits), 16), np.uint16)
    w = np.flatnonzero(wide)
    pairs = buf[offsets[w, None] + np.arange(32)].reshape(len(w), 16, 2).astype(np.uint16)
    rows[w] = (pairs[..., 0] << 8) | pairs[..., 1]
    n = np.flatnonzero(~wide)
    rows[n] = buf[offsets[n, None] + np.arange(16)].astype(np.uint16) << 8
    return codepoints, rows, wide


def build_table(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], paths: tuple[str, ...]
) -> GlyphTable:
    """Merges parsed files (later entries win, as big_vision's loading order does) into a table."""
    codepoints = np.concatenate([p[0] for p in parts])
    rows = np.concatenate([p[1] for p in parts])
    wide = np.concatenate([p[2] for p in parts])
    valid = codepoints < NUM_CODEPOINTS
    codepoints, rows, wide = codepoints[valid], rows[valid], wide[valid]
    # Keep the last entry of each code point: unique over the reversed order.
    _, last = np.unique(codepoints[::-1], return_index=True)
    keep = np.sort(len(codepoints) - 1 - last)
    codepoints, rows, wide = codepoints[keep], rows[keep], wide[keep]

    # (glyph, row) uint16 MSB-first -> (glyph, row, column) bits -> columns with bit r = row r.
    bits = np.unpackbits(rows.astype(">u2").view(np.uint8).reshape(len(rows), 16, 2), axis=2)
    by_column = np.ascontiguousarray(bits.transpose(0, 2, 1)).reshape(-1)
    columns = np.zeros((len(rows) + 1, 16), np.uint16)
    columns[1:] = np.packbits(by_column, bitorder="little").view("<u2").reshape(len(rows), 16)
    ink = columns != 0
    has_ink = ink.any(axis=1)
    first = np.where(has_ink, ink.argmax(axis=1), 0).astype(np.int8)
    last = np.where(has_ink, 15 - ink[:, ::-1].argmax(axis=1), 0).astype(np.int8)
    index = np.zeros(NUM_CODEPOINTS, np.int32)  # zero pages cost no memory until touched
    index[codepoints] = np.arange(1, len(codepoints) + 1, dtype=np.int32)
    return GlyphTable(
        index=index, columns=columns, first_ink=first, last_ink=last,
        wide=np.concatenate([[False], wide]), paths=paths,
    )


def resolve_paths(path: str | os.PathLike | None = None, upper: str | os.PathLike | None = None
                  ) -> tuple[str, str | None]:
    """The font files to read: the arguments, else `$EQVLP_UNIFONT` / `$EQVLP_UNIFONT_UPPER`,
    else Debian's `/usr/share/unifont/unifont.hex` (no upper-plane file)."""
    path = os.fspath(path) if path is not None else os.environ.get(ENV_PATH) or DEFAULT_PATH
    if upper is None:
        upper = os.environ.get(ENV_UPPER) or None
    upper = os.fspath(upper) if upper is not None else None
    for p, what in ((path, "plane-0 font"), (upper, "upper-plane font")):
        if p is not None and not Path(p).is_file():
            raise FileNotFoundError(
                f"GNU Unifont {what} not found at {p}: install Debian's unifont package "
                f"(apt-get install unifont, which provides {DEFAULT_PATH}) or point "
                f"{ENV_PATH if what == 'plane-0 font' else ENV_UPPER} at a Unifont .hex file"
            )
    return path, upper


@functools.lru_cache(maxsize=4)
def _load(path: str, upper: str | None) -> GlyphTable:
    files = (path,) if upper is None else (path, upper)
    parts = [parse_hex(Path(p).read_bytes(), p) for p in files]
    return build_table(parts, files)


def load_unifont(path: str | os.PathLike | None = None, upper: str | os.PathLike | None = None
                 ) -> GlyphTable:
    """The glyph table of a Unifont plane-0 file plus an optional upper-plane file.

    Parsed once per process and per pair of files (about 0.1 s for the 57,086 glyphs of
    Debian's unifont 15.0).

    **Arguments:**

    - `path`: the plane-0 `.hex` file; default `$EQVLP_UNIFONT`, else
      `/usr/share/unifont/unifont.hex` (Debian's `unifont` package).
    - `upper`: an upper-plane `.hex` file (`unifont_upper-*.hex`, 6-digit code points);
      default `$EQVLP_UNIFONT_UPPER`, else none: characters beyond plane 0 are then blank.
    """
    return _load(*resolve_paths(path, upper))
