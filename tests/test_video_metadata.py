"""What a video output means besides its pixels (issue 12, video points): stream tags and
dispositions, container tags and chapters survive, and every output reads clean with
FFmpeg's strictest reader (each packet lasts until the next frame, also for VFR in .mkv).

Checked with PyAV and with the FFmpeg binary that imageio-ffmpeg ships (``ffmpeg -i``
prints stream languages and dispositions; ``ffmpeg -v error -xerror ... -f null -``
prints nothing for a file it reads without complaint). Expectations for a container are
what the same tags give when the fixture writer puts them straight into that container:
MOV, for instance, keeps only the default flag.
"""

from __future__ import annotations

import re
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import pytest

from pipeline.job.launch import run_job
from tests.helpers import make_config
from tests.test_video import assert_pixels_upscaled, assert_video_preserved, streams_by_type
from tests.video_fixtures import (
    covers_and_attachments,
    dropped_frame_times,
    make_10bit_hevc_clip,
    make_clip,
    make_mkv_with_subtitles,
    make_rotated_clip,
    make_tagged_clip,
    make_vfr_clip,
    png_bytes,
    with_cover,
)

pytestmark = pytest.mark.integration

imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
D = av.stream.Disposition


def video_cfg(**extra):
    extra.setdefault("video__segment_frames", 4)
    extra.setdefault("run__runner", "local")
    return make_config(scale=2, tile=32, overlap=8, **extra)


