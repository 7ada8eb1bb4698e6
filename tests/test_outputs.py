"""Staging of outputs (``pipeline.store.outputs``): one scheme per kind of output, so a
finished output is written once and appears under its name only when complete."""

from __future__ import annotations

import os

import fsspec
import pytest

from pipeline.store.outputs import (
    discard_temp,
    local_target,
    replace_output,
    sweep_partials,
    temp_name,
)
from pipeline.store.urls import ObjectPath

pytestmark = pytest.mark.unit


def test_a_local_output_is_written_under_a_hidden_sibling_and_renamed(tmp_path):
    final = tmp_path / "out.tif"
    final.write_bytes(b"old")  # --overwrite: the old output stays until the new is whole
    tmp = temp_name(final)
    assert tmp == tmp_path / f".out.partial-{os.getpid()}.tif"
    with local_target(str(tmp)) as staged:
        assert staged == str(tmp)  # a local writer writes the temporary itself
        tmp.write_bytes(b"new")
    assert final.read_bytes() == b"old"
    replace_output(tmp, final)
    assert final.read_bytes() == b"new" and not tmp.exists()
    discard_temp(temp_name(final), final)  # a failed rerun drops its temporary only
    assert final.read_bytes() == b"new"


def test_a_remote_file_is_staged_on_its_writer_node_and_uploaded_once():
    """No second temporary on the store: the upload itself appears whole."""
    fs = fsspec.filesystem("memory")
    final = ObjectPath("memory://bucket/staging/out.mp4")
    fs.pipe("/bucket/staging/out.mp4", b"old")
    tmp = temp_name(final)
    assert str(tmp) == str(final)
    with pytest.raises(RuntimeError), local_target(str(tmp)) as staged:
        assert not staged.startswith("memory://")  # a local file on the writer's node
        with open(staged, "wb") as fh:
            fh.write(b"half")
        raise RuntimeError("the muxer failed")
    assert fs.cat("/bucket/staging/out.mp4") == b"old" and not os.path.exists(staged)
    discard_temp(tmp, final)  # the failed job's cleanup leaves the existing output alone
    assert fs.cat("/bucket/staging/out.mp4") == b"old"
    with local_target(str(tmp)) as staged:
        with open(staged, "wb") as fh:
            fh.write(b"new")
    assert fs.cat("/bucket/staging/out.mp4") == b"new" and not os.path.exists(staged)
    replace_output(tmp, final)  # in place already
    assert fs.find("/bucket/staging") == ["/bucket/staging/out.mp4"]


def test_a_remote_ome_zarr_is_written_under_a_sibling_prefix_and_copied_root_last():
    fs = fsspec.filesystem("memory")
    final = ObjectPath("memory://bucket/tree/out.ome.zarr")
    tmp = temp_name(final)
    assert tmp.name == f".out.ome.partial-{os.getpid()}.zarr"
    fs.pipe(f"/bucket/tree/{tmp.name}/zarr.json", b"{}")
    fs.pipe(f"/bucket/tree/{tmp.name}/0/c/0", b"px")
    replace_output(tmp, final)
    assert fs.find("/bucket/tree") == [
        "/bucket/tree/out.ome.zarr/0/c/0",
        "/bucket/tree/out.ome.zarr/zarr.json",
    ]


def test_sweep_removes_temporaries_of_dead_runs_only(tmp_path):
    final = tmp_path / "out.png"
    dead = tmp_path / ".out.partial-999999999.png"
    live = temp_name(final)
    other = tmp_path / ".outer.partial-999999999.png"
    for p in (dead, live, other):
        p.write_bytes(b"x")
    sweep_partials(final)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])
