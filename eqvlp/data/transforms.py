"""Image preprocessing: decode, augment or centre-crop on the host, normalise on the device.

The host side (Pillow and NumPy) runs once per sample in grain worker processes, so every
function here is pure (randomness comes from a passed `np.random.Generator`) and picklable
(module-level functions and frozen dataclasses). Images cross to the device as uint8 `(h, w, 3)`
arrays, four times smaller than float32, and `normalize_images` maps them to floats under jit.

Sizes are `(height, width)` (or one int for a square), as elsewhere in eqvlp; Pillow's own
`(width, height)` order stays inside this file.

Most of the decoding time is saved by JPEG draft mode: libjpeg can scale by 1/2, 1/4 or 1/8
while decoding the DCT blocks, so `decode_image(data, target=size)` reads a 1024 px photo as a
256 px one when the crop is 224 px. Crops are array slices and resizes are OpenCV's
(`resize`): about 0.12 ms for a 240 px crop to 224 px against 1.1-1.4 ms for Pillow's bicubic on
this project's 2-core CPU, which made the resize, not the decode, the pipeline's bottleneck.
"""

import dataclasses
import io
import math
import struct

import cv2
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Shaped, UInt8
from PIL import Image

# One OpenCV thread per process: the pipeline's parallelism comes from grain's workers, and
# OpenCV's own thread pool would oversubscribe the cores inside every worker.
cv2.setNumThreads(1)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGNED_MEAN = (0.5, 0.5, 0.5)
SIGNED_STD = (0.5, 0.5, 0.5)

_NORMALIZATIONS = {
    "clip": (CLIP_MEAN, CLIP_STD),
    "signed": (SIGNED_MEAN, SIGNED_STD),
    "minus_one_one": (SIGNED_MEAN, SIGNED_STD),
}

# What Pillow raises on bad data: UnidentifiedImageError and "image file is truncated" are
# OSErrors, broken headers raise SyntaxError, some plugins leak struct/EOF/value errors, and
# images over twice Image.MAX_IMAGE_PIXELS raise DecompressionBombError.
_DECODE_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error,
    Image.DecompressionBombError,
)
_JPEG_FORMATS = ("JPEG", "MPO")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
_WHITE = (255, 255, 255)
# ITU-R 601-2 luma, the weights of Pillow's and torchvision's grayscale.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else map(int, size)
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive (height, width), got {size}")
    return height, width