def ffmpeg_errors(path: Path) -> str:
    """What FFmpeg says when it reads every packet and decodes every frame of ``path``
    with -xerror; empty for a clean file."""
    cmd = [FFMPEG, "-nostdin", "-v", "error", "-xerror", "-i", str(path), "-f", "null", "-"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return (res.stderr + ("" if res.returncode == 0 else f"\nexit {res.returncode}")).strip()


def ffmpeg_stream_lines(path: Path) -> list[str]:
    """``ffmpeg -i``'s stream lines, reduced to kind, (language) and (disposition) flags:
    ``['Video (fra) (default)', 'Audio (jpn) (default) (comment)', ...]``."""
    res = subprocess.run(
        [FFMPEG, "-nostdin", "-hide_banner", "-i", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = []
    for line in res.stderr.splitlines():
        m = re.match(r"\s*Stream #\d+:\d+(?:\[\w+\])?(\(\w+\))?: (\w+): (.*)", line)
        if m and m.group(2) != "Data":
            flags = re.findall(
                r"\((default|forced|comment|hearing impaired|captions|dub|"
                r"original|lyrics|karaoke|visual impaired|descriptions)\)",
                m.group(3),
            )
            out.append(" ".join([m.group(2), m.group(1) or "()", *(f"({f})" for f in flags)]))
    return out


def title(meta: dict) -> str | None:
    return meta.get("title") or meta.get("name")  # MP4/MOV read a track title as "name"


def read_meta(path: Path) -> dict:
    """Container tags, chapters and per-stream language/title/disposition via PyAV.
    Chapter times (s) are relative to the first video frame: a Matroska output of an MP4
    source starts everything later by the source's AAC priming, chapters included."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        t0 = min(p.pts for p in c.demux(v) if p.pts is not None) * v.time_base
        return {
            "title": c.metadata.get("title"),
            "comment": c.metadata.get("comment") or c.metadata.get("COMMENT"),
            "chapters": [
                (
                    ch["start"] * ch["time_base"] - t0,
                    ch["end"] * ch["time_base"] - t0,
                    ch["metadata"],
                )
                for ch in c.chapters()
            ],
            "streams": [
                {
                    "type": s.type,
                    "language": s.metadata.get("language"),
                    "title": title(s.metadata),
                    "handler": s.metadata.get("handler_name"),
                    "disposition": int(s.disposition),
                }
                for s in c.streams
                if s.type != "data"  # MP4/MOV's chapter text track
            ],
        }


# Source container -> output container. Across containers the subtitle track cannot go
# (SubRip in MP4, mov_text in Matroska) and is dropped on request.
# mkv -> mov also leaves out the commentary flag MOV cannot hold (asked for, see below).
PAIRS = [
    ("mkv", "mkv"),
    ("mp4", "mp4"),
    ("mov", "mov"),
    ("mkv", "mp4"),
    ("mp4", "mkv"),
    ("mkv", "mov"),
]


@pytest.mark.parametrize("src_ext,out_ext", PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_tags_dispositions_and_chapters_survive(tmp_path, src_ext, out_ext):
    same = src_ext == out_ext
    src = make_tagged_clip(tmp_path / f"src.{src_ext}")
    reference = make_tagged_clip(tmp_path / f"ref.{out_ext}", subtitles=same)
    out = tmp_path / f"out.{out_ext}"
    run_job(str(src), str(out), video_cfg(video__drop_unsupported=not same), progress=False)

    got, want = read_meta(out), read_meta(reference)
    assert got["title"] == "A tagged film" and got["comment"] == "made by the tests"
    assert got["chapters"] == want["chapters"]
    assert [c[2]["title"] for c in got["chapters"]] == ["Opening", "Middle"]
    for g, w in zip(got["streams"], want["streams"], strict=True):
        assert (g["type"], g["language"], g["title"]) == (w["type"], w["language"], w["title"])
        assert D(g["disposition"]) == D(w["disposition"]), g["type"]
        if out_ext in ("mp4", "mov"):  # the track name most MP4 tools show
            assert g["handler"] == g["title"]
    audio = next(s for s in got["streams"] if s["type"] == "audio")
    assert (audio["language"], audio["title"]) == ("jpn", "Commentary")
    assert audio["disposition"] & D.default
    if out_ext != "mov":  # MOV has no place for the commentary flag
        assert audio["disposition"] & D.comment
    if same:
        sub = next(s for s in got["streams"] if s["type"] == "subtitle")
        assert (sub["language"], sub["title"]) == ("eng", "Signs")
        if out_ext != "mov":
            assert sub["disposition"] & D.forced and sub["disposition"] & D.hearing_impaired
        if out_ext == "mkv":  # not promoted to default
            assert not sub["disposition"] & D.default

    # The same, as FFmpeg's own reader reports it.
    lines = ffmpeg_stream_lines(out)
    assert lines == ffmpeg_stream_lines(reference)
    assert any(line.startswith("Audio (jpn) (default)") for line in lines), lines
    assert ffmpeg_errors(out) == ""


def _round_trip(src: Path, fmt: str, kind: str, value: int) -> int:
    """The disposition a ``fmt`` file made in memory from ``src``'s first ``kind`` stream
    (and its first packet) set to ``value`` reads back with."""
    import io

    with av.open(str(src)) as source:
        stream = next(s for s in source.streams if s.type == kind)
        buf = io.BytesIO()
        with av.open(buf, mode="w", format=fmt) as out:
            copy = out.add_stream_from_template(stream)
            copy.disposition = value
            out.start_encoding()
            packet = next(p for p in source.demux(stream) if p.dts is not None)
            packet.stream = copy
            out.mux(packet)
    with av.open(io.BytesIO(buf.getvalue())) as back:
        return int(back.streams[0].disposition)


def test_kept_dispositions_table_matches_the_muxers(tmp_path):
    """streammeta.KEPT_DISPOSITIONS says what FFmpeg's muxers keep: every flag, written
    alone, reads back (or its alias does) exactly when the table says it is kept."""
    from pipeline.video.streams import DISPOSITION_ALIASES, KEPT_DISPOSITIONS, kept_disposition

    sources = {"matroska": make_tagged_clip(tmp_path / "s.mkv", frames=2)}
    sources["mp4"] = sources["mov"] = make_tagged_clip(tmp_path / "s.mp4", frames=2)
    flags = [f for f in D if f.value and f.name != "attached_pic"]
    for fmt, rows in KEPT_DISPOSITIONS.items():
        for kind in rows:
            for flag in flags:
                back = _round_trip(sources[fmt], fmt, kind, flag.value)
                alias = DISPOSITION_ALIASES.get(flag.name)
                kept = bool(back & flag.value) or bool(alias and back & D[alias].value)
                said = not kept_disposition(flag.value, kind, fmt)[1]
                assert kept == said, (fmt, kind, flag.name, D(back))


def test_disposition_the_output_cannot_hold_is_refused(tmp_path, caplog):
    from pipeline.errors import UserError
    from pipeline.job.plan import plan_job

    src = make_tagged_clip(tmp_path / "src.mkv", subtitles=False)  # audio: default, comment
    with pytest.raises(UserError) as err:
        plan_job(str(src), str(tmp_path / "out.mov"), video_cfg(), overwrite=False)
    assert str(err.value) == (
        "stream #1 (audio) is marked comment, which .mov cannot hold; use .mkv or .mp4, "
        "or pass --drop-unsupported to write it without"
    )
    cfg = video_cfg(video__drop_unsupported=True)
    with caplog.at_level("WARNING"):
        plan_job(str(src), str(tmp_path / "out.mov"), cfg, overwrite=False)
    assert "stream #1 (audio) is marked comment, which mov cannot hold" in caplog.text
    # mp4 holds it: no refusal, no warning.
    caplog.clear()
    plan_job(str(src), str(tmp_path / "out.mp4"), video_cfg(), overwrite=False)
    assert "cannot hold" not in caplog.text


COVER = png_bytes()
FONT = ("signs.ttf", "font/ttf", b"not really a font, bytes to carry")
# (source container, output container): what comes out, or the refusal.
COVER_RUNS = {
    ("mp4", "mp4"): ([COVER], {}),
    ("mp4", "mkv"): ([COVER], {}),
    ("mkv", "mkv"): ([COVER], {FONT[0]: FONT[1:]}),
    ("mkv", "mp4"): "stream #3 (attachment, signs.ttf) cannot be stored in .mp4 (only "
    "Matroska has attachments); use .mkv, or pass --drop-unsupported to leave it out",
    ("mp4", "mov"): "stream #3 (cover art, png) cannot be stored in .mov; use .mp4 or "
    ".mkv, or pass --drop-unsupported to leave it out",
}


@pytest.mark.parametrize(
    "src_ext,out_ext", list(COVER_RUNS), ids=[f"{a}-{b}" for a, b in COVER_RUNS]
)
def test_cover_art_and_attachments_survive_or_are_refused(tmp_path, src_ext, out_ext):
    from pipeline.errors import UserError

    plain = make_tagged_clip(tmp_path / f"plain.{src_ext}", subtitles=False, frames=6)
    src = with_cover(plain, tmp_path / f"src.{src_ext}", COVER, [FONT])
    out = tmp_path / f"out.{out_ext}"
    want = COVER_RUNS[(src_ext, out_ext)]
    if isinstance(want, str):
        with pytest.raises(UserError) as err:
            run_job(str(src), str(out), video_cfg(), progress=False)
        assert str(err.value) == want
        assert not out.exists()
        # Asked to, the job leaves it out and keeps the rest.
        run_job(str(src), str(out), video_cfg(video__drop_unsupported=True), progress=False)
        pictures, attached = covers_and_attachments(out)
        assert attached == {}
        assert pictures == ([COVER] if out_ext != "mov" else [])
    else:
        run_job(str(src), str(out), video_cfg(), progress=False)
        assert covers_and_attachments(out) == want
    # The cover is not taken for the video: the picture upscaled is the clip's.
    with av.open(str(out)) as c:
        v = next(s for s in c.streams.video if not s.disposition & D.attached_pic)
        assert (v.width, v.height) == (192, 128)
        assert sum(1 for _ in c.demux(v) if _.size) == 6
    assert ffmpeg_errors(out) == ""


# Tags on Ray: tests/test_video.py::test_local_and_ray_runners_agree runs the tagged clip
# on Ray and checks them there.


def test_range_shifts_and_clips_chapters(tmp_path):
    src = make_tagged_clip(tmp_path / "src.mkv", frames=12)  # chapters 0-0.2 s, 0.2-0.4 s
    out = tmp_path / "part.mkv"
    run_job(str(src), str(out), video_cfg(video__frames='"3:12"'), progress=False)
    chapters = read_meta(out)["chapters"]
    assert [(s, e, m["title"]) for s, e, m in chapters] == [
        (Fraction(0), Fraction(1, 10), "Opening"),
        (Fraction(1, 10), Fraction(3, 10), "Middle"),
    ]
    assert ffmpeg_errors(out) == ""


def video_packets(path: Path) -> tuple[tuple, list[Fraction], Fraction]:
    """(average rate, base rate), the frames' times (s, sorted) and packet durations (s,
    same order), and where the last frame ends (MP4/MOV: the track's end; Matroska: the
    last frame's own duration)."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        tb = v.time_base
        packets = sorted((p.pts, p.duration) for p in c.demux(v) if p.pts is not None)
        times = [p * tb for p, _ in packets]
        if v.duration:
            end = (v.start_time + v.duration) * tb
        else:
            end = times[-1] + packets[-1][1] * tb
        return (v.average_rate, v.base_rate), times, [d * tb for _, d in packets], end


DROPPED = dropped_frame_times(30)  # gaps 1/30 and 2/30 s, average 20 fps
CLIPS = {
    "cfr.mp4": lambda p: make_clip(p),
    "ntsc.mp4": lambda p: make_clip(p, rate=Fraction(24000, 1001)),
    "ntsc.mkv": lambda p: make_clip(p, rate=Fraction(24000, 1001)),
    "vfr.mp4": lambda p: make_vfr_clip(p),
    "vfr.mkv": lambda p: make_vfr_clip(p),
    # Frames dropped, times kept; Matroska declaring the average rate (the file).
    "dropped.mkv": lambda p: make_vfr_clip(p, times=DROPPED, rate=20),
    "dropped.mp4": lambda p: make_vfr_clip(p, times=DROPPED, audio=False),
    "subs.mkv": lambda p: make_mkv_with_subtitles(p),
    "rotated.mp4": lambda p: make_rotated_clip(p, rotation=90),
    "hevc10.mkv": lambda p: make_10bit_hevc_clip(p),
}
RUNS = [(name, ext) for name in CLIPS for ext in ("mp4", "mkv")]
RUNS = [r for r in RUNS if not (r[0] == "subs.mkv" and r[1] == "mp4")]
# The runs into the source's own container also check the whole round trip: frame count,
# times, size, colour tags, rotation, audio and subtitle packets byte-identical, pixels
# (the one video container matrix; the video path on Ray: tests/test_video.py).
ROUND_TRIPS = {
    ("cfr.mp4", "mp4"),
    ("ntsc.mp4", "mp4"),
    ("vfr.mp4", "mp4"),
    ("vfr.mkv", "mkv"),
    ("subs.mkv", "mkv"),
    ("rotated.mp4", "mp4"),
    ("hevc10.mkv", "mkv"),
}


@pytest.mark.parametrize("name,out_ext", RUNS, ids=[f"{n}-{e}" for n, e in RUNS])
def test_every_output_reads_clean_and_frames_last_until_the_next(tmp_path, name, out_ext):
    src = CLIPS[name](tmp_path / name)
    out = tmp_path / f"out.{out_ext}"
    hevc10 = name.startswith("hevc10")
    codec = {"video__codec": "libx265"} if hevc10 else {}
    summary = run_job(str(src), str(out), video_cfg(**codec), progress=False)
    assert ffmpeg_errors(src) == ""  # the fixture itself is clean
    assert ffmpeg_errors(out) == ""
    if (name, out_ext) in ROUND_TRIPS:
        from tests.video_fixtures import probe_summary

        assert summary.frames == streams_by_type(probe_summary(src), "video")[0]["packets"]
        _, vb = assert_video_preserved(src, out)
        if hevc10:  # 10-bit stays 10-bit
            assert vb["pix_fmt"] == "yuv420p10le"
        assert_pixels_upscaled(src, out, fmt="rgb48le" if hevc10 else "rgb24")
        assert not list(tmp_path.glob(".out.partial*"))

    (s_avg, s_base), s_times, _, s_end = video_packets(src)
    (o_avg, o_base), o_times, o_dur, o_end = video_packets(out)
    ms = Fraction(1, 1000)
    gaps = [b - a for a, b in zip(s_times, s_times[1:], strict=False)]
    o_gaps = [b - a for a, b in zip(o_times, o_times[1:], strict=False)]
    assert len(o_times) == len(s_times)
    assert all(abs(a - b) <= ms for a, b in zip(o_gaps, gaps, strict=True))
    # The last frame lasts as long as in the source (times relative to the first frame:
    # a Matroska output starts later by the AAC priming of an MP4 source's audio).
    assert abs((o_end - o_times[0]) - (s_end - s_times[0])) <= ms
    if out_ext == "mkv":  # Matroska stores each frame's own duration: the gap to the next
        assert all(abs(d - g) <= ms for d, g in zip(o_dur, gaps, strict=False))
    # Declared rates follow the source. A Matroska source declares them (its one default
    # duration), an MP4/MOV output derives them from the (ms-rounded) timing, so across
    # that pair only the timing above is comparable.
    if src.suffix == out.suffix or src.suffix == ".mp4":
        assert o_base == s_base
    if src.suffix == out.suffix or (src.suffix == ".mp4" and s_avg == s_base):
        assert abs(o_avg - s_avg) / s_avg < Fraction(1, 1000), (o_avg, s_avg)
