"""Film and broadcast masters (issue 19, points 1-4 and 7): anamorphic pixels, interlaced
fields, HDR10 static metadata, start timecode, a video stream that starts late.

Sources are made with the FFmpeg binary the way real ones are (``tests/master_fixtures``);
outputs are read back with FFmpeg (``ffmpeg -i`` stream lines, the elementary stream's
own VUI, its ``bwdif`` over the whole clip) and PyAV (frame side data, packets, the job
store). Small frames, few frames, several properties per run.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest

from pipeline.errors import JobFailed, TaskBug, UserError, unexpected
from pipeline.video.deinterlace import applied_mode, as_fields
from pipeline.video.hdr import check_hdr, svtav1_params, x265_params
from pipeline.video.timecode import find_timecode, from_frames, shifted, to_frames
from tests.helpers import make_config

integration = pytest.mark.integration
unit = pytest.mark.unit


def cfg(**extra):
    extra.setdefault("video__segment_frames", 4)
    extra.setdefault("run__runner", "local")
    return make_config(scale=2, tile=32, overlap=8, **extra)


def run(src: Path, out: Path, **extra) -> None:
    from pipeline.job.launch import run_job

    run_job(str(src), str(out), cfg(**extra), overwrite=True, progress=False)


def packets(path: Path, kind: str) -> list[av.Packet]:
    with av.open(str(path)) as c:
        s = next(s for s in c.streams if s.type == kind)
        return [p for p in c.demux(s) if p.pts is not None]


# ---------------------------------------------------------------------------- unit


@unit
def test_timecode_arithmetic():
    assert shifted("01:00:00:00", 25, Fraction(25)) == "01:00:01:00"
    assert shifted("01:00:00:00", 0, Fraction(25)) == "01:00:00:00"
    assert shifted("00:59:59:24", 1, Fraction(25)) == "01:00:00:00"
    ntsc = Fraction(30000, 1001)
    # Drop-frame: frames 00 and 01 of every minute but each tenth do not exist.
    assert shifted("00:00:59;29", 1, ntsc) == "00:01:00;02"
    assert shifted("00:09:59;29", 1, ntsc) == "00:10:00;00"
    for n in (0, 1, 1799, 1800, 17982, 17983, 107892):
        assert to_frames(from_frames(n, ntsc, True), ntsc) == n
    with pytest.raises(UserError, match="not HH:MM:SS:FF"):
        shifted("1 hour", 1, Fraction(25))
    # Where it is found: the video stream, then a tmcd data stream, then the container.
    assert find_timecode({}, [{"TIMECODE": "10:00:00:00"}], {"timecode": "x"}) == "10:00:00:00"
    assert find_timecode({"timecode": "01:02:03:04"}, [], {}) == "01:02:03:04"
    assert find_timecode({}, [], {}) is None


@unit
def test_field_list_and_modes():
    from pipeline.video.probe import VideoInfo

    info = VideoInfo(
        path="tv.mkv", kind="video", container="matroska", width=8, height=8, frames=3,
        first=1, pts=(0, 40, 80), keyframes=(0, 2), time_base=(1, 1000), avg_rate=(25, 1),
        video_index=0, codec="h264", pix_fmt="yuv420p", bit_depth=8, color={}, rotation=0,
        streams=(), end_pts=120, base_rate=(25, 1), last_duration=40,
    )  # fmt: skip
    f = as_fields(info)
    # Field one at the frame's time, field two halfway to the next frame (half time base).
    assert f.pts == (0, 40, 80, 120, 160, 200) and f.time_base == (1, 2000)
    assert (f.frames, f.first, f.keyframes, f.avg_rate, f.end_pts) == (6, 2, (0, 4), (50, 1), 240)
    assert [applied_mode(m, True) for m in ("auto", "off", "frame", "field")] == [
        "frame", "", "frame", "field",
    ]  # fmt: skip
    assert [applied_mode(m, False) for m in ("auto", "off", "frame")] == ["", "", "frame"]
    from pipeline.config import load_config

    # "off" is YAML's false: still the mode off, from --set and from a config file.
    assert load_config(set_items=["video.deinterlace=off"]).video.deinterlace == "off"
    with pytest.raises(UserError, match="video.deinterlace must be one of auto, off"):
        load_config(set_items=["video.deinterlace=fields"])


@unit
def test_hdr10_encoder_params_and_refusals():
    # Display P3 / D65, 1000 / 0.0001 cd/m2 as FFmpeg's AVRationals (R, G, B, WP, min, max)
    md = ((17, 25), (8, 25), (53, 200), (69, 100), (3, 20), (3, 50), (3127, 10000),
          (329, 1000), (1, 10000), (1000, 1))  # fmt: skip
    assert x265_params(md, (1000, 400)) == [
        "master-display=G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,1)",
        "hdr10=1",
        "max-cll=1000,400",
    ]
    assert svtav1_params(md, None)[0].startswith("mastering-display=G(0.26500,0.69000)B(")
    hdr = SimpleNamespace(path="m.mkv", mastering=md, cll=(1000, 400), dynamic_hdr=())
    check_hdr(hdr, "libx265", False)
    with pytest.raises(UserError, match="codec libx264 cannot carry it.*--drop-unsupported"):
        check_hdr(hdr, "libx264", False)
    check_hdr(hdr, "libx264", True)  # written without, with a warning
    hdr10plus = SimpleNamespace(**{**vars(hdr), "dynamic_hdr": ("HDR10+ (SMPTE ST 2094-40)",)})
    with pytest.raises(UserError, match="HDR10\\+ .* cannot follow an upscale"):
        check_hdr(hdr10plus, "libx265", False)
    check_hdr(hdr10plus, "libx265", True)


@unit
def test_unexpected_task_error_is_one_plain_line():
    raw = ValueError(
        "\x1b[36mray::assemble_task()\x1b[39m\nArgumentError: bad \x1b[1mstream\x1b[0m"
    )
    bug = unexpected("assemble task", raw)
    text = str(bug)
    assert isinstance(bug, TaskBug) and bug.exit_code == 1 and bug.__cause__ is raw
    assert "\x1b" not in text and "\n" not in text
    assert "assemble task failed unexpectedly (ValueError" in text and "this is a bug" in text
    assert "--debug" in text
    user = UserError("bad input")
    assert unexpected("encode task", user) is user
    failed = JobFailed("region failed")
    assert unexpected("encode task", failed) is failed


# --------------------------------------------------------------------- integration


@integration
def test_anamorphic_keeps_its_display_aspect_ratio(tmp_path):
    """SAR 32:27 on a 72x48 frame (16:9): in the codec's VUI and the container, for
    x264 in Matroska over a range and x265 in MP4."""
    from tests.master_fixtures import make_anamorphic, raw_bitstream_sar, video_line

    src = make_anamorphic(tmp_path / "dvd.mp4")
    assert "SAR 32:27 DAR 16:9" in video_line(src)
    mkv, mp4 = tmp_path / "dvd_x2.mkv", tmp_path / "dvd_x2.mp4"
    run(src, mkv, video__frames='"2:8"')
    run(src, mp4, video__codec="libx265")
    for out, codec in ((mkv, "h264"), (mp4, "hevc")):
        line = video_line(out)
        assert "144x96 [SAR 32:27 DAR 16:9]" in line, line
        assert raw_bitstream_sar(out, codec) == "32:27"
        with av.open(str(out)) as c:
            assert c.streams.video[0].sample_aspect_ratio == Fraction(32, 27)
    assert len(packets(mkv, "video")) == 6
    # Matroska gets the SAR only from an H.264/HEVC VUI here: other codecs are refused.
    from pipeline.job.plan import plan_job

    with pytest.raises(UserError, match="sample aspect ratio 32:27.*ffv1 in .mkv cannot carry"):
        plan_job(str(src), str(tmp_path / "o.mkv"), cfg(video__codec="ffv1"), overwrite=False)
    plan_job(str(src), str(tmp_path / "o.mp4"), cfg(video__codec="ffv1"), overwrite=False)


def _store_frames(src: Path, out: Path) -> np.ndarray:
    from pipeline.store.jobstore import JobStore, default_store_url

    store = JobStore.open(default_store_url(str(src), str(out), None), mode="r")
    return np.asarray(store.array("input")[:])


def _reference_rgb(src: Path, yuv_frames: list[np.ndarray]) -> list[np.ndarray]:
    """The ffmpeg binary's bwdif frames converted to RGB as ingest converts frames."""
    from pipeline.video.decode import decode_array
    from pipeline.video.probe import probe_video

    info = probe_video(src)
    out = []
    for yuv in yuv_frames:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(yuv), format="yuv420p")
        frame.color_range = info.color["range"] or 0
        out.append(decode_array(frame, info.dtype, info.color))
    return out


