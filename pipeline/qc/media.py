"""Reading the two files qc compares: still images whole, videos one frame at a time.

Any pair works, not only this pipeline's outputs: PNG/JPEG/TIFF by extension (shown
orientation applied, as the pipeline does), anything else through PyAV. Frames come out
as RGB HxWx3 arrays in their stored depth (uint8 / uint16; float32 in [0, 1] for float
TIFFs) with their display time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.formats import IMAGE_FILES, image_format
from pipeline.qc.metrics import to_float


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_FILES


def _rgb(image: np.ndarray) -> np.ndarray:
    """HxW / HxWxC (1-4 channels) -> HxWx3 uint8/uint16 (others: float32 [0, 1]): grey
    repeated, alpha dropped."""
    if image.ndim == 2:
        image = image[..., None]
    image = image[..., :3] if image.shape[2] >= 3 else image[..., :1]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    if image.dtype not in (np.uint8, np.uint16):
        image = to_float(image)
    return np.ascontiguousarray(image)


def read_image(path: Path) -> np.ndarray:
    """The whole image as shown, HxWx3 (see ``_rgb``)."""
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        if image_format(path) == "tiff":
            import tifffile

            return _rgb(np.asarray(tifffile.imread(path)))
        from PIL import Image, ImageOps

        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode not in ("L", "RGB", "RGBA", "I;16"):
                im = im.convert("RGB")
            return _rgb(np.asarray(im))
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{path}: cannot read the image ({exc})") from exc


def video_size(path: Path) -> tuple[int, int]:
    """(height, width) of the first video stream; a one-line error for a non-video."""
    import av

    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise UserError(f"{path}: no video stream")
            s = c.streams.video[0]
            return s.codec_context.height, s.codec_context.width
    except av.error.FFmpegError as exc:
        raise UserError(f"{path}: cannot read it as a video ({exc})") from exc


def iter_video(
    path: Path, wanted: Callable[[int], bool] | None = None
) -> Iterator[tuple[float, np.ndarray | None]]:
    """(time_s, HxWx3 uint8 or uint16) per frame of the first video stream, display order;
    the pixels are None for a frame index ``wanted`` refuses (decoded, not converted).
    Decoding is threaded; only the current frame is held."""
    import av

    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(c.decode(stream)):
            t = float(frame.time) if frame.time is not None else float("nan")
            if wanted is not None and not wanted(i):
                yield t, None
                continue
            deep = frame.format.components[0].bits > 8
            rgb = frame.to_ndarray(format="rgb48le" if deep else "rgb24")
            yield t, rgb
