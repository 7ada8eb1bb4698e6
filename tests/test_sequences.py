"""Frame sequences in and out: DPX/EXR/TIFF/PNG files made by FFmpeg's encoders (the
ffmpeg binary, or PyAV for scene-linear EXR values), run through the pipeline, and read
back with FFmpeg's decoders (PyAV) and tifffile: numbering, depth, float-ness, pixels
against bicubic, timecode, gaps, resume, and a sequence to ProRes."""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.errors import UserError
from pipeline.video.frameheaders import (
    dpx_timecode,
    exr_timecode,
    set_dpx_timecode,
    set_exr_timecode,
    timecode_add,
)
from pipeline.video.sequence_in import find_frames, parse_rate
from tests.helpers import LOCAL_RUNNER, bicubic_reference

W, H = 48, 32


def ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg_frames(pattern: Path, pix_fmt: str, frames: int = 6, start: int = 0, *opts: str):
    """Frames of FFmpeg's moving test pattern, written by FFmpeg's image encoders."""
    subprocess.run(
        [ffmpeg(), "-loglevel", "error", "-f", "lavfi", "-i", f"testsrc2=size={W}x{H}:rate=24"]
        + ["-frames:v", str(frames), "-pix_fmt", pix_fmt, "-start_number", str(start), *opts]
        + [str(pattern)],
        check=True,
    )


def decode(path: Path | str, fmt: str = "rgb48le") -> tuple[str, np.ndarray, dict]:
    """(decoded pix_fmt, pixels, frame metadata) of one file, by FFmpeg's decoder."""
    with av.open(str(path)) as c:
        frame = next(c.decode(video=0))
    if fmt == "float":  # the planes as decoded (G, B, R), without swscale
        dt = np.float16 if "f16" in frame.format.name else np.float32
        g, b, r = (
            np.frombuffer(bytes(p), dt).reshape(frame.height, -1)[:, : frame.width]
            for p in frame.planes
        )
        return frame.format.name, np.stack([r, g, b], -1).astype(np.float32), frame.metadata
    return frame.format.name, frame.to_ndarray(format=fmt), dict(frame.metadata)


