"""The job store: one Zarr v3 group per job holding all of its state.

Every array and attribute of a job store is declared here (DESIGN.md section 3):

- ``input`` (T, H, W, C) and ``output`` (T, sH, sW, C), whose shards are exactly one
  region each;
- ``done`` (T, rows, cols): a region's flag, written only by the driver after the
  region's shard is written;
- ``ingested`` (units,): a flag per ingest unit (a video's segments; one for an image),
  set by the driver once the unit's frames are in ``input``;
- ``encoded`` (units,): a video segment's flag, set by the driver once its encoded file
  ``segments/<i>.seg`` is committed; the segment's frames are then freed (unless
  ``video.keep_frames``) and a resume never redoes it;
- ``degradation_raw`` and ``degradation`` (T, 2) float32: S3Diff's estimated and final
  per-frame scores (only for models conditioned on them); ``shot_signatures`` (T, K)
  and ``shot`` (T,): shot-mode conditioning's frame signatures and shot indices;
- ``pyramid/<level>`` (h, w, C): the image pyramid above level 0 (level 0 is ``output``);
- ``progress.json``: the driver's progress record, for ``status``;
- attributes: the format version, the job spec and the layout. Resume is
"open the same store again": the spec must match, and regions without a flag are
redone. A lock file keeps two drivers off one local store; a lease object does the same on
an object store (``store.lock``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.config import SCRATCH_CODECS
from pipeline.errors import UserError
from pipeline.pure.tiling import region_counts
from pipeline.store.lock import FileLock, Lease
from pipeline.store.urls import filesystem, is_remote, local_path, zarr_kwargs

FORMAT_VERSION = 3  # 3: the layout says which channel is alpha and whether RGB
PROGRESS_KEY = "progress.json"
DONE_CHUNK_FRAMES = 256  # frames per chunk of the region flags (one file per chunk)


def scratch_codecs(name: str) -> Any:
    """zarr ``compressors`` for a ``store.codec`` name (None: stored uncompressed)."""
    from zarr.codecs import BloscCodec, ZstdCodec

    if name == "none":
        return None
    if name.startswith("zstd-"):
        return (ZstdCodec(level=int(name.removeprefix("zstd-"))),)
    if name == "blosc-lz4":
        return (BloscCodec(cname="lz4", clevel=1, shuffle="noshuffle"),)
    if name == "blosc-zstd-1":
        return (BloscCodec(cname="zstd", clevel=1, shuffle="noshuffle"),)
    raise UserError(f"store.codec {name!r} is not one of {', '.join(SCRATCH_CODECS)}")


def _canonical(path: str | Path) -> str:
    return str(path) if is_remote(path) else str(local_path(str(path)).resolve())


def job_id(input_path: str | Path, output_path: str | Path) -> str:
    key = f"{_canonical(input_path)}\n{_canonical(output_path)}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def safe_name(name: str) -> str:
    """A file name made of letters, digits, ``._-`` only: it cannot name another
    directory (no separators, no ``..``) or change a URL's meaning (``?``, ``#``, ``%``)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return name or "output"


def default_store_url(input_path: str, output_path: str, work_dir: str | None) -> str:
    """Next to the output by default; under --work-dir (a path or URL) when given. The
    store is always a direct child of that directory."""
    if work_dir is None and is_remote(output_path):
        return output_path.rstrip("/") + ".job.zarr"
    out = local_path(output_path)
    if work_dir is None:
        return str(out.parent.resolve() / f"{out.name}.job.zarr")
    name = f"{safe_name(out.name)}-{job_id(input_path, output_path)}.job.zarr"
    if is_remote(work_dir):
        return work_dir.rstrip("/") + "/" + name
    return str(Path(work_dir).resolve() / name)


def is_local(url: str) -> bool:
    return not is_remote(url)


@dataclass(frozen=True)
class Layout:
    """Shapes of the store's arrays, derived from the input and the config, and what
    the channels mean: ``alpha`` — the last channel is alpha (the file said so);
    ``rgb`` — three colour channels are RGB. Every other channel is an independent band
    that the model sees as gray, one at a time. ``dtype`` is the input's own: unsigned,
    or signed/float samples that the worker normalises by a range."""

    frames: int
    height: int
    width: int
    channels: int
    dtype: str
    scale: int
    region_out_px: int
    chunk_out_px: int
    alpha: bool = False
    rgb: bool = True
    premultiplied: bool = False  # the alpha is associated (colours premultiplied by it)
    nodata: float | None = None  # GDAL's nodata value (pipeline/image/nodata.py); NaN is implicit
    codec: str = "zstd-0"  # the input and output arrays' codec (``scratch_codecs``)

    @property
    def colour(self) -> bool:
        """Whether the image channels go through the model together, as RGB."""
        return self.rgb and self.channels - self.alpha == 3

    @property
    def region_lr_px(self) -> int:
        return self.region_out_px // self.scale

    @property
    def regions(self) -> tuple[int, int]:
        return region_counts(self.height, self.width, self.region_lr_px)

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        s = self.scale
        return (self.frames, self.height * s, self.width * s, self.channels)


