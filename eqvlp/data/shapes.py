"""Captioned shapes: a procedurally drawn image-text dataset that ships with the library.

Each image holds one main object (a shape in a colour, a size and a place on a 3x3 grid) on a
noisy grey background, and sometimes a second, smaller object of another shape and colour.
Captions describe the objects in varied words. It needs no download, draws a 64 px image in well
under a millisecond, and is hard enough to be worth learning but easy enough that a tiny CLIP
trained on a laptop CPU for a few minutes classifies held-out colour+shape pairs zero-shot.

Some colour+shape pairs never appear in "train" (one colour per shape, each colour held out for
at most one shape, so every colour and every shape is still seen): "test" draws half of its main
objects from them, to measure compositional generalisation. Sample `i` of a split is a pure
function of `(seed, split, i)` and the config, so any worker can draw any sample in any order.
"""

import dataclasses
import functools
import re
from typing import NamedTuple

import numpy as np
from jaxtyping import Float, UInt8

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SIZES = ("small", "medium", "large")
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
SPLITS = ("train", "val", "test")
DEFAULT_NUM_SAMPLES = {"train": 100_000, "val": 1_000, "test": 1_000}

# Channels stay within [20, 235] so that the colour jitter never clips.
COLOUR_RGB = {
    "red": (215, 35, 35),
    "green": (40, 165, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 45),
    "purple": (140, 55, 185),
    "orange": (235, 135, 30),
    "white": (235, 235, 235),
    "black": (20, 20, 20),
}
# Words a caption may use for each shape and size (index-aligned with SHAPES and SIZES).
SHAPE_WORDS = (
    ("circle", "disk", "round shape"),
    ("square",),
    ("triangle",),
    ("star", "five-pointed star"),
    ("cross", "plus sign"),
    ("diamond", "rhombus"),
)
SIZE_WORDS = (("small", "little", "tiny"), ("medium", "medium-sized", "mid-sized"),
              ("large", "big", "huge"))

# One colour held out per shape, `(3 * shape + 1) mod 8`: a different colour for each shape.
HELD_OUT = frozenset((s, (3 * s + 1) % len(COLOURS)) for s in range(len(SHAPES)))
_SEEN = tuple((s, c) for c in range(len(COLOURS)) for s in range(len(SHAPES))
              if (s, c) not in HELD_OUT)
_HELD = tuple(sorted(HELD_OUT))

# Radius (half the bounding box) as a fraction of the image's shorter side, and +-jitter.
_RADIUS = (0.12, 0.18, 0.25)
_RADIUS_JITTER = 0.06
_MARGIN = 0.02  # of the shorter side: between objects, and between an object and the border
_POSITION_JITTER = 0.2  # of a grid cell
# Background greys at least this far (RGB Euclidean) from every object colour in the image.
_MIN_CONTRAST = 120.0
_GREYS = np.arange(30, 221)
_GREY_OK = {c: np.linalg.norm(np.subtract(rgb, _GREYS[:, None]), axis=1) >= _MIN_CONTRAST
            for c, rgb in enumerate(COLOUR_RGB.values())}


@dataclasses.dataclass(frozen=True)
class ShapesConfig:
    """How the shapes dataset is drawn.

    - `image_size`: `S` for `S x S` images or `(height, width)`; at least 16 pixels a side.
    - `num_captions`: distinct captions per image, 1 to `len(CAPTION_TEMPLATES)`.
    - `second_object_prob`: chance of a second, small object.
    - `noise`: standard deviation of the per-pixel Gaussian noise, in grey levels.
    - `colour_jitter`: each object's RGB moves by up to this much per channel.
    - `seed`: the dataset seed; sample `i` of a split depends only on it, the split and `i`.
    """

    image_size: int | tuple[int, int] = 64
    num_captions: int = 5
    second_object_prob: float = 0.25
    noise: float = 8.0
    colour_jitter: int = 12
    seed: int = 0

    def __post_init__(self):
        size = self.image_size
        sides = (size, size) if isinstance(size, int) else tuple(size)
        if (len(sides) != 2 or any(isinstance(s, bool) or not isinstance(s, int) for s in sides)
                or min(sides) < 16):
            raise ValueError(
                f"image_size must be an int or an (height, width) pair of ints >= 16, got {size!r}"
            )
        if not 1 <= self.num_captions <= len(CAPTION_TEMPLATES):
            raise ValueError(f"num_captions must be in [1, {len(CAPTION_TEMPLATES)}] (the number "
                             f"of caption templates), got {self.num_captions}")
        if not 0.0 <= self.second_object_prob <= 1.0:
            raise ValueError(f"second_object_prob must be in [0, 1], got {self.second_object_prob}")
        if self.noise < 0 or self.colour_jitter < 0:
            raise ValueError(f"noise and colour_jitter must be >= 0, got {self.noise} and "
                             f"{self.colour_jitter}")

    @property
    def hw(self) -> tuple[int, int]:
        """`(height, width)`."""
        size = self.image_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


