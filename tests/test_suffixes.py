"""The suffix table (``pipeline.formats``) agrees with itself and with the planner."""

from __future__ import annotations

import pytest

from pipeline.formats import (
    BATCH_INPUTS,
    CONTAINER_SUFFIX,
    IMAGE_FILES,
    IMAGE_OUTPUT_HINT,
    IMAGE_OUTPUTS,
    SEQUENCE_CODECS,
    SEQUENCE_OUTPUT_HINT,
    VIDEO_CONTAINERS,
    VIDEO_OUTPUT_HINT,
    image_format,
)

pytestmark = pytest.mark.unit


def test_what_messages_suggest_is_in_the_table():
    assert set(IMAGE_OUTPUT_HINT.split()) <= set(IMAGE_OUTPUTS)
    assert set(VIDEO_OUTPUT_HINT.split()) <= set(VIDEO_CONTAINERS)
    assert set(SEQUENCE_OUTPUT_HINT.split()[1:]) <= set(SEQUENCE_CODECS)
    assert SEQUENCE_OUTPUT_HINT.split()[0].endswith(".exr")
    for muxer, suffix in CONTAINER_SUFFIX.items():
        assert VIDEO_CONTAINERS[suffix] == muxer
    assert set(CONTAINER_SUFFIX) == set(VIDEO_CONTAINERS.values())


def test_image_format_reads_paths_and_urls():
    assert image_format("a/B.TIF") == "tiff"
    assert image_format("s3://bucket/scan.ome.zarr/") == "zarr"
    assert image_format("gs://bucket/x.jpeg") == "jpeg"
    assert image_format("clip.mp4") is None
    assert IMAGE_FILES <= BATCH_INPUTS and set(VIDEO_CONTAINERS) <= BATCH_INPUTS


def test_the_planner_names_every_output_suffix_in_its_refusal(tmp_path):
    from pipeline.config import load_config
    from pipeline.errors import UserError
    from pipeline.job.plan import plan_job

    (tmp_path / "in.png").write_bytes(b"")
    with pytest.raises(UserError) as err:
        plan_job(str(tmp_path / "in.png"), str(tmp_path / "out.bmp"), load_config(None), False)
    message = str(err.value)
    assert "cannot tell the output format from 'out.bmp'" in message
    for suffix in (*IMAGE_OUTPUTS, *VIDEO_CONTAINERS):
        assert suffix in message