def decode_image(data: bytes, *, target: int | tuple[int, int] | None = None) -> Image.Image:
    """Decodes image bytes (JPEG, PNG, WebP, anything Pillow reads) to an RGB image.

    **Arguments:**

    - `data`: the encoded file.
    - `target`: the `(height, width)` the image will be cropped to. A JPEG at least twice as
      large on both sides is then decoded at 1/2, 1/4 or 1/8 scale (libjpeg's draft mode),
      never below `target` on either side: the largest saving in the input pipeline.

    Transparent images (RGBA, LA, palette with transparency) are composited on white, as web
    pages show them; dropping the alpha channel would expose whatever colour the transparent
    pixels happen to hold, often black. 16-bit grayscale keeps its top 8 bits; CMYK, grayscale
    and palette images are converted by Pillow.

    **Returns:** a fully loaded RGB `PIL.Image.Image`.

    **Raises:** `ValueError("corrupt image: ...")` for unreadable, truncated or oversized
    (decompression bomb) data, so that a pipeline can count the reason and skip the sample.
    """
    target_hw = None if target is None else _hw(target)
    try:
        image = Image.open(io.BytesIO(data))
        if target_hw is not None and image.format in _JPEG_FORMATS:
            height, width = target_hw
            image.draft("RGB", (width, height))
        image.load()  # decode now: a truncated file fails here, not in a later resize
        return _to_rgb(image)
    except _DECODE_ERRORS as e:
        raise ValueError(f"corrupt image: {type(e).__name__}: {e}") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in _SIXTEEN_BIT_MODES:
        gray = np.asarray(image).astype(np.int32) >> 8
        return Image.fromarray(np.clip(gray, 0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


@dataclasses.dataclass(frozen=True)
class ImageAugment:
    """Training-time augmentation: a random resized crop, then an optional flip and jitter.

    - `scale`: range of the crop's area as a fraction of the image's. `(0.9, 1.0)` is
      open_clip's default; torchvision's ImageNet default is `(0.08, 1.0)`.
    - `ratio`: range of the crop's width / height, sampled uniformly in log space.
    - `flip`: mirror left-right with probability 1/2 (off for CLIP: captions say "left").
    - `colour_jitter`: strength `s` of brightness, contrast and saturation jitter, each factor
      drawn uniformly from `[max(0, 1 - s), 1 + s]` (torchvision's `ColorJitter(s, s, s)`,
      applied in that fixed order). 0 turns it off.
    """

    scale: tuple[float, float] = (0.9, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = False
    colour_jitter: float = 0.0

    def __post_init__(self):
        for name in ("scale", "ratio"):
            value = getattr(self, name)
            if len(value) != 2:
                raise ValueError(f"ImageAugment.{name} must be a (low, high) pair, got {value}")
            object.__setattr__(self, name, (float(value[0]), float(value[1])))
        low, high = self.scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(
                f"ImageAugment.scale must satisfy 0 < low <= high <= 1 (fractions of the image "
                f"area), got {self.scale}: open_clip uses (0.9, 1.0), ImageNet (0.08, 1.0)"
            )
        low, high = self.ratio
        if not 0.0 < low <= high:
            raise ValueError(
                f"ImageAugment.ratio must satisfy 0 < low <= high (width / height), got "
                f"{self.ratio}: the usual range is (3/4, 4/3)"
            )
        if not isinstance(self.flip, bool):
            raise ValueError(f"ImageAugment.flip must be a bool, got {self.flip!r}")
        if not (math.isfinite(self.colour_jitter) and self.colour_jitter >= 0.0):
            raise ValueError(
                f"ImageAugment.colour_jitter must be >= 0 (0 turns it off), got "
                f"{self.colour_jitter}"
            )


def sample_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box: `(left, top, right, bottom)` in pixels.

    Up to 10 tries draw an area fraction uniformly from `scale` and a width / height ratio
    log-uniformly from `ratio`, and keep the first crop that fits, placed uniformly at random.
    If none fits (an extreme aspect ratio), the fallback is the largest central crop whose
    ratio is clamped into `ratio`.
    """
    area = width * height
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_low, log_high))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def resize(
    image: UInt8[np.ndarray, "h w 3"],
    size: int | tuple[int, int],
    box: tuple[int, int, int, int] | None = None,
) -> UInt8[np.ndarray, "h2 w2 3"]:
    """Resizes `image[top:bottom, left:right]` (`box = (left, top, right, bottom)`) to `size`.

    Bicubic (OpenCV's, a = -0.75) when each side shrinks by less than 2x or grows; area
    averaging when it shrinks more, so that large reductions do not alias (JPEG draft mode
    already leaves decoded images within 2x of the output in the usual case).
    """
    height, width = _hw(size)
    if box is not None:
        left, top, right, bottom = box
        image = image[top:bottom, left:right]
    if image.shape[:2] == (height, width):
        return np.ascontiguousarray(image)
    shrink = min(image.shape[0] / height, image.shape[1] / width)
    method = cv2.INTER_AREA if shrink >= 2.0 else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=method)


def random_resized_crop(
    image: Image.Image | UInt8[np.ndarray, "h w 3"],
    size: int | tuple[int, int],
    *,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> UInt8[np.ndarray, "h2 w2 3"]:
    """Crops a random box (`sample_crop_box`) and resizes it to `size` (`resize`)."""
    array = _rgb_array(image)
    box = sample_crop_box(array.shape[1], array.shape[0], scale, ratio, rng)
    return resize(array, size, box)


def _rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image if image.mode == "RGB" else _to_rgb(image))
    return image


def augment_image(
    image: Image.Image | UInt8[np.ndarray, "h w 3"], size: int | tuple[int, int],
    augment: ImageAugment, rng: np.random.Generator,
) -> UInt8[np.ndarray, "out_h out_w 3"]:
    """The training view of one image: random resized crop, optional flip and colour jitter.

    **Arguments:**

    - `image`: a decoded image (e.g. `decode_image(data, target=size)`); not RGB is converted.
    - `size`: the output `(height, width)`, or one int for a square.
    - `augment`: what to do.
    - `rng`: the only source of randomness, so the same generator state gives the same view.

    **Returns:** a uint8 `(height, width, 3)` array.
    """
    array = random_resized_crop(image, size, scale=augment.scale, ratio=augment.ratio, rng=rng)
    if augment.flip and rng.random() < 0.5:
        array = np.ascontiguousarray(array[:, ::-1])
    if augment.colour_jitter > 0.0:
        array = colour_jitter(array, augment.colour_jitter, rng)
    return array


def colour_jitter(
    image: UInt8[np.ndarray, "h w 3"], strength: float, rng: np.random.Generator
) -> UInt8[np.ndarray, "h w 3"]:
    """Random brightness, contrast and saturation, as torchvision's `ColorJitter(s, s, s)`.

    Each factor is drawn from `[max(0, 1 - s), 1 + s]`; the image is blended with black
    (brightness), its mean gray level (contrast) and its own grayscale (saturation), in that
    order, clipping to [0, 255] after each step as torchvision does for uint8 images.
    """
    low, high = max(0.0, 1.0 - strength), 1.0 + strength
    brightness, contrast, saturation = (np.float32(f) for f in rng.uniform(low, high, size=3))
    x = image.astype(np.float32)
    x *= brightness
    np.clip(x, 0.0, 255.0, out=x)
    mean = np.float32((x @ _LUMA).mean())
    x *= contrast
    x += (np.float32(1.0) - contrast) * mean
    np.clip(x, 0.0, 255.0, out=x)
    gray = (x @ _LUMA)[..., None]
    x *= saturation
    x += (np.float32(1.0) - saturation) * gray
    np.clip(x, 0.0, 255.0, out=x)
    return np.rint(x, out=x).astype(np.uint8)


def eval_image(
    image: Image.Image | UInt8[np.ndarray, "h w 3"], size: int | tuple[int, int]
) -> UInt8[np.ndarray, "out_h out_w 3"]:
    """The evaluation view: resize (bicubic) to cover `size`, then take the centre crop.

    For a square `size` this is CLIP's eval transform, `Resize(size)` on the shorter side then
    `CenterCrop(size)`; for `(height, width)` the image is scaled so that it covers both sides,
    keeping its aspect ratio.
    """
    height, width = _hw(size)
    array = _rgb_array(image)
    factor = max(height / array.shape[0], width / array.shape[1])
    # int() truncates as torchvision's Resize does; max() guards against 223.99999 -> 223
    new_h = max(height, int(array.shape[0] * factor))
    new_w = max(width, int(array.shape[1] * factor))
    top = int(round((new_h - height) / 2.0))
    left = int(round((new_w - width) / 2.0))
    return resize(array, (new_h, new_w))[top:top + height, left:left + width].copy()


def to_pil(array: Shaped[np.ndarray, "h w 3"]) -> Image.Image:
    """An RGB Pillow image from a uint8 `(h, w, 3)` array, for datasets held in memory."""
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(
            f"to_pil expects a uint8 (height, width, 3) array, got {array.dtype} "
            f"{array.shape}: convert floats with (x * 255).round().astype(np.uint8)"
        )
    return Image.fromarray(np.ascontiguousarray(array))


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """`(mean, std)` in [0, 1] units by name.

    - `"clip"`: OpenAI CLIP's per-channel statistics (open_clip, CLIP-rocket, CLIPA).
    - `"signed"` (alias `"minus_one_one"`): maps [0, 255] to [-1, 1], big_vision's
      `value_range(-1, 1)` (SigLIP, CLIPPO).
    """
    try:
        return _NORMALIZATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown normalisation {name!r}: use one of {sorted(_NORMALIZATIONS)}, or pass "
            "mean and std to normalize_images"
        ) from None


def normalize_images(
    images: UInt8[Array, "*batch h w 3"],
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
    dtype=jnp.float32,
) -> Float[Array, "*batch h w 3"]:
    """`(images / 255 - mean) / std` on the device, computed in float32 then cast to `dtype`.

    Written as `(x - 255 mean) / (255 std)` so that the signed normalisation is exact:
    0 -> -1, 255 -> 1.
    """
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need one value per RGB channel, got {mean} and {std}")
    shift = jnp.asarray(np.float32(255.0) * np.asarray(mean, np.float32))
    divisor = jnp.asarray(np.float32(255.0) * np.asarray(std, np.float32))
    return ((images.astype(jnp.float32) - shift) / divisor).astype(dtype)
