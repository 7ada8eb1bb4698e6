"""Publishing files: an output appears under its name only when it is complete.

Local outputs are written under a temporary name and renamed; on an object store a
single file is uploaded (multipart when large, so the object appears whole) and a
directory tree (an OME-Zarr) is copied with its root ``zarr.json`` last. Writers that
need a local file (TIFF, PNG, the video muxer) write to ``staging_path`` and
``finish_staged`` uploads it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.store.urls import (
    PART_BYTES,
    ObjectPath,
    access,
    filesystem,
    is_remote,
    local_path,
    scheme,
)


def publish_file(local: str | os.PathLike, url: str, part_bytes: int = PART_BYTES) -> None:
    """Upload a finished local file. Large files go as a multipart upload, which the
    store makes visible only when it completes: a reader never sees a partial object."""
    fs, path = filesystem(url)
    kwargs = {"chunksize": part_bytes} if scheme(url) in ("s3", "s3a") else {}
    with access(url):
        fs.put_file(str(local), path, **kwargs)


def _remove_tree(fs: Any, path: str) -> None:
    """Root ``zarr.json`` first, so a reader sees no group rather than half of one."""
    if fs.exists(f"{path}/zarr.json"):
        fs.rm_file(f"{path}/zarr.json")
    if fs.exists(path):
        fs.rm(path, recursive=True)


def publish_tree(src: str, url: str) -> None:
    """Copy a finished Zarr tree (local directory or URL prefix) to ``url``, replacing
    what is there, with the root ``zarr.json`` copied last: until then ``url`` is not a
    group, so nobody opens a half-written output."""
    fs, dst = filesystem(url)
    with access(url):
        _remove_tree(fs, dst)
        if is_remote(src):
            src_fs, root = filesystem(src)
            keys = sorted(src_fs.find(root))
            rel = [k[len(root) + 1 :] for k in keys]
            body = [r for r in rel if r != "zarr.json"]
            if body:
                fs.copy([f"{root}/{r}" for r in body], [f"{dst}/{r}" for r in body])
            fs.copy(f"{root}/zarr.json", f"{dst}/zarr.json")
        else:
            base = local_path(src)
            files = sorted(p for p in base.rglob("*") if p.is_file())
            body = [p for p in files if p != base / "zarr.json"]
            if body:
                fs.put([str(p) for p in body], [f"{dst}/{p.relative_to(base)}" for p in body])
            fs.put_file(str(base / "zarr.json"), f"{dst}/zarr.json")


def replace(tmp: str, final: str) -> None:
    """Move a finished remote temporary into place: a file by a server-side copy (the
    final object appears whole), a Zarr tree with its root last; then drop the temp."""
    fs, src = filesystem(tmp)
    _, dst = filesystem(final)
    with access(final):
        if fs.isdir(src):
            publish_tree(tmp, final)
        else:
            fs.copy(src, dst)
    discard(tmp)


def discard(path: Any) -> None:
    """Delete a temporary output (file or tree, local or remote); missing is fine."""
    if is_remote(path):
        fs, key = filesystem(str(path))
        with access(str(path)):
            if fs.exists(key):
                fs.rm(key, recursive=True)
        return
    p = local_path(path)
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists():
        p.unlink()


def staging_path(target: str) -> str:
    """Where a writer should write ``target``: the path itself when local; for a URL a
    new temporary file on this node (``finish_staged`` uploads and deletes it)."""
    if not is_remote(target):
        return str(local_path(target))
    fd, tmp = tempfile.mkstemp(prefix=".sr-pipeline-", suffix=ObjectPath(target).suffix)
    os.close(fd)
    return tmp


def finish_staged(staged: str, target: str, ok: bool) -> None:
    """Upload a staged file to its URL when the writer succeeded; drop it either way."""
    if not is_remote(target):
        return
    try:
        if ok:
            publish_file(staged, target)
    finally:
        Path(staged).unlink(missing_ok=True)


@contextmanager
def local_target(target: str) -> Iterator[str]:
    """``staging_path`` for a block that writes the file: uploaded if it succeeds."""
    staged = staging_path(target)
    ok = False
    try:
        yield staged
        ok = True
    finally:
        finish_staged(staged, target, ok)


def temp_name(final: Path | ObjectPath) -> Path | ObjectPath:
    """A hidden sibling that keeps the extension (libraries pick formats from it)."""
    return final.with_name(f".{final.stem}.partial-{os.getpid()}{final.suffix}")


def replace_output(tmp: Path | ObjectPath, final: Path | ObjectPath) -> None:
    """Atomically move a finished output into place (directories via a side rename; on an
    object store by a copy that makes the final object appear whole)."""
    if is_remote(str(final)):
        replace(str(tmp), str(final))
    elif tmp.is_dir() and final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    else:
        os.replace(tmp, final)