@dataclasses.dataclass(frozen=True)
class ShapeObject:
    """One drawn object: indices into SHAPES, COLOURS, SIZES, POSITIONS, and its geometry.

    `center` is `(y, x)` and `radius` half the side of its bounding box, in pixels; `rgb` is
    the jittered colour it is painted with.
    """

    shape: int
    colour: int
    size: int
    position: int
    center: tuple[float, float]
    radius: float
    rgb: tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class Scene:
    """Everything needed to draw and describe one image."""

    height: int
    width: int
    background: int
    main: ShapeObject
    second: ShapeObject | None
    noise_seed: int

    @property
    def held_out(self) -> bool:
        return (self.main.shape, self.main.colour) in HELD_OUT

    @property
    def objects(self) -> tuple[ShapeObject, ...]:
        return (self.main,) if self.second is None else (self.main, self.second)


def split_id(split: str) -> int:
    """The split's place in SPLITS, which seeds its samples."""
    if split not in SPLITS:
        raise ValueError(f"unknown shapes split {split!r}: choose one of {SPLITS}")
    return SPLITS.index(split)


def _rng(config: ShapesConfig, split: str, index: int) -> np.random.Generator:
    """The one generator behind sample `index` of `split`: scene, then captions."""
    return np.random.default_rng([config.seed, split_id(split), index])


def sample_scene(rng: np.random.Generator, split: str, config: ShapesConfig) -> Scene:
    """Draws what one image shows. "train" and "val" use seen pairs only; "test" half held-out.

    The main object is never small when there is a second object, which is always small, of
    another shape and colour, a seen pair, in another grid cell and not overlapping.
    """
    split_id(split)
    held = split == "test" and rng.random() < 0.5
    pairs = _HELD if held else _SEEN
    shape, colour = pairs[rng.integers(len(pairs))]
    has_second = rng.random() < config.second_object_prob
    size = int(rng.integers(1, 3) if has_second else rng.integers(0, 3))
    height, width = config.hw
    side = min(height, width)
    radius = _RADIUS[size] * side * (1 + _RADIUS_JITTER * rng.uniform(-1, 1))
    if not has_second:
        cell = int(rng.integers(9))
        main = _place(rng, shape, colour, size, cell, radius, config)
        second = None
    else:
        others = [(s, c) for s, c in _SEEN if s != shape and c != colour]
        shape2, colour2 = others[rng.integers(len(others))]
        radius2 = _RADIUS[0] * side * (1 + _RADIUS_JITTER * rng.uniform(-1, 1))
        centers = [_cell_center(p, radius, height, width) for p in range(9)]
        centers2 = [_cell_center(p, radius2, height, width) for p in range(9)]
        fits = [[q for q in range(9) if q != p and _apart(centers[p], radius, centers2[q],
                                                          radius2, side)] for p in range(9)]
        cells = [p for p in range(9) if fits[p]]
        cell = cells[rng.integers(len(cells))]
        cell2 = fits[cell][rng.integers(len(fits[cell]))]
        main = _place(rng, shape, colour, size, cell, radius, config)
        second = _place(rng, shape2, colour2, 0, cell2, radius2, config)
        if not _apart(main.center, radius, second.center, radius2, side):
            # the jitter brought them together: fall back to the cell centres, which fit
            main = dataclasses.replace(main, center=centers[cell])
            second = dataclasses.replace(second, center=centers2[cell2])
    greys = _GREYS[_GREY_OK[colour] & _GREY_OK[second.colour if second else colour]]
    background = int(greys[rng.integers(len(greys))])
    noise_seed = int(rng.integers(2**32))
    return Scene(height, width, background, main, second, noise_seed)


