"""Where inputs, outputs and job stores live: local paths, ``file://`` and object stores.

Object-store URLs (``s3://``, ``gs://``, ``az://``) go through fsspec and its backends
(s3fs, gcsfs, adlfs; optional extras). Credentials and endpoints come from each
backend's standard environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...), so
Ray workers started from the driver see the same configuration (``forwarded_env``
carries it to a cluster). Everything here is driver- and task-side plumbing at the
edges of the flow: probe and ingest read through ``open_input``/``av_input``/
``open_zarr``; ``pipeline.store.outputs`` writes locally and uploads
(an object appears only when its upload completes; an OME-Zarr's root ``zarr.json``
is written last).
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, Any

from pipeline.errors import UserError

log = logging.getLogger(__name__)

# scheme -> (fsspec backend package, our pyproject extra that installs it)
BACKENDS = {
    "s3": ("s3fs", "s3"),
    "s3a": ("s3fs", "s3"),
    "gs": ("gcsfs", None),
    "gcs": ("gcsfs", None),
    "az": ("adlfs", None),
    "abfs": ("adlfs", None),
    "abfss": ("adlfs", None),
}
# Environment the backends read; carried to Ray workers on a cluster.
FORWARDED_ENV_PREFIXES = ("AWS_", "GOOGLE_", "GCS_", "AZURE_", "FSSPEC_")
PART_BYTES = 64 * 2**20  # multipart upload part size for large outputs


# --------------------------------------------------------------------------- URLs
def scheme(path: str | os.PathLike) -> str:
    text = str(path)
    return text.split("://", 1)[0].lower() if "://" in text else ""


def is_url(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def is_remote(path: str | os.PathLike) -> bool:
    """A URL that is not ``file://``: reached through an fsspec backend."""
    return is_url(path) and scheme(path) != "file"


def local_path(path: str | os.PathLike) -> Path:
    text = str(path)
    return Path(text[len("file://") :] if text.startswith("file://") else text)


def storage_options(url: str) -> dict[str, Any]:
    """Backend options from the standard environment (the backends read credentials
    themselves). Listings are never cached: other processes write the same prefixes."""
    opts: dict[str, Any] = {"use_listings_cache": False}
    if scheme(url) in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["endpoint_url"] = endpoint
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            opts["client_kwargs"] = {"region_name": region}
    return opts