def _comb(frames_rgb: list[np.ndarray]) -> float:
    from tests.master_fixtures import comb_score

    return float(np.mean([comb_score(f.astype(np.float64).mean(axis=2)) for f in frames_rgb]))


@integration
def test_interlaced_source_is_deinterlaced_in_segments_as_whole(tmp_path, caplog):
    """25i TFF coded interlaced (x264 +ildct+ilme) with real motion: video.deinterlace=auto
    gives, in two segments, exactly the frames bwdif gives over the whole clip; the
    output combs no more than bwdif's frames, far less than the source, and is flagged
    progressive with the source's pts. ``field`` gives 50p with every field's time."""
    from tests.master_fixtures import bwdif_whole, make_interlaced, video_line

    src = make_interlaced(tmp_path / "tv.mkv", size="96x64", frames=12)
    assert "top coded first" in video_line(src) or "top first" in video_line(src)
    out = tmp_path / "tv_x2.mkv"
    caplog.set_level("INFO", logger="pipeline.video.deinterlace")
    run(src, out, store__keep="true", video__keep_frames="true")
    assert any("is interlaced" in r.message and "bwdif" in r.message for r in caplog.records)
    stored = _store_frames(src, out)
    reference = _reference_rgb(src, bwdif_whole(src, 96, 64))
    assert len(reference) == len(stored) == 12
    for i, (got, want) in enumerate(zip(stored, reference, strict=True)):
        assert np.array_equal(got, want), f"frame {i} differs from bwdif of the whole clip"
    with av.open(str(src)) as c:
        source_rgb = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert _comb(source_rgb) > 4 * _comb(reference)
    # The output, brought back to the source's grid, combs like bwdif's frames.
    with av.open(str(out)) as c:
        out_rgb = [f.to_ndarray(format="rgb24").astype(np.float64) for f in c.decode(video=0)]
    halved = [f.reshape(64, 2, 96, 2, 3).mean(axis=(1, 3)) for f in out_rgb]
    assert _comb(halved) < 1.5 * _comb(reference) + 0.5
    assert "progressive" in video_line(out)
    assert sorted(p.pts for p in packets(out, "video")) == sorted(
        p.pts for p in packets(src, "video")
    )

    # A range uses the source frames around it as bwdif's neighbours, like the whole clip.
    ranged = tmp_path / "tv_range.mkv"
    run(src, ranged, video__frames='"3:9"', store__keep="true", video__keep_frames="true")
    stored = _store_frames(src, ranged)
    assert all(np.array_equal(a, b) for a, b in zip(stored, reference[3:9], strict=True))

    fields = tmp_path / "tv_50p.mkv"
    run(src, fields, video__deinterlace="field", store__keep="true", video__keep_frames="true")
    stored = _store_frames(src, fields)
    reference = _reference_rgb(src, bwdif_whole(src, 96, 64, mode="send_field"))
    assert len(stored) == len(reference) == 24
    assert all(np.array_equal(a, b) for a, b in zip(stored, reference, strict=True))
    assert sorted(p.pts for p in packets(fields, "video")) == list(range(0, 480, 20))
    assert "50 fps" in video_line(fields) and "progressive" in video_line(fields)

    # Soft-telecined film (progressive frames with repeat flags) is progressive.
    from pipeline.job.plan import plan_job
    from tests.master_fixtures import make_soft_telecine

    film = make_soft_telecine(tmp_path / "film.mkv")
    plan = plan_job(str(film), str(tmp_path / "film_x2.mkv"), cfg(), overwrite=False)
    assert not plan.info.interlaced and plan.info.deinterlace == ""
    assert plan.info.frames == 12 and plan.info.fields == 1


