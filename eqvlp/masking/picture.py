"""Pictures of image masks: which patches a mask keeps, for docs and debugging."""

import numpy as np

from eqvlp.nn.patch_embedding import as_pair


def draw_kept_patches(
    image: np.ndarray,
    indices: np.ndarray,
    patch_size: int | tuple[int, int],
    *,
    dropped_brightness: int = 40,
) -> np.ndarray:
    """The uint8 `(H, W, 3)` image with every patch not in `indices` painted dark."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    (ph, pw), (h, w) = as_pair(patch_size), image.shape[:2]
    grid_w = w // pw
    keep = np.zeros((h // ph) * grid_w, bool)
    keep[np.asarray(indices)] = True
    pixel_keep = np.kron(keep.reshape(h // ph, grid_w), np.ones((ph, pw), bool))
    out = np.where(pixel_keep[..., None], image, np.uint8(dropped_brightness))
    out[::ph, :] = out[::ph, :] // 2  # faint grid lines show the patches
    out[:, ::pw] = out[:, ::pw] // 2
    return out.astype(np.uint8)