def _cell_center(cell: int, radius: float, height: int, width: int,
                 offset: tuple[float, float] = (0.0, 0.0)) -> tuple[float, float]:
    """Centre of a 3x3 grid cell (plus `offset`, in cells), moved inwards until the object fits."""
    row, col = divmod(cell, 3)
    side = min(height, width)
    return (_clamp((row + 0.5 + offset[0]) * height / 3, radius, height, side),
            _clamp((col + 0.5 + offset[1]) * width / 3, radius, width, side))


def _clamp(x: float, radius: float, length: int, side: int) -> float:
    margin = radius + _MARGIN * side
    return float(min(max(x, margin), length - margin))


def _apart(a: tuple[float, float], ra: float, b: tuple[float, float], rb: float,
           side: int) -> bool:
    """Whether two objects' bounding boxes, grown by the margin, do not overlap."""
    gap = ra + rb + _MARGIN * side
    return abs(a[0] - b[0]) >= gap or abs(a[1] - b[1]) >= gap


def _place(rng: np.random.Generator, shape: int, colour: int, size: int, cell: int,
           radius: float, config: ShapesConfig) -> ShapeObject:
    dy, dx = rng.uniform(-1, 1, 2) * _POSITION_JITTER
    center = _cell_center(cell, radius, *config.hw, offset=(float(dy), float(dx)))
    j = config.colour_jitter
    rgb = np.clip(np.add(COLOUR_RGB[COLOURS[colour]], rng.integers(-j, j + 1, 3)), 0, 255)
    return ShapeObject(int(shape), int(colour), size, cell, center, float(radius),
                       tuple(int(v) for v in rgb))


# Shapes as signed distances (negative inside) in coordinates scaled by the radius, so that
# every shape fits in [-1, 1]^2 (y down). Exact near the edges, which is all anti-aliasing needs.
def _polygon_edges(vertices) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Each edge of a convex polygon as (a point on it, its outward unit normal)."""
    vertices = np.asarray(vertices, np.float32)
    inward = vertices.mean(0)
    edges = []
    for a, b in zip(vertices, np.roll(vertices, -1, axis=0)):
        n = np.array([b[1] - a[1], a[0] - b[0]], np.float32)
        n /= np.linalg.norm(n)
        if n @ (inward - a) > 0:
            n = -n
        edges.append((a, n))
    return tuple(edges)


def _polygon(u, v, edges):
    d = None
    for a, n in edges:
        e = (u - a[0]) * n[0] + (v - a[1]) * n[1]
        d = e if d is None else np.maximum(d, e)
    return d


def _box(u, v, a, b):
    return np.maximum(np.abs(u) - a, np.abs(v) - b)


_STAR_INNER = 0.5
_STAR_EDGE = np.array([_STAR_INNER * np.cos(np.pi / 5) - 1, _STAR_INNER * np.sin(np.pi / 5)])
_STAR_NORMAL = np.array([_STAR_EDGE[1], -_STAR_EDGE[0]]) / np.linalg.norm(_STAR_EDGE)


def _star(u, v):
    # fold the angle from the top tip into [0, 36 deg]: there the edge runs tip -> inner corner
    rho, theta = np.hypot(u, v), np.arctan2(u, -v) % (2 * np.pi / 5)
    phi = np.minimum(theta, 2 * np.pi / 5 - theta)
    return (rho * np.cos(phi) - 1) * _STAR_NORMAL[0] + rho * np.sin(phi) * _STAR_NORMAL[1]


_SDF = {
    "circle": lambda u, v: np.hypot(u, v) - 1,
    "square": lambda u, v: _box(u, v, 0.85, 0.85),
    "triangle": functools.partial(_polygon, edges=_polygon_edges([(0, -1), (1, 0.8), (-1, 0.8)])),
    "star": _star,
    "cross": lambda u, v: np.minimum(_box(u, v, 1, 0.32), _box(u, v, 0.32, 1)),
    "diamond": functools.partial(_polygon,
                                 edges=_polygon_edges([(0, -1), (1, 0), (0, 1), (-1, 0)])),
}


def _alpha(obj: ShapeObject, height: int, width: int):
    """The object's anti-aliased coverage on the pixels of its bounding box."""
    (cy, cx), r = obj.center, obj.radius
    y0, y1 = max(int(cy - r) - 1, 0), min(int(np.ceil(cy + r)) + 1, height)
    x0, x1 = max(int(cx - r) - 1, 0), min(int(np.ceil(cx + r)) + 1, width)
    v = ((np.arange(y0, y1, dtype=np.float32) + 0.5 - cy) / r)[:, None]
    u = ((np.arange(x0, x1, dtype=np.float32) + 0.5 - cx) / r)[None, :]
    u, v = np.broadcast_arrays(u, v)
    distance = _SDF[SHAPES[obj.shape]](u, v) * r  # in pixels
    # min/max rather than np.clip: the same values, at a fraction of the call overhead
    return (slice(y0, y1), slice(x0, x1)), np.minimum(np.maximum(0.5 - distance, 0), 1)