def float_bicubic(image: np.ndarray, scale: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(image).permute(2, 0, 1)[None]
    up = F.interpolate(t, scale_factor=scale, mode="bicubic", align_corners=False)
    return up[0].permute(1, 2, 0).numpy()


def run(src, out, *extra) -> None:
    from pipeline.cli.main import main

    args = [str(src), "-o", str(out), "--model", "bicubic", "--scale", "2", "--quiet"]
    assert main([*args, "--tile", "32", "--overlap", "8", *map(str, extra)]) == 0


# ------------------------------------------------------------------------ unit
@pytest.mark.unit
def test_timecodes_and_header_fields_read_back_by_ffmpeg(tmp_path):
    assert timecode_add("01:00:00:00", 25, Fraction(25)) == "01:00:01:00"
    assert timecode_add("00:00:59;29", 1, Fraction(30000, 1001)) == "00:01:00;02"
    assert timecode_add("00:09:59;29", 1, Fraction(30000, 1001)) == "00:10:00;00"
    assert timecode_add("00:00:00;00", 17982, Fraction(30000, 1001)) == "00:10:00;00"
    assert timecode_add("23:59:59:23", 1, Fraction(24)) == "00:00:00:00"
    for codec, pix_fmt, fmt in (("dpx", "gbrp10le", "rgb48le"), ("exr", "gbrpf32le", "float")):
        cc = av.CodecContext.create(codec, "w")
        cc.width, cc.height, cc.pix_fmt, cc.time_base = W, H, pix_fmt, Fraction(1, 24)
        if codec == "exr":
            cc.options = {"compression": "zip16", "format": "half"}
        src = av.VideoFrame.from_ndarray(np.full((H, W, 3), 0.5, np.float32), "gbrpf32le")
        data = b"".join(bytes(p) for p in cc.encode(src.reformat(format=pix_fmt)))
        tagged = (
            set_dpx_timecode(data, "01:02:03:04", Fraction(24))
            if codec == "dpx"
            else set_exr_timecode(data, "01:02:03;04")
        )
        (tmp_path / f"a.{codec}").write_bytes(data)
        (tmp_path / f"b.{codec}").write_bytes(tagged)
        _, plain, _ = decode(tmp_path / f"a.{codec}", fmt)
        _, moved, meta = decode(tmp_path / f"b.{codec}", fmt)
        np.testing.assert_array_equal(plain, moved)  # the pixels are where they were
        if codec == "dpx":
            assert meta["timecode"] == "01:02:03:04"  # FFmpeg's DPX decoder reads it
            assert dpx_timecode(tagged) == "01:02:03:04" and dpx_timecode(data) is None
        else:
            assert exr_timecode(tagged) == "01:02:03;04" and exr_timecode(data) is None


@pytest.mark.unit
def test_patterns_folders_rates_and_gaps(tmp_path, capsys):
    from pipeline.cli.main import main

    for n in (1001, 1002, 1003):
        (tmp_path / f"shot.{n:06d}.dpx").touch()
    assert find_frames(str(tmp_path / "shot.%06d.dpx")) == (
        str(tmp_path / "shot.%06d.dpx"),
        [1001, 1002, 1003],
    )
    assert find_frames(str(tmp_path)) == (str(tmp_path / "shot.%06d.dpx"), [1001, 1002, 1003])
    loose = tmp_path / "loose"
    loose.mkdir()
    for n in (8, 9, 10, 11):
        (loose / f"f{n}.png").touch()
    assert find_frames(str(loose)) == (str(loose / "f%d.png"), [8, 9, 10, 11])
    (loose / "f0012.png").touch()  # a name "f%04d.png" gives, not "f%d.png"
    assert find_frames(str(loose / "f%d.png"))[1] == [8, 9, 10, 11]
    assert find_frames(str(loose / "f%04d.png"))[1] == [12]
    assert parse_rate("24000/1001") == Fraction(24000, 1001) and parse_rate(25) == 25
    with pytest.raises(UserError, match="positive frame rate"):
        parse_rate("fast")
    # A gap is refused, naming the missing numbers, before anything runs.
    gap = tmp_path / "gap"
    gap.mkdir()
    for n in (1001, 1002, 1004, 1008):
        (gap / f"f.{n:04d}.dpx").touch()
    out = tmp_path / "out"
    out.mkdir()
    argv = [str(gap / "f.%04d.dpx"), "-o", str(out / "g.%04d.dpx"), "--model", "bicubic"]
    assert main([*argv, "--quiet", *LOCAL_RUNNER]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "frame(s) 1003, 1005-1007 are missing (4 of 8" in err[0], err
    assert not list(out.iterdir())
    # Two sequences in one folder: say which, ask for a pattern.
    (tmp_path / "other.0001.png").touch()
    with pytest.raises(UserError, match="more than one numbered sequence"):
        find_frames(str(tmp_path))


# ----------------------------------------------------------------- integration
@pytest.mark.integration
def test_dpx_10bit_from_1001_to_dpx_keeps_numbers_depth_and_resumes(tmp_path, capsys):
    from pipeline.store.jobstore import JobStore

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir(), out.mkdir()
    ffmpeg_frames(src / "f.%06d.dpx", "gbrp10le", 6, 1001)
    for k, n in enumerate(range(1001, 1007)):  # a scanner's DPX carries the timecode
        path = src / f"f.{n:06d}.dpx"
        tc = timecode_add("10:00:00:00", k, Fraction(24))
        path.write_bytes(set_dpx_timecode(path.read_bytes(), tc, Fraction(24)))
    assert decode(src / "f.001001.dpx")[2]["timecode"] == "10:00:00:00"
    kept = ("--keep-store", "--set", "video.keep_frames=true", "--set", "video.segment_frames=2")
    run(src / "f.%06d.dpx", out / "g.%06d.dpx", *LOCAL_RUNNER, *kept)
    names = sorted(p.name for p in out.iterdir() if p.suffix == ".dpx")
    assert names == [f"g.{n:06d}.dpx" for n in range(1001, 1007)]
    for n in (1001, 1004, 1006):
        _, lr, _ = decode(src / f"f.{n:06d}.dpx")
        fmt, sr, meta = decode(out / f"g.{n:06d}.dpx")
        assert fmt == "gbrp10le"  # 10-bit in, 10-bit out
        assert meta["timecode"] == f"10:00:00:{n - 1001:02d}"
        ref = bicubic_reference(lr, 2).astype(np.int64)
        diff = np.abs(sr.astype(np.int64) - ref)
        assert diff.max() <= 2 * 64 and diff.mean() < 32, n  # within 10-bit rounding

    # Resume after a kill in the middle of segment 0's files: 1001 complete, 1002 not
    # renamed yet (its temporary left behind), the segment not flagged encoded (its
    # frames are still in the store: they are freed only after the flag).
    url = out / "g.%06d.dpx.job.zarr"
    store = JobStore.open(str(url))
    assert store.spec["segments"][0] == [0, 2]
    store.array("encoded")[0] = 0
    keep = out / "g.001001.dpx"
    before = keep.stat().st_mtime_ns
    rewritten = (out / "g.001002.dpx").read_bytes()
    (out / "g.001002.dpx").unlink()
    (out / ".g.001002.dpx.partial-999999999").write_bytes(b"half a file")
    run(src / "f.%06d.dpx", out / "g.%06d.dpx", *LOCAL_RUNNER, *kept[1:])
    assert keep.stat().st_mtime_ns == before  # the complete file was skipped
    assert (out / "g.001002.dpx").read_bytes() == rewritten
    assert not list(out.glob(".*partial*"))
    assert not url.exists()  # done: the store is removed
    capsys.readouterr()
    # A new job over complete files is refused unless --overwrite.
    from pipeline.cli.main import main

    argv = [str(src / "f.%06d.dpx"), "-o", str(out / "g.%06d.dpx"), "--model", "bicubic"]
    assert main([*argv, "--quiet", *LOCAL_RUNNER]) == 2
    err = capsys.readouterr().err
    assert "already exists (6 of the 6 output frames do); pass --overwrite" in err
    # The shot to ProRes 4444 (10-bit RGB in: yuv444p10le), its timecode on a tmcd track.
    mov = tmp_path / "shot.mov"
    run(src / "f.%06d.dpx", mov, *LOCAL_RUNNER, "--codec", "prores_ks")
    with av.open(str(mov)) as c:
        assert c.streams.video[0].codec_context.profile == "4444"
        assert c.streams.video[0].frames == 6
        tmcd = [s for s in c.streams if s.type == "data"]
        assert tmcd and tmcd[0].metadata["timecode"] == "10:00:00:00"


def write_exr(pattern: Path, numbers, half: bool) -> list[np.ndarray]:
    """Scene-linear frames (values up to 4) written by FFmpeg's EXR encoder (PyAV)."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    frames = []
    for k, n in enumerate(numbers):
        img = np.stack([x / W * 4, y / H * 2 + k * 0.1, (x + y) % 7 / 7], axis=-1)
        cc = av.CodecContext.create("exr", "w")
        cc.width, cc.height, cc.pix_fmt, cc.time_base = W, H, "gbrpf32le", Fraction(1, 24)
        cc.options = {"format": "half" if half else "float", "compression": "zip1"}
        frame = av.VideoFrame.from_ndarray(img.astype(np.float32), format="gbrpf32le")
        Path(str(pattern) % n).write_bytes(b"".join(bytes(p) for p in cc.encode(frame)))
        frames.append(img)
    return frames


@pytest.mark.integration
def test_exr_half_and_float_keep_scene_linear_values_and_float_ness(tmp_path, ray_local, capsys):
    """Half EXR on Ray (the sequence writer as Ray tasks), float EXR in process."""
    from pipeline.cli.main import main

    for half, fmt in ((True, "gbrpf16le"), (False, "gbrpf32le")):
        src, out = tmp_path / f"in{half}", tmp_path / f"out{half}"
        src.mkdir(), out.mkdir()
        write_exr(src / "plate.%04d.exr", [1, 2, 3], half)
        runner = () if half else LOCAL_RUNNER
        run(src, out / "up.%04d.exr", *runner, "--set", "video.segment_frames=2")  # a folder
        assert sorted(p.name for p in out.iterdir()) == [f"up.{n:04d}.exr" for n in (1, 2, 3)]
        for n in (1, 3):
            _, lr, _ = decode(src / f"plate.{n:04d}.exr", "float")
            got, sr, _ = decode(out / f"up.{n:04d}.exr", "float")
            assert got == fmt  # half stays half, float stays float
            ref = float_bicubic(lr, 2)
            assert ref.max() > 3.5 and sr.max() > 3.5  # above 1 kept, not clipped
            tol = 4e-3 if half else 1e-5
            np.testing.assert_allclose(sr, ref, atol=tol, rtol=tol)
    capsys.readouterr()
    plate = str(tmp_path / "inTrue" / "plate.%04d.exr")
    for out_name, extra, text in (
        ("s.%04d.exr", ("--model", "s3diff"), "pass --set model.value_range=MIN,MAX"),
        ("v.mov", ("--model", "bicubic"), "write an EXR sequence"),
        ("p.%04d.png", ("--model", "bicubic"), "only an EXR sequence keeps them"),
    ):
        argv = [plate, "-o", str(tmp_path / out_name), *extra, "--quiet", *LOCAL_RUNNER]
        assert main(argv) == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and text in err[0], err


@pytest.mark.integration
def test_video_with_timecode_to_dpx_and_16bit_tiff_to_tiff(tmp_path, capsys):
    import tifffile

    from pipeline.cli.main import main

    # A camera-style MOV (timecode track, audio) -> DPX frames from --start-number, the
    # range's timecode in each header (read back by FFmpeg's DPX decoder).
    mov, out = tmp_path / "cam.mov", tmp_path / "dpx"
    out.mkdir()
    subprocess.run(
        [ffmpeg(), "-loglevel", "error", "-f", "lavfi", "-i", f"testsrc2=size={W}x{H}:rate=25"]
        + ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-frames:v", "8"]
        + ["-shortest", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac"]
        + ["-timecode", "01:00:00:00", str(mov)],
        check=True,
    )
    argv = [str(mov), "-o", str(out / "f.%05d.dpx"), "--model", "bicubic", "--quiet"]
    assert main([*argv, *LOCAL_RUNNER]) == 2  # the audio has no place in a sequence
    err = capsys.readouterr().err
    assert "(audio) of" in err and "--drop-unsupported" in err, err
    run(
        mov,
        out / "f.%05d.dpx",
        *LOCAL_RUNNER,
        "--frames",
        "2:6",
        "--start-number",
        "100",
        "--drop-unsupported",
    )
    assert sorted(p.name for p in out.iterdir()) == [f"f.{n:05d}.dpx" for n in range(100, 104)]
    for k, n in enumerate(range(100, 104)):
        fmt, sr, meta = decode(out / f"f.{n:05d}.dpx", "rgb24")
        assert fmt == "rgb24" and sr.shape == (2 * H, 2 * W, 3)
        assert meta["timecode"] == f"01:00:00:{2 + k:02d}"  # frame 2 of 25 fps 01:00:00:00

    # 16-bit TIFF frames (FFmpeg's TIFF encoder), numbered from 0 -> 16-bit TIFF frames.
    src, tif_out = tmp_path / "tif", tmp_path / "tif_out"
    src.mkdir(), tif_out.mkdir()
    ffmpeg_frames(src / "t_%03d.tif", "rgb48le", 4, 0)
    run(src / "t_%03d.tif", tif_out / "u_%03d.tif", *LOCAL_RUNNER, "--frames", "1:4")
    assert sorted(p.name for p in tif_out.iterdir()) == [f"u_{n:03d}.tif" for n in (1, 2, 3)]
    for n in (1, 3):  # a range keeps the source's numbers
        lr = tifffile.imread(src / f"t_{n:03d}.tif")
        sr = tifffile.imread(tif_out / f"u_{n:03d}.tif")
        assert sr.dtype == np.uint16 and sr.shape == (2 * H, 2 * W, 3)
        diff = np.abs(sr.astype(np.int64) - bicubic_reference(lr, 2).astype(np.int64))
        assert diff.max() <= 1, n


@pytest.mark.integration
def test_png_folder_to_prores(tmp_path):
    """A sequence to a video works like any video: ProRes 422 HQ, as studios hand over,
    at --fps 24000/1001 (numbered from 1, found in the folder). In-process: a sequence
    decoded and written by Ray's tasks is the half-EXR run above."""
    from pipeline.job.launch import run_job
    from tests.helpers import make_config

    src = tmp_path / "png"
    src.mkdir()
    ffmpeg_frames(src / "frame%04d.png", "rgb24", 6, 1)
    out = tmp_path / "out.mov"
    cfg = make_config(
        scale=2,
        tile=32,
        overlap=8,
        video__codec="prores_ks",
        video__options="profile=3",
        video__pix_fmt="yuv422p10le",  # ProRes is 10-bit: 8-bit PNGs are converted on request
        video__fps="24000/1001",
        video__segment_frames=3,
        run__runner="local",
    )
    summary = run_job(str(src), str(out), cfg, progress=False)
    assert summary.frames == 6 and summary.segments_total == 2
    with av.open(str(out)) as c:
        vs = c.streams.video[0]
        assert vs.codec_context.name == "prores" and vs.average_rate == Fraction(24000, 1001)
        assert vs.codec_context.profile == "HQ"
        frames = list(c.decode(vs))
        decoded = [f.to_ndarray(format="rgb24") for f in frames]
        assert [f.pts * f.time_base for f in frames] == [
            Fraction(1001 * i, 24000) for i in range(6)
        ]
    assert len(decoded) == 6 and decoded[0].shape == (2 * H, 2 * W, 3)
    for i in (0, 5):
        _, lr, _ = decode(src / f"frame{i + 1:04d}.png", "rgb24")
        ref = bicubic_reference(lr, 2).astype(float)
        assert np.abs(decoded[i].astype(float) - ref).mean() < 4.0, i  # codec noise only


@pytest.mark.unit
@pytest.mark.parametrize(
    "pix_fmt,bits,dtype",
    [("rgb24", 8, "uint8"), ("gbrp10le", 10, "uint16"), ("gbrp12le", 12, "uint16"),
     ("rgb48le", 16, "uint16")],
)  # fmt: skip
def test_dpx_depths_read_and_written_at_their_depth(tmp_path, pix_fmt, bits, dtype):
    """Each DPX depth FFmpeg's encoder writes is probed and stored at its depth, and a
    frame of the store is written back in the same pixel format, values unchanged."""
    from pipeline.video.sequence_in import decode_file, probe_sequence
    from pipeline.video.sequence_out import _encoder, frame_bytes, plan_sequence_output

    rng = np.random.default_rng(bits)
    top = (1 << bits) - 1
    values = rng.integers(0, top + 1, (H, W, 3)).astype(np.uint16 if bits > 8 else np.uint8)
    cc = av.CodecContext.create("dpx", "w")
    cc.width, cc.height, cc.pix_fmt, cc.time_base = W, H, pix_fmt, Fraction(1, 24)
    frame = av.VideoFrame.from_ndarray(values, format=pix_fmt)  # (H, W, 3) RGB, any depth
    (tmp_path / "s.0007.dpx").write_bytes(b"".join(bytes(p) for p in cc.encode(frame)))
    info = probe_sequence(str(tmp_path / "s.%04d.dpx"), "25")
    assert (info.bit_depth, info.dtype, info.numbers, info.pix_fmt) == (bits, dtype, (7,), pix_fmt)
    stored = decode_file(str(tmp_path / "s.0007.dpx"), "dpx", dtype)
    scale = 65535 / top if bits > 8 else 1  # stored at the full 16-bit scale
    np.testing.assert_allclose(stored / scale, values, atol=0.5)
    out = tmp_path / "o"
    out.mkdir()
    target = plan_sequence_output(info, str(out / "o.%04d.dpx"), None, False, False)
    assert target.pix_fmt == pix_fmt and target.numbers == (7,)
    (out / "o.0007.dpx").write_bytes(frame_bytes(_encoder(target, W, H), stored, target))
    got, back, _ = decode(out / "o.0007.dpx")
    assert got == pix_fmt
    np.testing.assert_array_equal(back, decode(tmp_path / "s.0007.dpx")[1])