def forwarded_env() -> dict[str, str]:
    """Object-store settings of this process, for the Ray runtime env of a cluster job
    (they become visible to whoever can read the job's runtime env)."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}


def _backend_error(url: str, exc: BaseException) -> UserError:
    package, extra = BACKENDS.get(scheme(url), (None, None))
    if package is None:
        known = ", ".join(sorted({"file", *BACKENDS}))
        return UserError(f"{url}: unsupported URL scheme {scheme(url)!r}; use one of {known}")
    import importlib.util

    if importlib.util.find_spec(package) is not None:  # installed: the URL itself is bad
        return UserError(f"{url} cannot be opened: {reason(exc)}")
    how = f"pip install 's3diff-sr-pipeline[{extra}]'" if extra else f"pip install {package}"
    return UserError(f"{url} needs the {package} package ({how})")


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for a URL; one-line errors for bad URLs."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url, **storage_options(url))
    except (ImportError, ValueError) as exc:
        raise _backend_error(url, exc) from None


def reason(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


@contextmanager
def access(url: str) -> Iterator[None]:
    """Turn a backend failure (no bucket, no network, no permission) into one line."""
    try:
        yield
    except UserError:
        raise
    except PermissionError as exc:
        raise UserError(f"{url}: access denied ({reason(exc)}); check the credentials") from None
    except Exception as exc:  # noqa: BLE001 - backends raise many types (botocore, aiohttp)
        raise UserError(f"{url} could not be reached: {reason(exc)}") from None


def _url(fs: Any, path: str) -> str:
    return fs.unstrip_protocol(path)


class ObjectPath:
    """A remote URL with the few pathlib methods the driver uses (name, suffix, parent,
    with_name, ``/``, exists, is_dir). Deliberately not ``os.PathLike``: a remote path
    handed to a local file API fails instead of writing somewhere odd."""

    def __init__(self, url: str) -> None:
        self.scheme, rest = url.split("://", 1)
        self._pure = PurePosixPath(rest.rstrip("/") or "/")

    def __str__(self) -> str:
        return f"{self.scheme}://{self._pure}"

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __truediv__(self, name: str) -> ObjectPath:
        return ObjectPath(f"{self}/{name}")

    @property
    def name(self) -> str:
        return self._pure.name

    @property
    def stem(self) -> str:
        return self._pure.stem

    @property
    def suffix(self) -> str:
        return self._pure.suffix

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(f"{self.scheme}://{self._pure.parent}")

    def with_name(self, name: str) -> ObjectPath:
        return ObjectPath(f"{self.scheme}://{self._pure.with_name(name)}")

    def resolve(self) -> ObjectPath:
        return self

    def exists(self) -> bool:
        return exists(str(self))

    def is_dir(self) -> bool:
        fs, path = filesystem(str(self))
        with access(str(self)):
            return bool(fs.isdir(path))


def as_path(path: str | os.PathLike | ObjectPath) -> Path | ObjectPath:
    """A local Path (``file://`` stripped) or an ObjectPath for a remote URL."""
    if isinstance(path, ObjectPath):
        return path
    return ObjectPath(str(path)) if is_remote(path) else local_path(path)


# ----------------------------------------------------------------- read and query
def exists(url: str) -> bool:
    if not is_remote(url):
        return local_path(url).exists()
    fs, path = filesystem(url)
    with access(url):
        return bool(fs.exists(path))


def open_input(path: str | os.PathLike | ObjectPath) -> IO[bytes]:
    """A seekable binary file for reading, local or remote (ranged reads)."""
    if not is_remote(path):
        return open(local_path(path), "rb")  # noqa: SIM115 - the caller closes it
    fs, key = filesystem(str(path))
    with access(str(path)):
        return fs.open(key, "rb")


def av_input(path: str) -> Any:
    """What ``av.open`` should read: the path itself, or a file object for a URL."""
    return str(local_path(path)) if not is_remote(path) else open_input(path)


def zarr_kwargs(url: str) -> dict[str, Any]:
    """``store=`` and ``storage_options=`` for zarr.open_* on a path or URL."""
    if not is_remote(url):
        return {"store": str(local_path(url))}
    filesystem(url)  # a missing backend or unknown scheme fails with one line
    return {"store": url, "storage_options": storage_options(url)}


def open_zarr(url: str, **kwargs: Any) -> Any:
    """zarr.open for an input array or group (local path or URL)."""
    import zarr

    return zarr.open(**zarr_kwargs(url), **kwargs)


def head_identity(url: str) -> dict[str, Any]:
    """Size, modification stamp, ETag and header hash of a remote input (resume check)."""
    import hashlib

    fs, path = filesystem(url)
    with access(url):
        if fs.isdir(path):
            path = f"{path}/zarr.json" if fs.exists(f"{path}/zarr.json") else path
        info = fs.info(path)
        header = fs.cat_file(path, start=0, end=1 << 16) if info.get("type") == "file" else b""
    stamp = info.get("LastModified") or info.get("mtime") or info.get("updated") or ""
    return {
        "path": url,
        "size": int(info.get("size") or 0),
        "mtime": str(stamp),
        "etag": str(info.get("ETag") or info.get("etag") or ""),
        "header_sha256": hashlib.sha256(header).hexdigest(),
    }


def list_prefix(prefix: str) -> list[str]:
    """Every path or URL that starts with ``prefix`` (in its parent directory)."""
    if not is_remote(prefix):
        return glob.glob(glob.escape(prefix) + "*")
    fs, key = filesystem(prefix)
    parent = key.rsplit("/", 1)[0]
    try:
        names = fs.ls(parent, detail=False)
    except FileNotFoundError:
        return []
    return [_url(fs, n) for n in names if n.rstrip("/").startswith(key)]


# ------------------------------------------------------------------------ writing
def check_output_location(url: str, overwrite: bool) -> None:
    """Object stores have no directories: the bucket must exist, the object must not
    (unless --overwrite)."""
    fs, path = filesystem(url)
    bucket = path.split("/", 1)[0]
    with access(url):
        if not fs.exists(bucket):
            raise UserError(f"bucket {bucket} of {url} does not exist; create it first")
        if fs.exists(path) and not overwrite:
            raise UserError(f"{url} already exists; pass --overwrite to replace it")