def coverage(obj: ShapeObject, height: int, width: int) -> Float[np.ndarray, "height width"]:
    """How much of each pixel the object covers, in [0, 1] (1 inside, fractional on edges)."""
    out = np.zeros((height, width), np.float32)
    where, alpha = _alpha(obj, height, width)
    out[where] = alpha
    return out


def draw(scene: Scene, noise: float) -> UInt8[np.ndarray, "h w 3"]:
    """Paints the scene: grey background, the objects in order, then per-pixel noise."""
    image = np.full((scene.height, scene.width, 3), scene.background, np.float32)
    for obj in scene.objects:
        where, alpha = _alpha(obj, scene.height, scene.width)
        patch = image[where]
        image[where] = patch + alpha[..., None] * (np.asarray(obj.rgb, np.float32) - patch)
    if noise > 0:
        rng = np.random.default_rng(scene.noise_seed)
        image += rng.standard_normal(image.shape, np.float32) * np.float32(noise)
    return np.minimum(np.maximum(np.rint(image), 0), 255).astype(np.uint8)


# Where-phrases for each grid cell: the bare place ("top left") and ways to say "there".
def _where(place: str) -> tuple[str, ...]:
    if place == "center":
        return ("in the center", "in the middle", "at the center")
    if " " in place:  # a corner
        return (f"in the {place}", f"in the {place} corner", f"at the {place}")
    if place in ("left", "right"):
        return (f"on the {place}", f"at the {place}", f"on the {place} side")
    return (f"at the {place}", f"near the {place}", f"in the {place} middle")


WHERE_PHRASES = tuple(_where(p) for p in POSITIONS)

# Full descriptions (size, colour, shape, place) first: the primary caption is one of them.
_FULL_TEMPLATES = (
    "a {size} {colour} {shape} {where}",
    "{place}: a {size} {colour} {shape}",
    "there is a {size} {colour} {shape} {where}",
    "a {colour} {shape}, {size}, {where}",
    "a {size} {colour} {shape} drawn {where}",
    "{Where}, a {size} {colour} {shape}",
)
CAPTION_TEMPLATES = _FULL_TEMPLATES + (
    "a {colour} {shape}",
    "a {size} {colour} {shape}",
    "a {colour} {shape} {where}",
    "a picture of a {colour} {shape}",
    "an image of a {size} {colour} {shape} on a grey background",
    "a {shape} coloured {colour}",
    "{colour} {shape}",
    "one {colour} {shape} {where}",
    "the {shape} is {colour}",
    "a drawing of a {size} {colour} {shape}",
    "a {colour} {shape} on a noisy background",
    "a simple {colour} {shape}",
    "a {size} {shape}, coloured {colour}",
    "{colour} {shape} {where}",
)
_SECOND_TEMPLATES = (" and a {second}", " with a {second}", ", plus a {second} {where}",
                     " next to a {second}")
_A_BEFORE_VOWEL = re.compile(r"\b([Aa]) (?=[aeiou])")


def describe(scene: Scene, rng: np.random.Generator, num_captions: int) -> list[str]:
    """`num_captions` distinct true captions, each from another template, the first a full one.

    Each names the main object's colour and shape (or a synonym from SHAPE_WORDS); when there
    is a second object, each also names it ("... and a small blue square").
    """
    first = int(rng.integers(len(_FULL_TEMPLATES)))
    rest = [t for t in range(len(CAPTION_TEMPLATES)) if t != first]
    chosen = [first, *rng.permutation(rest)[: num_captions - 1].tolist()]
    return [_caption(CAPTION_TEMPLATES[t], scene, rng) for t in chosen]