class JobStore:
    """Opened job store; arrays are opened lazily so tasks can build one cheaply."""

    def __init__(self, url: str, group: zarr.Group) -> None:
        self.url = url
        self.group = group
        self._arrays: dict[str, zarr.Array] = {}
        self._lock: FileLock | Lease | None = None

    # ----------------------------------------------------------------- open/create
    @classmethod
    def open(cls, url: str, mode: str = "r+") -> JobStore:
        return cls(url, zarr.open_group(**zarr_kwargs(url), mode=mode))

    @classmethod
    def exists(cls, url: str) -> bool:
        if is_local(url):
            return (local_path(url) / "zarr.json").exists()
        try:
            zarr.open_group(**zarr_kwargs(url), mode="r")
            return True
        except Exception:  # missing group: zarr raises FileNotFoundError or its own type
            return False

    @classmethod
    def is_job_store(cls, url: str) -> bool:
        """A store this tool made (never delete or overwrite anything else)."""
        try:
            attrs = zarr.open_group(**zarr_kwargs(url), mode="r").attrs
        except Exception:  # not a Zarr group at all
            return False
        return "format_version" in attrs

    @classmethod
    def create(
        cls, url: str, spec: dict[str, Any], layout: Layout, ingest_units: int = 1
    ) -> JobStore:
        # The marker first: a store cut short while being created is still known as ours
        # (and made again on the next run: it has no spec yet).
        group = zarr.open_group(
            **zarr_kwargs(url), mode="w", attributes={"format_version": FORMAT_VERSION}
        )
        t, h, w, c = layout.frames, layout.height, layout.width, layout.channels
        chunk_lr = max(16, layout.chunk_out_px // layout.scale)
        group.create_array(
            "input",
            shape=(t, h, w, c),
            dtype=layout.dtype,
            chunks=(1, min(h, chunk_lr * 4), min(w, chunk_lr * 4), c),
            fill_value=0,
            compressors=scratch_codecs(layout.codec),
        )
        _, sh, sw, _ = layout.out_shape
        r, ch = layout.region_out_px, layout.chunk_out_px
        group.create_array(
            "output",
            shape=layout.out_shape,
            dtype=layout.dtype,
            shards=(1, r, r, c),
            chunks=(1, ch, ch, c),
            fill_value=0,
            compressors=scratch_codecs(layout.codec),
        )
        rows, cols = layout.regions
        group.create_array(
            "done",
            shape=(t, rows, cols),
            dtype="uint8",
            chunks=(min(t, DONE_CHUNK_FRAMES), rows, cols),
            fill_value=0,
        )
        units = max(1, ingest_units)
        for name in ("ingested", "encoded"):
            group.create_array(name, shape=(units,), dtype="uint8", chunks=(units,), fill_value=0)
        group.attrs.update(
            {"format_version": FORMAT_VERSION, "spec": spec, "layout": layout.__dict__}
        )
        return cls(url, group)

    # ------------------------------------------------------------------ metadata
    @property
    def spec(self) -> dict[str, Any]:
        return dict(self.group.attrs["spec"])

    @property
    def layout(self) -> Layout:
        return Layout(**self.group.attrs["layout"])

    def array(self, name: str) -> zarr.Array:
        """An array of the store, opened once (its metadata is read once per JobStore;
        the data is always read from the store)."""
        if name not in self._arrays:
            self._arrays[name] = self.group[name]
        return self._arrays[name]

    # --------------------------------------------------------------------- flags
    def done_mask(self) -> np.ndarray:
        return np.asarray(self.array("done")[...], dtype=bool)

    def mark_done_many(self, regions: list[tuple[int, int, int]]) -> None:
        """Driver only: the flags of these (frame, row, col) regions, in one write per
        chunk (``DoneFlags``)."""
        frames, rows, cols = (np.asarray(v) for v in zip(*regions, strict=True))
        self.array("done").set_coordinate_selection((frames, rows, cols), 1)

    def ingested_mask(self) -> np.ndarray:
        """(units,) bool: which ingest units (video segments; the image) are in."""
        return np.asarray(self.array("ingested")[...], dtype=bool)

    def mark_ingested(self, unit: int, value: bool = True) -> None:
        """Driver only, after the unit's frames were written."""
        self.array("ingested")[unit] = int(value)

    def encoded_mask(self) -> np.ndarray:
        """(units,) bool: which video segments have their encoded file committed."""
        return np.asarray(self.array("encoded")[...], dtype=bool)

    def mark_encoded(self, unit: int) -> None:
        """Driver only, after the segment's file was committed."""
        self.array("encoded")[unit] = 1

    # ------------------------------------------------------------ video segments
    def segment_path(self, unit: int) -> str:
        """Where segment ``unit``'s encoded packets live (a path or URL in the store)."""
        return f"{self.url.rstrip('/')}/segments/{unit:06d}.seg"

    def free_frames(self, start: int, stop: int) -> None:
        """Delete frames [start, stop) of ``input`` and ``output`` (their stored chunks or
        shards, so the space comes back) and clear their region flags: the frames are
        gone, their segment's encoded file holds them now."""
        from zarr.core.sync import sync

        local = local_path(self.url) if is_local(self.url) else None
        for name in ("input", "output"):
            arr = self.array(name)
            unit = arr.metadata.chunk_grid.chunk_shape  # the shard, where sharded
            grid = [-(-n // c) for n, c in zip(arr.shape, unit, strict=True)]
            path = arr.store_path
            for f in range(start, stop):
                # Locally a frame's shards are one folder ("c/<frame>/..."): removing it
                # leaves no empty folders behind for later walks of the store.
                folder = os.path.dirname(arr.metadata.encode_chunk_key((f, 0, 0, 0)))
                folder = os.path.dirname(os.path.dirname(folder))
                if local is not None and folder:
                    shutil.rmtree(local / path.path / folder, ignore_errors=True)
                    continue
                for i in range(grid[1]):
                    for j in range(grid[2]):
                        for k in range(grid[3]):
                            key = arr.metadata.encode_chunk_key((f, i, j, k))
                            sync(path.store.delete(f"{path.path}/{key}" if path.path else key))
        self.array("done")[start:stop] = 0

    def scratch_bytes(self) -> int:
        """Bytes the store holds now (frames in flight and encoded segments)."""
        if is_local(self.url):
            total = 0
            for root, _, files in os.walk(local_path(self.url)):
                for name in files:
                    try:
                        total += os.path.getsize(os.path.join(root, name))
                    except OSError:  # deleted meanwhile
                        pass
            return total
        fs, root = filesystem(self.url)
        return int(fs.du(root))

    # ------------------------------------------------------- conditioning, pyramid
    def degradation_arrays(self) -> tuple[zarr.Array, zarr.Array]:
        """(raw, final) per-frame degradation scores, (T, 2) float32, NaN until known;
        made on first use (only jobs whose model needs them have them)."""
        frames = self.layout.frames
        for name in ("degradation_raw", "degradation"):
            if name not in self.group:
                self.group.create_array(
                    name,
                    shape=(frames, 2),
                    dtype="float32",
                    chunks=(min(frames, 4096), 2),
                    fill_value=float("nan"),
                )
        return self.group["degradation_raw"], self.group["degradation"]

    def shot_arrays(self) -> tuple[zarr.Array, zarr.Array]:
        """(signatures (T, K) float32, NaN until known; shot (T,) int32, each frame's
        shot index, -1 until its shot is decided): shot-mode conditioning's state, made
        on first use; a resume finds the same shots from the same signatures."""
        from pipeline.pure.shots import SIGNATURE_LEN

        frames = self.layout.frames
        if "shot_signatures" not in self.group:
            self.group.create_array(
                "shot_signatures",
                shape=(frames, SIGNATURE_LEN),
                dtype="float32",
                chunks=(min(frames, 4096), SIGNATURE_LEN),
                fill_value=float("nan"),
            )
        if "shot" not in self.group:
            self.group.create_array(
                "shot", shape=(frames,), dtype="int32", chunks=(min(frames, 65536),),
                fill_value=-1,
            )  # fmt: skip
        return self.group["shot_signatures"], self.group["shot"]

    def has_degradation(self) -> bool:
        return "degradation" in self.group

    def create_pyramid(self, shapes: list[tuple[int, int]], tile: int) -> None:
        """Arrays for pyramid levels 1.. (``shapes[0]`` is level 0, the output)."""
        lay = self.layout
        group = self.group.require_group("pyramid")
        for level, (h, w) in enumerate(shapes[1:], start=1):
            if str(level) not in group:
                group.create_array(
                    str(level),
                    shape=(h, w, lay.channels),
                    dtype=lay.dtype,
                    chunks=(min(h, tile), min(w, tile), lay.channels),
                    fill_value=0,
                )

    def level(self, level: int) -> zarr.Array:
        """Pyramid level ``level`` as (h, w, C) (level 0 is frame 0 of ``output``)."""
        return self.group["output"] if level == 0 else self.group[f"pyramid/{level}"]

    # ---------------------------------------------------------------------- lock
    def lock(self) -> None:
        """Refuse a second driver on the same store: a file lock on a local store (released
        when the process dies), a heartbeat lease on an object store (stale when not
        renewed)."""
        if self._lock is None:
            held = (
                FileLock(local_path(self.url), self.url) if is_local(self.url) else Lease(self.url)
            )
            held.acquire()
            self._lock = held

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # ------------------------------------------------------------------ progress
    def write_progress(self, record: dict[str, Any]) -> None:
        write_progress(self.url, record)


def write_progress(store_url: str, record: dict[str, Any]) -> None:
    """Replace the store's ``progress.json`` (an atomic rename locally, one PUT remotely)."""
    text = json.dumps(record, indent=1, default=str)
    if is_local(store_url):
        path = local_path(store_url) / PROGRESS_KEY
        tmp = path.with_name(f".{PROGRESS_KEY}.{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
    else:
        fs, root = filesystem(store_url)
        fs.pipe(f"{root.rstrip('/')}/{PROGRESS_KEY}", text.encode())


def read_progress(store_url: str) -> dict[str, Any] | None:
    """The last progress record a driver wrote into this store, or None."""
    try:
        if is_local(store_url):
            return json.loads((local_path(store_url) / PROGRESS_KEY).read_text())
        fs, root = filesystem(store_url)
        return json.loads(fs.cat(f"{root.rstrip('/')}/{PROGRESS_KEY}"))
    except (OSError, ValueError):
        return None


def spec_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two spec dicts."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            diffs.extend(spec_differences(a, b, name + "."))
        elif json.dumps(a, sort_keys=True, default=str) != json.dumps(
            b, sort_keys=True, default=str
        ):
            diffs.append(name)
    return diffs


def open_for_job(
    url: str, spec: dict[str, Any], layout: Layout, restart: bool, ingest_units: int = 1
) -> JobStore:
    """Create the store, or reopen it for resume after checking it belongs to this job."""
    normalised = json.loads(json.dumps(spec, default=str))
    occupied = local_path(url).exists() if is_local(url) else JobStore.exists(url)
    if occupied and not JobStore.is_job_store(url):
        raise UserError(
            f"{url} exists and is not a job store; it is left alone: move it, or choose "
            "another output name or --work-dir"
        )
    complete = occupied and "spec" in JobStore.open(url, mode="r").group.attrs
    if complete and not restart:
        store = JobStore.open(url)
        if store.group.attrs.get("format_version") != FORMAT_VERSION:
            raise UserError(
                f"job store {url} has another format version; rerun with --restart to discard it"
            )
        diffs = spec_differences(store.spec, normalised)
        if diffs:
            raise UserError(
                f"job store {url} was made for a different job (differs in: "
                f"{', '.join(diffs[:6])}); rerun with --restart to discard it and start over"
            )
        store.lock()
        return store
    if JobStore.exists(url):
        old = JobStore.open(url)
        old.lock()  # never delete a store another driver is using
        remove_store(url)
        old.unlock()
    store = JobStore.create(url, normalised, layout, ingest_units)
    store.lock()
    return store


def remove_store(url: str) -> None:
    if is_local(url):
        shutil.rmtree(local_path(url), ignore_errors=True)
    else:
        fs, path = filesystem(url)
        if fs.exists(path):
            fs.rm(path, recursive=True)


class DoneFlags:
    """The driver's region flags, written in batches: the regions settled in one step of
    the loop (a worker call's batch, or what several workers returned at once) in one
    store write, before they are shown as done."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.pending: list[tuple[int, int, int]] = []

    def add(self, frame: int, row: int, col: int) -> None:
        self.pending.append((frame, row, col))

    def forget(self, start: int, stop: int) -> None:
        """Frames [start, stop) were freed (their flags cleared): drop theirs."""
        self.pending = [p for p in self.pending if not start <= p[0] < stop]

    def flush(self) -> None:
        if self.pending:
            self.store.mark_done_many(self.pending)
            self.pending = []