@integration
def test_hdr10_master_keeps_mastering_display_and_light_level(tmp_path, capsys):
    """x265 10-bit BT.2020/PQ with ST 2086 + MaxCLL/MaxFALL: the same values come back
    from libx265 in Matroska and MP4 (exactly, in the bitstream and the container) and
    libsvtav1 in MP4 (bitstream, to AV1's fixed-point precision); libx264 is refused."""
    from pipeline.cli.main import main
    from tests.master_fixtures import ffmpeg_errors, ffmpeg_info, hdr10_of, make_hdr10, video_line

    src = make_hdr10(tmp_path / "master.mkv")
    want = hdr10_of(src)
    assert want["cll"] == (1000, 400) and want["mastering"][0][0] == Fraction(17, 25)
    mkv, mp4, av1 = (tmp_path / f"master_x2.{e}" for e in ("mkv", "mp4", "av1.mp4"))
    run(src, mkv, video__codec="libx265")
    run(src, mp4, video__codec="libx265", video__frames='"2:8"')
    run(src, av1, video__codec="libsvtav1", video__preset="12")
    assert hdr10_of(mkv) == want and hdr10_of(mp4) == want  # x265's SEI, exact
    got = hdr10_of(av1)  # AV1 metadata OBUs: 0.16 fixed-point chromaticities
    assert got["cll"] == want["cll"]
    for a, b in zip(got["mastering"][0], want["mastering"][0], strict=True):
        assert abs(a - b) <= Fraction(1, 16384), (a, b)
    for out in (mkv, mp4, av1):
        line = video_line(out)
        assert "yuv420p10le(tv, bt2020nc/bt2020/smpte2084" in line, line
    # The container's own copy (Matroska MasteringMetadata, MP4 mdcv/clli), as FFmpeg
    # reports a stream's side data: the same values.
    for out in (mkv, mp4):
        info = ffmpeg_info(out)
        assert "Content light level metadata: MaxCLL=1000, MaxFALL=400" in info, info
        assert (
            "Mastering display metadata: has_primaries:1 has_luminance:1 r(0.6800,0.3200) "
            "g(0.2650,0.6900) b(0.1500 0.0600) wp(0.3127, 0.3290) min_luminance=0.000100, "
            "max_luminance=1000.000000"
        ) in info, info
        assert ffmpeg_errors(out) == ""
    assert len(packets(mp4, "video")) == 6
    code = main([str(src), "-o", str(tmp_path / "x264.mkv"), "--model", "bicubic"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not (tmp_path / "x264.mkv").exists()
    assert err.startswith("error: ") and "codec libx264 cannot carry it" in err, err


@integration
def test_timecode_kept_and_moved_for_ranges(tmp_path):
    """A MOV with a tmcd track (01:00:00:00, 25 fps) and AAC: .mov output (which crashed
    in the assemble task) gets a tmcd track with the same timecode and the audio; a
    --frames 25:30 range to .mkv starts at 01:00:01:00; --start 0.4 to .mp4 at
    01:00:00:10."""
    from tests.master_fixtures import ffmpeg_info, make_timecoded_mov

    src = make_timecoded_mov(tmp_path / "cam.mov")
    mov, mkv, mp4 = tmp_path / "cam_x2.mov", tmp_path / "cam_r.mkv", tmp_path / "cam_s.mp4"
    run(src, mov)
    run(src, mkv, video__frames='"25:30"')
    run(src, mp4, video__start_s=0.4)
    with av.open(str(mov)) as c:
        kinds = [s.type for s in c.streams]
        tmcd = [s for s in c.streams if s.type == "data"]
        assert kinds.count("audio") == 1 and len(tmcd) == 1
        assert tmcd[0].metadata.get("timecode") == "01:00:00:00"
        assert c.streams.video[0].metadata.get("timecode") == "01:00:00:00"
    assert len(packets(mov, "audio")) == len(packets(src, "audio"))
    assert "TIMECODE        : 01:00:01:00" in ffmpeg_info(mkv)
    assert len(packets(mkv, "video")) == 5
    with av.open(str(mp4)) as c:
        assert c.streams.video[0].metadata.get("timecode") == "01:00:00:10"


@integration
def test_video_that_starts_after_its_audio(tmp_path):
    """A stream-copied Matroska cut whose video starts 10 s after its audio is a video
    like any other: every frame, at its own time, with all the audio."""
    from tests.master_fixtures import make_late_video_mkv

    src = make_late_video_mkv(tmp_path / "cut.mkv", tmp_path)
    out = tmp_path / "cut_x2.mkv"
    run(src, out)
    src_v, out_v = packets(src, "video"), packets(out, "video")
    assert len(out_v) == len(src_v) == 10
    shift = out_v[0].pts - src_v[0].pts  # Matroska's lead for the audio's codec delay
    assert 0 <= shift <= 10 and src_v[0].pts == 10000
    assert [p.pts - shift for p in out_v] == [p.pts for p in src_v]
    assert len(packets(out, "audio")) == len(packets(src, "audio"))
    with av.open(str(out)) as c:
        frame = next(c.decode(video=0))
        assert (frame.width, frame.height) == (128, 96)


@integration
def test_refusal_names_a_container_that_holds_the_stream(tmp_path):
    """An MP4 subtitle track (mov_text) refused for .mkv names the containers that hold
    it, not the refused one (it said "cannot be stored in .mkv; use .mkv")."""
    from pipeline.job.plan import plan_job
    from tests.master_fixtures import ffmpeg

    srt = tmp_path / "cue.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:00,200\nhello\n")
    src = tmp_path / "subs.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25:duration=0.4", "-i", str(srt),
           "-c:v", "libx264", "-c:s", "mov_text", str(src))  # fmt: skip
    with pytest.raises(UserError) as err:
        plan_job(str(src), str(tmp_path / "o.mkv"), cfg(), overwrite=False)
    assert str(err.value) == (
        "stream #1 (subtitle, mov_text) cannot be stored in .mkv; use .mp4 or .mov, "
        "or pass --drop-unsupported to leave it out"
    )