def _caption(template: str, scene: Scene, rng: np.random.Generator) -> str:
    def pick(options):
        return options[rng.integers(len(options))]

    main, second = scene.main, scene.second
    where = pick(WHERE_PHRASES[main.position])
    text = template.format(
        size=pick(SIZE_WORDS[main.size]), colour=COLOURS[main.colour],
        shape=pick(SHAPE_WORDS[main.shape]), where=where, Where=where[0].upper() + where[1:],
        place=POSITIONS[main.position].capitalize(),
    )
    if second is not None:
        words = (f"{pick(SIZE_WORDS[second.size])} {COLOURS[second.colour]} "
                 f"{pick(SHAPE_WORDS[second.shape])}")
        text += pick(_SECOND_TEMPLATES).format(second=words,
                                               where=pick(WHERE_PHRASES[second.position]))
    return _A_BEFORE_VOWEL.sub(r"\1n ", text)


class Shapes:
    """The captioned-shapes split as a random-access source (grain's `__len__`/`__getitem__`).

    A record is a plain picklable dict: `key`, `image` (uint8 `(H, W, 3)`), `captions`
    (`num_captions` distinct strings), `text` (the primary caption, `captions[0]`), the main
    object's `shape`, `colour`, `size`, `position` (indices into SHAPES, COLOURS, SIZES,
    POSITIONS), `held_out` (its colour+shape pair never occurs in "train"), `label` (the shape,
    the default zero-shot task) and `shape_colour` (the "shape_colour" task's label).

    **Arguments:**

    - `split`: "train" (seen pairs), "val" (seen pairs, other samples) or "test" (half of the
      main objects from held-out pairs).
    - `num_samples`: the split's nominal length (default DEFAULT_NUM_SAMPLES[split]). Any
      length works: samples are drawn on demand, and the first `n` are the same for every `n`.
    - `config`: how images and captions are drawn.
    """

    def __init__(self, split: str = "train", *, num_samples: int | None = None,
                 config: ShapesConfig = ShapesConfig()):
        split_id(split)
        self.split = split
        self.num_samples = DEFAULT_NUM_SAMPLES[split] if num_samples is None else num_samples
        if self.num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {self.num_samples}")
        self.config = config

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return f"Shapes({self.split!r}, num_samples={self.num_samples}, config={self.config})"

    def _index(self, index: int) -> int:
        index = int(index)
        if index < 0:
            index += self.num_samples
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for the {self.num_samples} samples of "
                             f"shapes {self.split!r}: pass num_samples to make it longer")
        return index

    def scene(self, index: int) -> Scene:
        """What sample `index` shows, without drawing it."""
        return sample_scene(_rng(self.config, self.split, self._index(index)), self.split,
                            self.config)

    def __getitem__(self, index: int) -> dict:
        index = self._index(index)
        rng = _rng(self.config, self.split, index)
        scene = sample_scene(rng, self.split, self.config)
        captions = describe(scene, rng, self.config.num_captions)
        main = scene.main
        return {
            "key": f"shapes-{self.split}-{index:08d}",
            "image": draw(scene, self.config.noise),
            "captions": captions,
            "text": captions[0],
            "shape": main.shape,
            "colour": main.colour,
            "size": main.size,
            "position": main.position,
            "held_out": scene.held_out,
            "label": main.shape,
            "shape_colour": label_shape_colour(main.shape, main.colour),
        }


def held_out_mask(keys: list[str], *, config: ShapesConfig = ShapesConfig()) -> np.ndarray:
    """Whether each sample, named by its record key (`shapes-{split}-{index}`), shows a
    colour+shape pair that "train" never shows: to score compositional generalisation apart."""
    held = []
    for key in keys:
        match = re.fullmatch(r"shapes-(\w+)-(\d+)", key)
        if match is None:
            raise ValueError(f"{key!r} is not a shapes record key (shapes-SPLIT-INDEX): "
                             "held_out_mask reads only the embedded dataset's samples")
        split, index = match.group(1), int(match.group(2))
        held.append(Shapes(split, num_samples=index + 1, config=config).scene(index).held_out)
    return np.asarray(held, bool)


def label_shape_colour(shape: int, colour: int) -> int:
    """The "shape_colour" class: `colour * len(SHAPES) + shape`, as ordered by zeroshot_task."""
    return colour * len(SHAPES) + shape


