"""Compressed TIFF tiles of one pyramid level, made on a thread pool.

Both TIFF writers (tifffile with SubIFDs, and the COG writer) take their tiles from
here as finished deflate streams (TIFF Compression 8), so compression runs on every
core while one thread places the bytes: the next tile row is read from the store and
compressed while the current one is written. libdeflate (imagecodecs) when installed,
else zlib; both release the GIL.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future

import numpy as np

Rows = Callable[[int, int, int], np.ndarray]  # (level, y0, y1) -> (y1 - y0, W, C)


def deflate() -> Callable[[bytes], bytes]:
    try:
        import imagecodecs

        imagecodecs.deflate_encode(b"probe", level=6)
    except Exception:  # not installed, or built without libdeflate
        return lambda raw: zlib.compress(raw, 6)
    return lambda raw: imagecodecs.deflate_encode(raw, level=6)


def encoded_tiles(
    rows: Rows,
    level: int,
    shape: tuple[int, int],
    tile: int,
    channels: int,
    dtype: str,
    pool: Executor,
) -> Iterator[bytes]:
    """Tiles of ``level`` (``shape`` = its (h, w)) in row-major order, each a
    ``tile`` x ``tile`` x ``channels`` little-endian block (edge tiles zero-padded),
    deflate-compressed."""
    h, w = shape
    dt = np.dtype(dtype).newbyteorder("<")
    encode = deflate()
    tiles_x = (w + tile - 1) // tile

    def job(block: np.ndarray) -> bytes:
        return encode(np.ascontiguousarray(block, dt).tobytes())

    pending: list[Future[bytes]] = []
    for y in range(0, h, tile):
        band = rows(level, y, min(h, y + tile))
        band = band.reshape(band.shape[0], band.shape[1], channels)
        band = np.pad(band, ((0, tile - band.shape[0]), (0, tiles_x * tile - w), (0, 0)))
        submitted = [pool.submit(job, band[:, x * tile : (x + 1) * tile]) for x in range(tiles_x)]
        for fut in pending:
            yield fut.result()
        pending = submitted
    for fut in pending:
        yield fut.result()
