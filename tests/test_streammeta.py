"""The pure pieces of what a video output keeps: tags, chapters, durations, rates."""

from fractions import Fraction

import pytest

from pipeline.video.streams import (
    chapters_for_output,
    content_tags,
    declared_rate,
    frame_durations,
    is_cfr,
    probe_chapters,
    rescale_ts,
    stream_tags_for,
)

pytestmark = pytest.mark.unit


def test_content_tags_drop_what_describes_the_old_file():
    tags = {
        "language": "jpn",
        "title": "Commentary",
        "DURATION": "00:00:00.400000000",
        "ENCODER": "Lavf",
        "_STATISTICS_TAGS": "BPS",
        "BPS": "1000",
        "handler_name": "SoundHandler",
        "major_brand": "isom",
    }
    assert content_tags(tags) == {"language": "jpn", "title": "Commentary"}


def test_mp4_track_name_becomes_the_title_and_the_mp4_handler_name():
    tags = content_tags({"language": "eng", "name": "Signs", "handler_name": "SubtitleHandler"})
    assert tags == {"language": "eng", "title": "Signs"}
    assert stream_tags_for(tags, "mp4") == {**tags, "handler_name": "Signs"}
    assert stream_tags_for(tags, "matroska") == tags
    own = {"title": "Signs", "handler_name": "Forced signs"}
    assert stream_tags_for(own, "mov") == own  # a real handler name is kept as it is


def test_chapters_are_shifted_clipped_and_numbered_for_the_selection():
    chapters = probe_chapters(
        [
            {"id": 0, "start": 0, "end": 200, "time_base": Fraction(1, 1000), "metadata": {}},
            {"id": 1, "start": 200, "end": 400, "time_base": Fraction(1, 1000), "metadata": {}},
            {"id": 2, "start": 400, "end": 600, "time_base": Fraction(1, 1000), "metadata": {}},
        ]
    )
    assert [c["start_s"] for c in chapters] == [0, Fraction(1, 5), Fraction(2, 5)]
    out = chapters_for_output(chapters, Fraction(1, 10), Fraction(2, 5))
    assert [(c["id"], c["start"], c["end"]) for c in out] == [(1, 0, 100), (2, 100, 300)]
    assert all(c["time_base"] == Fraction(1, 1000) for c in out)
    late = chapters_for_output(chapters, Fraction(1, 10), Fraction(2, 5), delay=Fraction(1, 50))
    assert [(c["start"], c["end"]) for c in late] == [(20, 120), (120, 320)]
    whole = chapters_for_output(chapters, Fraction(0), None)
    assert [(c["start"], c["end"]) for c in whole] == [(0, 200), (200, 400), (400, 600)]


def test_each_frame_lasts_until_the_next():
    assert frame_durations([0, 1000, 3000, 4000], 5000) == [1000, 2000, 1000, 1000]


def test_rescale_rounds_half_away_from_zero_like_ffmpeg():
    assert rescale_ts(1001, Fraction(1, 24000), Fraction(1, 1000)) == 42  # 41.708
    assert rescale_ts(1, Fraction(1, 2000), Fraction(1, 1000)) == 1  # 0.5 -> 1
    assert rescale_ts(-1024, Fraction(1, 48000), Fraction(1, 1000)) == -21


def test_declared_rate_is_the_average_for_cfr_and_the_grid_for_vfr():
    cfr_ms = [0, 42, 83, 125, 167]  # 23.976 fps in Matroska's ms
    assert is_cfr(cfr_ms)
    assert declared_rate(Fraction(24000, 1001), Fraction(24000, 1001), cfr_ms) == Fraction(
        24000, 1001
    )
    dropped = [0, 1000, 3000, 4000, 6000]  # 30 fps with every third frame dropped
    assert not is_cfr(dropped)
    assert declared_rate(Fraction(20), Fraction(30), dropped) == 30
    assert declared_rate(Fraction(20), None, dropped) == 20