class ZeroShotTask(NamedTuple):
    """Class names, prompt templates (`template.format(classname)`) and the record's label key."""

    classnames: list[str]
    templates: list[str]
    label_key: str


# No article right before "{}": "a orange circle" would be wrong.
_OBJECT_TEMPLATES = ["a photo of the {}.", "a picture of the {}.", "the {} shape.",
                     "an image showing the {}.", "a drawing of the {}.",
                     "the {} on a grey background.", "{}."]
_COLOUR_TEMPLATES = ["the {} shape.", "a photo of the {} object.", "something {}.",
                     "a shape coloured {}.", "the {} thing on a grey background.",
                     "a drawing in {}."]
ZEROSHOT_TASKS = ("shape", "colour", "shape_colour")


def zeroshot_task(name: str = "shape") -> ZeroShotTask:
    """A zero-shot classification task on this dataset: "shape", "colour" or "shape_colour".

    Labels are `record[task.label_key]` (or `label(record, name)`); "shape_colour" classes are
    "red circle", "red square", ..., in the order of `label_shape_colour`.
    """
    if name == "shape":
        return ZeroShotTask(list(SHAPES), list(_OBJECT_TEMPLATES), "shape")
    if name == "colour":
        return ZeroShotTask(list(COLOURS), list(_COLOUR_TEMPLATES), "colour")
    if name == "shape_colour":
        names = [f"{c} {s}" for c in COLOURS for s in SHAPES]
        return ZeroShotTask(names, list(_OBJECT_TEMPLATES), "shape_colour")
    raise ValueError(f"unknown shapes zero-shot task {name!r}: choose one of {ZEROSHOT_TASKS}")


def label(record: dict, task: str = "shape") -> int:
    """The record's class index in `zeroshot_task(task).classnames`."""
    return int(record[zeroshot_task(task).label_key])


def captions_corpus(num_samples: int = 10_000, *, config: ShapesConfig = ShapesConfig()
                    ) -> list[str]:
    """Text for training a tokenizer: every word the captions and prompts can use.

    First one caption per template with every synonym and place cycled through (so even a
    small corpus covers the vocabulary), then the zero-shot prompts of every task, then the
    captions of the first `num_samples` "train" scenes (no image is drawn).
    """
    shapes = [w for words in SHAPE_WORDS for w in words]
    sizes = [w for words in SIZE_WORDS for w in words]
    wheres = [w for words in WHERE_PHRASES for w in words]
    corpus = []
    for i in range(max(len(CAPTION_TEMPLATES), len(shapes), len(sizes), len(wheres))):
        where, other = wheres[i % len(wheres)], wheres[(i + 5) % len(wheres)]
        text = CAPTION_TEMPLATES[i % len(CAPTION_TEMPLATES)].format(
            size=sizes[i % len(sizes)], colour=COLOURS[i % len(COLOURS)],
            shape=shapes[i % len(shapes)], where=where, Where=where[0].upper() + where[1:],
            place=POSITIONS[i % len(POSITIONS)].capitalize())
        second = f"small {COLOURS[(i + 1) % len(COLOURS)]} {shapes[(i + 1) % len(shapes)]}"
        text += _SECOND_TEMPLATES[i % len(_SECOND_TEMPLATES)].format(second=second, where=other)
        corpus.append(_A_BEFORE_VOWEL.sub(r"\1n ", text))
    for name in ZEROSHOT_TASKS:
        task = zeroshot_task(name)
        corpus.extend(t.format(c) for t in task.templates for c in task.classnames)
    for index in range(num_samples):
        rng = _rng(config, "train", index)
        corpus.extend(describe(sample_scene(rng, "train", config), rng, config.num_captions))
    return corpus


def caption_pairs(num_samples: int = 2_000, *, config: ShapesConfig = ShapesConfig()
                  ) -> list[tuple[str, str]]:
    """Two different true captions of each of the first `num_samples` "train" scenes.

    CLIPPO's text-pair co-training needs pairs of related texts; the shapes dataset has no
    documents, so two descriptions of the same image stand in for consecutive sentences. No
    image is drawn.
    """
    pairs = []
    for index in range(num_samples):
        rng = _rng(config, "train", index)
        first, second = describe(sample_scene(rng, "train", config), rng, 2)
        pairs.append((first, second))
    return pairs
