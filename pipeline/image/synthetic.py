"""A built-in synthetic test image, so the first run needs no download.

Smooth gradients, sharp edges, fine stripes and a checkerboard: enough structure to see
that tiles are stitched without seams and edges stay put.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.formats import image_format


def sample_image(width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8 RGB test pattern."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = x / max(width - 1, 1), y / max(height - 1, 1)
    r = 0.5 + 0.5 * np.sin(2 * np.pi * (3 * u + v))
    g = v
    b = 0.5 + 0.5 * np.cos(2 * np.pi * 40 * u * u)  # chirp: stripes getting finer
    img = np.stack([r, g, b], axis=-1)
    checker = ((x // 16 + y // 16) % 2).astype(np.float32)[..., None]
    cy, cx, rad = height * 0.5, width * 0.5, min(width, height) * 0.3
    disc = ((x - cx) ** 2 + (y - cy) ** 2 < rad**2)[..., None]
    img = np.where(disc, 0.3 + 0.4 * checker, img)
    return np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_sample(path: str | Path, width: int = 640, height: int = 480) -> None:
    p = Path(path)
    if width < 1 or height < 1 or width * height > 400_000_000:
        raise UserError(f"sample size {width}x{height} must be positive and at most 400 MP")
    p.parent.mkdir(parents=True, exist_ok=True)
    image = sample_image(width, height)
    if image_format(p) == "tiff":
        import tifffile

        tifffile.imwrite(p, image, tile=(256, 256), bigtiff=True, photometric="rgb")
    elif image_format(p) == "png":
        from PIL import Image

        Image.fromarray(image).save(p)
    else:
        raise UserError(f"sample path {p} must end in .png or .tif")
