"""Publishing outputs: an output appears under its name only when it is complete.

One scheme per kind of output, chosen here (``temp_name``) for every writer:

- a local output (file or OME-Zarr folder) is written under a hidden sibling name,
  ``.NAME.partial-PID.EXT``, and renamed into place (``replace_output``);
- an OME-Zarr tree on an object store is written under the same sibling prefix and
  copied into place with its root ``zarr.json`` last;
- a single file on an object store (TIFF, PNG, JPEG, a video) is written by its writer
  to a temporary file on the writer's node (``local_target``) and uploaded to its final
  URL when the writer succeeds; the upload (multipart when large) makes the object
  appear whole, so no second temporary is needed.

Temporaries of killed runs are swept by the next run (``sweep_partials``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.formats import image_format
from pipeline.store.urls import (
    PART_BYTES,
    ObjectPath,
    access,
    as_path,
    filesystem,
    is_remote,
    list_prefix,
    local_path,
    scheme,
)

log = logging.getLogger(__name__)


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


# -------------------------------------------------------------- the output's name
def temp_name(final: Path | ObjectPath) -> Path | ObjectPath:
    """Where the writers write ``final`` until it is complete: a hidden sibling that
    keeps the extension (libraries pick formats from it), or, for a single file on an
    object store, ``final`` itself (its writer stages it on its node and uploads it
    whole: ``local_target``)."""
    if is_remote(str(final)) and image_format(final.name) != "zarr":
        return final
    return final.with_name(f".{final.stem}.partial-{os.getpid()}{final.suffix}")


def replace_output(tmp: Path | ObjectPath, final: Path | ObjectPath) -> None:
    """Move a finished output from ``temp_name`` into place: locally by a rename
    (a folder via a side rename), an object-store tree by a copy with its root last;
    an uploaded file is in place already."""
    if str(tmp) == str(final):
        return
    if is_remote(str(final)):
        replace(str(tmp), str(final))
    elif tmp.is_dir() and final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    else:
        os.replace(tmp, final)


def discard_temp(tmp: Path | ObjectPath, final: Path | ObjectPath) -> None:
    """Drop a failed job's ``temp_name`` (never ``final``: an uploaded file's temporary
    is on its writer's node and already gone)."""
    if str(tmp) != str(final):
        discard(tmp)


def sweep_partials(final: Path | ObjectPath) -> None:
    """Delete this output's temporaries left by killed runs (``temp_name``: the pid of a
    process that no longer exists); a live run's temporary is left alone."""
    import psutil

    head = f".{final.stem}.partial-"
    for name in list_prefix(str(final.parent / head)):
        path = as_path(name)
        if not path.name.endswith(final.suffix):
            continue
        pid = path.name[len(head) : len(path.name) - len(final.suffix)]
        if not pid.isdigit() or int(pid) == os.getpid() or psutil.pid_exists(int(pid)):
            continue
        log.info("removing %s, left by an interrupted run", path)
        discard(path)
