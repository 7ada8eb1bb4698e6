#!/usr/bin/env python
"""Gigapixel benchmark: the whole pipeline vs. one in-memory bicubic call.

For each size N (an N x N RGB uint8 tiled BigTIFF, generated once and cached under
``bench/_data/``), this runs

* the pipeline, end to end, as a subprocess:
  ``python run_pipeline.py IN -o OUT.tif --model bicubic --scale 2 --overwrite``
  (it starts its own local Ray), and
* a baseline, also a subprocess: ``tifffile.imread`` the whole input, ONE
  ``F.interpolate(mode="bicubic", scale_factor=2)`` on it as float32, clamp, round,
  uint8, ``tifffile.imwrite`` a tiled (512) zlib BigTIFF (level 0 only, no pyramid).
  It is skipped when its estimated memory (input + float32 input + float32 output +
  uint8 output) exceeds ``--baseline-limit-gib``.

While each subprocess runs, the summed RSS of its whole process tree (for the pipeline:
driver, gcs_server, raylet, Ray workers and agents) is sampled every ``--interval``
seconds with psutil and the peak is kept, with a breakdown by process type. The
pipeline's stage log lines (stderr) are timestamped as they arrive to time its stages.
Outputs are deleted after each run; only the inputs are cached.

The pipeline is run from a ``git archive`` copy of HEAD (``--code snapshot``, the
default) so that edits to the checkout during a long run cannot change the code halfway
(Ray workers import modules when they start). Before each run the script waits for the
machine to be quiet, and during it measures the CPU used by processes outside the
measured tree; runs where that averaged over 0.2 cores are flagged CONTAMINATED, since
timings on a 2-core machine are then not comparable (peak RSS is unaffected).

    python bench/gigapixel.py --quick                  # 2000, 4000: a fast smoke run
    python bench/gigapixel.py --sizes 10000,20000      # the gigapixel case
    python bench/gigapixel.py --sizes 10000,20000 --inputs flat,cog   # + pyramidal rows

``--inputs cog`` adds the pyramidal-input row: the same image as a Cloud-Optimized
GeoTIFF made by GDAL's COG driver (through rasterio; 512-px tiles, deflate, overviews
down to one tile, a UTM georeference from a VRT so the output is a COG too). The
pipeline reads its level 0 only; its peak RSS at two sizes is compared like the flat
input's (goal: within 1.1x). The baseline runs for the flat input only.

This is a script that prints a table (and writes ``bench/_data/results-*.json``), not
a test.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "_data"
GIB = 2**30
SCALE = 2
TILE = 512


# ----------------------------------------------------------------------------- inputs
def _band(y0: int, h: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Rows [y0, y0 + h) of the synthetic image: smooth waves, a faint grid, noise."""
    y = np.arange(y0, y0 + h, dtype=np.float32)[:, None]
    x = np.arange(size, dtype=np.float32)[None, :]
    grid = np.where(
        ((y.astype(np.int64) // 256) + (x.astype(np.int64) // 256)) % 2 == 0, 12.0, -12.0
    ).astype(np.float32)
    r = 127.5 + 80.0 * np.sin(x / 611.0 + y / 1733.0) + 25.0 * np.cos(y / 97.0) + grid
    g = 127.5 + 90.0 * np.sin(y / 523.0) * np.cos(x / 877.0) + grid
    b = 127.5 + 100.0 * np.sin((x + 0.5 * y) / 1013.0) - grid
    band = np.stack([r, g, b], axis=-1)
    band += rng.integers(-6, 7, size=band.shape, dtype=np.int16)
    return np.clip(np.rint(band), 0, 255).astype(np.uint8)


def _tiff_shape(path: Path) -> tuple[int, ...] | None:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return tuple(tif.pages[0].shape)
    except Exception:
        return None


def make_input(size: int) -> Path:
    """An RGB uint8 tiled (512) zlib BigTIFF, written one row band of tiles at a time."""
    import tifffile

    path = DATA / f"input_{size}.tif"
    if path.exists() and _tiff_shape(path) == (size, size, 3):
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    rng = np.random.default_rng(size)

    def tiles():
        for y0 in range(0, size, TILE):
            h = min(TILE, size - y0)
            band = _band(y0, h, size, rng)
            for x0 in range(0, size, TILE):
                t = band[:, x0 : x0 + TILE]
                if t.shape[:2] != (TILE, TILE):
                    t = np.pad(t, ((0, TILE - t.shape[0]), (0, TILE - t.shape[1]), (0, 0)))
                yield t

    t0 = time.perf_counter()
    print(f"generating {path.relative_to(ROOT)} ({size}x{size}) ...", flush=True)
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        tif.write(
            tiles(),
            shape=(size, size, 3),
            dtype=np.uint8,
            tile=(TILE, TILE),
            photometric="rgb",
            planarconfig="contig",
            compression="zlib",
            metadata=None,
        )
    os.replace(tmp, path)
    print(
        f"  done in {time.perf_counter() - t0:.0f} s, {path.stat().st_size / GIB:.2f} GiB",
        flush=True,
    )
    return path


def make_cog(size: int) -> Path:
    """The flat input as a GeoTIFF COG with overviews, by GDAL's COG driver: a VRT gives
    the flat TIFF a UTM georeference, GDAL streams it into the COG (tiles, overviews)."""
    from rasterio.shutil import copy

    path = DATA / f"input_{size}_cog.tif"
    if path.exists() and _tiff_shape(path) == (size, size, 3):
        return path
    flat = make_input(size)
    vrt = DATA / f".input_{size}.vrt"
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><ColorInterp>{c}</ColorInterp>'
        f"<SimpleSource><SourceFilename>{flat}</SourceFilename><SourceBand>{b}</SourceBand>"
        "</SimpleSource></VRTRasterBand>"
        for b, c in ((1, "Red"), (2, "Green"), (3, "Blue"))
    )
    vrt.write_text(
        f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><SRS>EPSG:32633</SRS>'
        f"<GeoTransform>500000, 10, 0, 4000000, 0, -10</GeoTransform>{bands}</VRTDataset>"
    )
    tmp = path.with_name(f".{path.name}.partial")
    t0 = time.perf_counter()
    print(f"generating {path.relative_to(ROOT)} (COG driver, overviews) ...", flush=True)
    copy(vrt, tmp, driver="COG", blocksize=TILE, compress="DEFLATE", bigtiff="YES",
         overview_resampling="average", num_threads="ALL_CPUS")  # fmt: skip
    os.replace(tmp, path)
    vrt.unlink()
    print(f"  done in {time.perf_counter() - t0:.0f} s, {_levels(path)} level(s)", flush=True)
    return path


def _levels(path: Path) -> int:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return len(tif.series[0].levels)


# ------------------------------------------------------------------------ RSS sampling
def classify(proc: psutil.Process, root_pid: int) -> str:
    """A process's type: driver, raylet, gcs_server, ray::<actor or task>, agents..."""
    if proc.pid == root_pid:
        return "driver"
    info = getattr(proc, "info", None) or {}
    cmd = info.get("cmdline") or []
    name = info.get("name") or ""
    head = cmd[0].split()[0] if cmd and cmd[0].strip() else ""
    if head.startswith("ray::"):
        label = head.split("(")[0]
        if "." in label:  # "ray::RegionWorker.process" -> the actor class
            label = label.split(".")[0]
        return label
    if name.startswith("ray::"):  # proctitle not readable yet; comm is cut to 15 chars
        return name + "(comm)"
    if name in ("raylet", "gcs_server"):
        return name
    joined = " ".join(cmd)
    for key, label in (
        ("dashboard/agent.py", "dashboard_agent"),
        ("dashboard/dashboard.py", "dashboard"),
        ("runtime_env/agent", "runtime_env_agent"),
        ("log_monitor.py", "log_monitor"),
        ("monitor.py", "monitor"),
        ("default_worker.py", "ray_worker(starting)"),
        ("raylet", "raylet"),
        ("gcs_server", "gcs_server"),
    ):
        if key in joined:
            return label
    if name.startswith("python") and len(cmd) > 1:  # say which script
        script = next((Path(a).name for a in cmd[1:] if a.endswith(".py")), "")
        if not script and "-m" in cmd[1:-1]:
            script = "-m " + cmd[cmd.index("-m") + 1]
        return f"{name} {script}".strip()
    return name or (Path(cmd[0]).name if cmd else "?")


class Stages:
    """Timestamped stage events, shared by the stderr reader and the sampler."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.events: list[tuple[float, str]] = [(t0, "start")]
        self.lock = threading.Lock()

    def mark(self, t: float, label: str) -> None:
        with self.lock:
            if all(lbl != label for _, lbl in self.events):
                self.events.append((t, label))

    def current(self) -> str:
        with self.lock:
            return self.events[-1][1]

    def durations(self, t_end: float) -> list[tuple[str, float]]:
        ev = sorted(self.events)
        out = []
        for (t, label), nxt in zip(ev, ev[1:] + [(t_end, "end")], strict=True):
            out.append((label, nxt[0] - t))
        return out


class TreeSampler(threading.Thread):
    """Samples the summed RSS of a process tree; keeps the peak and its breakdown."""

    def __init__(self, pid: int, interval: float, stages: Stages | None = None, watch=None) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.stages = stages
        self.watch = watch  # called each sample (file-based stage detection)
        self.stop_event = threading.Event()
        self.peak = 0
        self.peak_t = 0.0
        self.peak_parts: dict[str, list[int]] = {}
        self.peak_by_type: dict[str, int] = {}  # max over time of each type's sum
        self.peak_by_stage: dict[str, int] = {}
        self.peak_procs = 0
        self.n_samples = 0
        self.others_peak = 0  # ray processes outside the tree (should stay 0)
        self.others_seen: dict[int, tuple[float, str, int]] = {}  # pid -> (t, type, rss)
        self.preexisting = {p.pid for p in psutil.process_iter()}
        vm = psutil.virtual_memory()
        self.used0 = vm.total - vm.available
        self.used_peak_delta = 0
        self.series: list[tuple[float, int, dict[str, int]]] = []  # (t, tree RSS, by type)
        self.cpu_by_pid: dict[int, float] = {}  # last seen user+system s of tree processes
        self.other_cpu: dict[int, tuple[str, float, float]] = {}  # pid -> (type, first, last)
        self.cpu0 = _busy_seconds()
        self.cpu1 = self.cpu0

    def run(self) -> None:
        while not self.stop_event.is_set():
            t = time.perf_counter()
            if self.watch is not None:
                self.watch(t)
            # One snapshot of all processes: the tree and "outside" come from the same
            # pass, so a process that starts between two scans is never miscounted.
            snap = {}
            for p in psutil.process_iter(["ppid", "name", "cmdline", "memory_info", "cpu_times"]):
                if p.info["memory_info"] is not None:
                    snap[p.pid] = p
            if self.pid not in snap:
                break
            kids: dict[int, list[int]] = {}
            for pid, p in snap.items():
                kids.setdefault(p.info["ppid"], []).append(pid)
            tree, todo = set(), [self.pid]
            while todo:
                pid = todo.pop()
                if pid not in tree:
                    tree.add(pid)
                    todo.extend(kids.get(pid, ()))
            total, parts = 0, {}
            for pid in tree:
                rss = snap[pid].info["memory_info"].rss
                ct = snap[pid].info["cpu_times"]
                if ct is not None:
                    self.cpu_by_pid[pid] = ct.user + ct.system
                label = classify(snap[pid], self.pid)
                total += rss
                n, s = parts.get(label, (0, 0))
                parts[label] = [n + 1, s + rss]
            self._outside(snap, tree)
            vm = psutil.virtual_memory()
            self.used_peak_delta = max(self.used_peak_delta, vm.total - vm.available - self.used0)
            self.n_samples += 1
            self.series.append((round(t, 2), total, {k: v[1] for k, v in parts.items()}))
            for label, (_, s) in parts.items():
                self.peak_by_type[label] = max(self.peak_by_type.get(label, 0), s)
            if self.stages is not None:
                st = self.stages.current()
                self.peak_by_stage[st] = max(self.peak_by_stage.get(st, 0), total)
            if total > self.peak:
                self.peak, self.peak_t, self.peak_parts = total, t, parts
                self.peak_procs = len(tree)
            self.stop_event.wait(max(0.0, self.interval - (time.perf_counter() - t)))

    def _outside(self, snap: dict, tree: set[int]) -> None:
        """Ray processes that are not descendants (re-parented daemons) would be missed."""
        total = 0
        for pid, p in snap.items():
            if pid in tree:
                continue
            ct = p.info["cpu_times"]
            if ct is not None:
                label = f"{classify(p, -1)}[{pid}]"
                first = self.other_cpu.get(pid, (label, ct.user + ct.system, 0.0))[1]
                self.other_cpu[pid] = (label, first, ct.user + ct.system)
            if pid in self.preexisting:
                continue
            joined = " ".join(p.info["cmdline"] or []) + " " + (p.info["name"] or "")
            if "ray" not in joined:
                continue
            rss = p.info["memory_info"].rss
            total += rss
            if pid not in self.others_seen:
                stage = self.stages.current() if self.stages is not None else "-"
                self.others_seen[pid] = (
                    time.perf_counter(),
                    f"{classify(p, -1)}@{stage}(ppid {p.info['ppid']})",
                    rss,
                )
        self.others_peak = max(self.others_peak, total)

    def stop(self) -> None:
        self.stop_event.set()
        self.join()
        self.cpu1 = _busy_seconds()

    def cpu_summary(self, wall: float) -> dict:
        """CPU used by the measured tree vs. by everything else on the machine."""
        busy = self.cpu1 - self.cpu0
        tree = sum(self.cpu_by_pid.values())
        other = max(0.0, busy - tree)
        top = sorted(
            ((last - first, label) for label, first, last in self.other_cpu.values()), reverse=True
        )[:5]
        return {
            "tree_cpu_s": tree,
            "busy_cpu_s": busy,
            "other_cpu_s": other,
            "other_top": [f"{label} {sec:.1f}s" for sec, label in top if sec >= 0.5],
            "other_cores_avg": other / max(wall, 1e-9),
            "tree_cores_avg": tree / max(wall, 1e-9),
        }


def _busy_seconds() -> float:
    ct = psutil.cpu_times()
    return sum(ct) - ct.idle - getattr(ct, "iowait", 0.0)


def wait_for_quiet(max_wait: float, threshold: float = 0.25, window: float = 3.0) -> float:
    """Wait until the machine's other load is under ``threshold`` cores for ``window`` s.

    Returns the seconds waited (the benchmark shares a machine with other users; their
    load is also measured during each run and reported)."""
    t0 = time.perf_counter()
    while True:
        b0, w0 = _busy_seconds(), time.perf_counter()
        time.sleep(window)
        cores = (_busy_seconds() - b0) / (time.perf_counter() - w0)
        waited = time.perf_counter() - t0
        if cores < threshold or waited >= max_wait:
            if cores >= threshold:
                print(
                    f"  machine still busy ({cores:.2f} cores) after {waited:.0f} s; "
                    "measuring anyway",
                    flush=True,
                )
            return waited


def _reader(stream, on_line) -> None:
    """Split a byte stream on \\r and \\n (tqdm redraws with \\r) and timestamp lines."""
    buf = b""
    fd = stream.fileno()
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
        pieces = re.split(rb"[\r\n]", buf)
        buf = pieces.pop()
        now = time.perf_counter()
        for piece in pieces:
            if piece.strip():
                on_line(now, piece.decode(errors="replace"))
    if buf.strip():
        on_line(time.perf_counter(), buf.decode(errors="replace"))


# --------------------------------------------------------------------------- runners
TQDM = re.compile(r"^upscale:\s+(\d+)%\|")
STAGE = re.compile(r"^(probe|ingest|upscale|publish): ")


def _cleanup(out: Path) -> None:
    partials = map(Path, glob.glob(str(out.parent / f".{out.stem}*")))
    for p in [out, Path(f"{out}.job.zarr"), *partials]:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()


def _check_tiff(out: Path, size: int) -> str:
    import tifffile

    try:
        with tifffile.TiffFile(out) as tif:
            page = tif.pages[0]
            levels = max(1 + len(page.subifds or ()), len(tif.pages))  # SubIFDs or COG
            ok = tuple(page.shape) == (SCALE * size, SCALE * size, 3)
            return (
                f"{'ok' if ok else 'WRONG SHAPE'} {page.shape} {levels} level(s) "
                f"{out.stat().st_size / GIB:.2f} GiB"
            )
    except Exception as exc:  # report, never crash the benchmark
        return f"unreadable: {type(exc).__name__}: {exc}"


def code_snapshot(mode: str) -> tuple[Path, str]:
    """Where run_pipeline.py is run from, and which code that is.

    ``snapshot`` (default): ``git archive HEAD`` into ``bench/_data/code-<sha>/`` so a
    long run is not affected by edits to the working tree while it runs; Ray workers
    import the same copy (PYTHONPATH). ``worktree``: the checkout as it is."""

    def git(*a: str) -> str:
        return subprocess.run(
            ["git", *a], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout.strip()

    if mode == "worktree":
        dirty = git("status", "--porcelain", "--", "pipeline", "workers", "run_pipeline.py")
        return ROOT, f"worktree at {git('rev-parse', '--short', 'HEAD')}" + (
            " (+uncommitted changes)" if dirty else ""
        )
    sha = git("rev-parse", "HEAD")
    dest = DATA / f"code-{sha[:12]}"
    if not (dest / "run_pipeline.py").exists():
        tmp = DATA / f".code-{sha[:12]}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "archive", "--format=tar", sha], cwd=ROOT, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        os.replace(tmp, dest)
    subject = git("log", "-1", "--format=%s", sha)
    return dest, f"commit {sha[:12]} ({subject[:60]})"


def run_pipeline(
    inp: Path, size: int, interval: float, quiet: bool, code: Path, kind: str = "flat"
) -> dict:
    out_dir = DATA / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"sr_{size}{'' if kind == 'flat' else '_' + kind}.tif"
    _cleanup(out)
    cmd = [
        sys.executable,
        "run_pipeline.py",
        str(inp),
        "-o",
        str(out),
        "--model",
        "bicubic",
        "--scale",
        str(SCALE),
        "--overwrite",
    ]
    if quiet:
        cmd.append("--quiet")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if code != ROOT:  # the snapshot's packages win over the editable install, in workers too
        env["PYTHONPATH"] = os.pathsep.join([str(code), *filter(None, [env.get("PYTHONPATH")])])
    log_lines: list[str] = []
    stdout_lines: list[str] = []
    t0 = time.perf_counter()
    stages = Stages(t0)

    def on_err(t: float, line: str) -> None:
        m = TQDM.match(line)
        if m:
            stages.mark(t, "upscale")  # the bar appears when ingest has returned
            log_lines.append(f"{t - t0:8.2f} {line}") if m.group(1) in ("0", "100") else None
            return
        log_lines.append(f"{t - t0:8.2f} {line}")
        s = STAGE.match(line)
        if s:
            name = s.group(1)
            stages.mark(
                t,
                {
                    "probe": "ray-init+store",
                    "ingest": "ingest",
                    "upscale": "upscale",
                    "publish": "publish-pyramid",
                }[name],
            )

    def on_out(t: float, line: str) -> None:
        stdout_lines.append(line)
        log_lines.append(f"{t - t0:8.2f} [stdout] {line}")

    def watch(t: float) -> None:
        # publish writes a hidden sibling (".NAME.partial-PID.tif" or ".NAME.tif.partial-PID")
        if glob.glob(str(out_dir / f".{out.stem}*partial*")):
            stages.mark(t, "publish-tiff")
        elif out.exists():
            stages.mark(t, "ray-shutdown+store-removal")

    proc = subprocess.Popen(cmd, cwd=code, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sampler = TreeSampler(proc.pid, interval, stages, watch)
    sampler.start()
    readers = [
        threading.Thread(target=_reader, args=(proc.stderr, on_err), daemon=True),
        threading.Thread(target=_reader, args=(proc.stdout, on_out), daemon=True),
    ]
    for r in readers:
        r.start()
    rc = proc.wait()
    t1 = time.perf_counter()
    sampler.stop()
    for r in readers:
        r.join(timeout=10)
    check = _check_tiff(out, size) if rc == 0 else "no output"
    log_path = DATA / f"pipeline_{size}{'' if kind == 'flat' else '_' + kind}.log"
    log_path.write_text("\n".join(log_lines) + "\n")
    _cleanup(out)
    wall = t1 - t0
    out_mp = (SCALE * size) ** 2 / 1e6
    return {
        "cmd": " ".join(cmd),
        "rc": rc,
        "wall_s": wall,
        "mp_s": out_mp / wall if rc == 0 else 0.0,
        "cpu": sampler.cpu_summary(wall),
        "series": [
            (round(t - t0, 1), rss, parts)
            for t, rss, parts in sampler.series[:: max(1, len(sampler.series) // 1500)]
        ],
        "peak_rss": sampler.peak,
        "peak_t": sampler.peak_t - t0,
        "peak_stage": _stage_at(stages, sampler.peak_t),
        "peak_parts": sampler.peak_parts,
        "peak_procs": sampler.peak_procs,
        "peak_by_type": sampler.peak_by_type,
        "peak_by_stage": sampler.peak_by_stage,
        "outside_tree_peak": sampler.others_peak,
        "outside_seen": sorted(
            (round(t - t0, 1), lbl, rss) for t, lbl, rss in sampler.others_seen.values()
        ),
        "system_used_delta_peak": sampler.used_peak_delta,
        "samples": sampler.n_samples,
        "stages": stages.durations(t1) if not quiet else [],
        "check": check,
        "stdout": stdout_lines[-3:],
        "log": str(log_path.relative_to(ROOT)),
        "tail": [ln for ln in log_lines if "error" in ln.lower()][-5:],
    }


def _stage_at(stages: Stages, t: float) -> str:
    label = "start"
    for te, lbl in sorted(stages.events):
        if te <= t:
            label = lbl
    return label


def baseline_bytes(size: int) -> int:
    """input uint8 + float32 input + float32 output + uint8 output."""
    px_in, px_out = size * size * 3, (SCALE * size) ** 2 * 3
    return px_in + 4 * px_in + 4 * px_out + px_out


def run_baseline(inp: Path, size: int, interval: float, limit_gib: float) -> dict:
    need = baseline_bytes(size)
    if need > limit_gib * GIB:
        return {"skipped": f"skipped (needs {need / GIB:.1f} GiB)", "need": need}
    out = DATA / "out" / f"baseline_{size}.tif"
    out.parent.mkdir(parents=True, exist_ok=True)
    _cleanup(out)
    cmd = [sys.executable, str(Path(__file__).resolve()), "_baseline", str(inp), str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sampler = TreeSampler(proc.pid, interval)
    sampler.start()
    stdout, stderr = proc.communicate()
    t1 = time.perf_counter()
    sampler.stop()
    check = _check_tiff(out, size) if proc.returncode == 0 else "no output"
    _cleanup(out)
    wall = t1 - t0
    try:
        inner = json.loads(stdout.decode().strip().splitlines()[-1])
    except Exception:
        inner = {}
    return {
        "cmd": " ".join(cmd),
        "rc": proc.returncode,
        "wall_s": wall,
        "mp_s": (SCALE * size) ** 2 / 1e6 / wall if proc.returncode == 0 else 0.0,
        "peak_rss": sampler.peak,
        "need": need,
        "inner": inner,
        "check": check,
        "cpu": sampler.cpu_summary(wall),
        "stderr": stderr.decode(errors="replace")[-2000:] if proc.returncode else "",
    }


def baseline_worker(inp: str, out: str) -> None:
    """The naive single-process version: everything in memory, one interpolate call."""
    import tifffile
    import torch
    import torch.nn.functional as F

    torch.set_grad_enabled(False)
    t = {}
    t0 = time.perf_counter()
    img = tifffile.imread(inp)  # (H, W, 3) uint8
    t["read_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    x = torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0).contiguous().float()
    y = F.interpolate(x, scale_factor=SCALE, mode="bicubic", align_corners=False)
    t["interpolate_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    y.clamp_(0.0, 255.0).round_()
    res = y.to(torch.uint8)[0].permute(1, 2, 0).contiguous().numpy()
    t["convert_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tifffile.imwrite(
        out,
        res,
        bigtiff=True,
        tile=(TILE, TILE),
        compression="zlib",
        photometric="rgb",
        planarconfig="contig",
        metadata=None,
    )
    t["write_s"] = time.perf_counter() - t0
    t["torch_threads"] = torch.get_num_threads()
    print(json.dumps(t), flush=True)


# ----------------------------------------------------------------------------- report
def _g(b: float) -> str:
    return f"{b / GIB:.2f}"


def _load(r: dict) -> str:
    c = r["cpu"]
    flag = " (CONTAMINATED: other load)" if c["other_cores_avg"] > 0.2 else ""
    if c.get("other_top"):
        flag += f" [top others: {', '.join(c['other_top'])}]"
    return (
        f"measured process tree used {c['tree_cores_avg']:.2f} cores on average, other "
        f"processes {c['other_cores_avg']:.2f} cores{flag}"
    )


def table(results: list[dict]) -> str:
    head = (
        "| size (input px) | output MP | pipeline wall s | pipeline MP/s | pipeline peak "
        "RSS GiB | baseline wall s | baseline MP/s | baseline peak RSS GiB | MP/s ratio "
        "(pipeline/baseline) |"
    )
    rows = [head, "|" + "---|" * 9]
    for r in results:
        p, b, n = r["pipeline"], r["baseline"], r["size"]
        label = f"{n}x{n}" + (" COG+overviews" if r.get("kind") == "cog" else "")
        pw = (
            f"{p['wall_s']:.1f}" if p["rc"] == 0 else f"FAILED rc={p['rc']} after {p['wall_s']:.0f}"
        )
        pm = f"{p['mp_s']:.2f}" if p["rc"] == 0 else "-"
        if "skipped" in b:
            bw, bm, brss, ratio = b["skipped"], "-", "-", "-"
        elif b["rc"] != 0:
            bw, bm, brss, ratio = f"FAILED rc={b['rc']}", "-", _g(b["peak_rss"]), "-"
        else:
            bw, bm, brss = f"{b['wall_s']:.1f}", f"{b['mp_s']:.2f}", _g(b["peak_rss"])
            ratio = f"{p['mp_s'] / b['mp_s']:.2f}" if p["rc"] == 0 else "-"
        rows.append(
            f"| {label} | {(SCALE * n) ** 2 / 1e6:.0f} | {pw} | {pm} | "
            f"{_g(p['peak_rss'])} | {bw} | {bm} | {brss} | {ratio} |"
        )
    return "\n".join(rows)


def rss_goal(results: list[dict], goal: float = 1.2, what: str = "") -> tuple[str, bool]:
    """Peak RSS of the largest size over the smallest's, against ``goal``."""
    peaks = [r["pipeline"]["peak_rss"] for r in results]
    ok_runs = all(r["pipeline"]["rc"] == 0 for r in results)
    if len(peaks) < 2:
        return "need two sizes for the peak-RSS ratio", False
    small, large = results[0], results[-1]
    ratio = large["pipeline"]["peak_rss"] / max(1, small["pipeline"]["peak_rss"])
    under = all(p < 3 * GIB for p in peaks)
    passed = ok_runs and ratio <= goal and under
    text = (
        f"pipeline peak RSS{what} {large['size']} / {small['size']}: "
        f"{_g(large['pipeline']['peak_rss'])} / {_g(small['pipeline']['peak_rss'])} GiB "
        f"= {ratio:.2f} (goal <= {goal}); all under 3 GiB: {'yes' if under else 'no'}"
        f"{'' if ok_runs else '; a pipeline run FAILED'} -> {'PASS' if passed else 'FAIL'}"
    )
    return text, passed


def _outside_summary(seen: list) -> str:
    """Ray processes that were not ours: other users' Ray clusters on the same machine."""
    from collections import Counter

    kinds = Counter(lbl.split("@")[0] for _, lbl, _ in seen)
    first = ", ".join(f"{t} s {lbl} {rss / 2**20:.0f} MiB" for t, lbl, rss in seen[:6])
    return (
        f"  {len(seen)} Ray processes outside the measured tree appeared "
        f"({', '.join(f'{k} x{n}' for k, n in kinds.most_common())}); first: {first}"
    )


def details(r: dict) -> str:
    p = r["pipeline"]
    lines = [
        f"### {r['size']}x{r['size']} {r.get('kind', 'flat')} input: pipeline details",
        f"rc={p['rc']}; output check: {p['check']}; stage log: {p['log']}",
        f"peak RSS {_g(p['peak_rss'])} GiB at t={p['peak_t']:.1f} s (stage "
        f"{p['peak_stage']}), {p['peak_procs']} processes; "
        f"{p['samples']} samples; system 'used' rose by at most "
        f"{_g(p['system_used_delta_peak'])} GiB; ray processes outside the tree: "
        f"{_g(p['outside_tree_peak'])} GiB",
        *([_outside_summary(p["outside_seen"])] if p["outside_seen"] else []),
        "",
        "| process type | count at peak | RSS at peak GiB | own max over run GiB |",
        "|---|---|---|---|",
    ]
    for label, (n, s) in sorted(p["peak_parts"].items(), key=lambda kv: -kv[1][1]):
        lines.append(f"| {label} | {n} | {_g(s)} | {_g(p['peak_by_type'].get(label, 0))} |")
    absent = set(p["peak_by_type"]) - set(p["peak_parts"])
    for label in sorted(absent, key=lambda k: -p["peak_by_type"][k]):
        lines.append(f"| {label} | 0 | 0.00 | {_g(p['peak_by_type'][label])} |")
    rw = [
        (t, parts.get("ray::RegionWorker", 0))
        for t, _, parts in p.get("series", [])
        if parts.get("ray::RegionWorker")
    ]
    if len(rw) >= 5:
        picks = [rw[round(i * (len(rw) - 1) / 8)] for i in range(9)]
        lines += [
            "",
            "ray::RegionWorker RSS (all actors) during upscale, t s: GiB -> "
            + ", ".join(f"{t:.0f}: {_g(v)}" for t, v in picks),
        ]
    if p["stages"]:
        lines += ["", "| stage | seconds | peak tree RSS in stage GiB |", "|---|---|---|"]
        for label, secs in p["stages"]:
            lines.append(f"| {label} | {secs:.1f} | {_g(p['peak_by_stage'].get(label, 0))} |")
    b = r["baseline"]
    if "inner" in b and b["inner"]:
        inner = ", ".join(
            f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in b["inner"].items()
        )
        lines += [
            "",
            f"baseline: {inner}; estimated need {_g(b['need'])} GiB; output check: {b['check']}",
        ]
    elif "skipped" in b:
        lines += ["", f"baseline: {b['skipped']}"]
    if b.get("stderr"):
        lines += ["", "baseline stderr tail:", b["stderr"]]
    if p["tail"]:
        lines += ["", "pipeline error lines:", *p["tail"]]
    return "\n".join(lines)


# ------------------------------------------------------------------ TIFF writer alone
def bench_tiff_writer(side: int, threads: list[int], max_wait: float) -> list[dict]:
    """The TIFF writer on an in-memory side x side RGB pyramid (the pipeline's output
    levels): first the previous writer (tifffile compressing, ``previous_tiff_writer``),
    then the current one (tiles compressed on a pool, placed by tifffile with SubIFDs,
    or the COG writer used for GeoTIFF inputs) per thread count. MP/s counts the
    pixels of every level."""
    import tempfile

    sys.path.insert(0, str(ROOT))
    from pipeline.image.metadata import ImageMeta
    from pipeline.image.publish import downsample2, pyramid_shapes, write_tiff

    rng = np.random.default_rng(0)
    shapes = pyramid_shapes(side, side, 1024)
    levels = [np.concatenate([_band(y, min(2048, side - y), side, rng)
                              for y in range(0, side, 2048)])]  # fmt: skip
    for h, w in shapes[1:]:
        levels.append(downsample2(levels[-1], h, w))
    mp = sum(h * w for h, w in shapes) / 1e6
    geo = {
        33550: (10.0, 10.0, 0.0),
        33922: (0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0),
        34735: (1, 1, 0, 2, 1024, 0, 1, 1, 3072, 0, 1, 32633),
    }
    out = []
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        runs = [("before: tifffile compresses (auto threads)", {}, [0])]
        runs += [("tifffile SubIFDs", {}, threads), ("COG (GeoTIFF input)", geo, threads)]
        for writer, tags, counts in runs:
            for n in counts:
                path = os.path.join(tmp, "w.tif")
                wait_for_quiet(max_wait)
                me = psutil.Process()
                c0, b0 = sum(me.cpu_times()[:2]), _busy_seconds()
                m0 = time.thread_time()
                t0 = time.perf_counter()
                if n == 0:
                    previous_tiff_writer(path, levels)
                else:
                    write_tiff(path, lambda lv, y0, y1: levels[lv][y0:y1], shapes, TILE, 3,
                               "uint8", tags, SCALE, ImageMeta(), n)  # fmt: skip
                wall = time.perf_counter() - t0
                main_cpu = time.thread_time() - m0  # the serial part: reads, placing bytes
                own = sum(me.cpu_times()[:2]) - c0
                other = max(0.0, (_busy_seconds() - b0 - own) / wall)
                size_b = os.path.getsize(path)
                out.append({"side": side, "writer": writer, "threads": n, "wall_s": wall,
                            "mp": mp, "bytes": size_b, "cpu_s": own, "main_s": main_cpu,
                            "other_cores": other})  # fmt: skip
                os.unlink(path)
    return out


def previous_tiff_writer(path: str, levels: list[np.ndarray]) -> None:
    """The writer as it was before tiles were compressed on a pool: tifffile gets
    uncompressed tiles and compresses them itself (its automatic thread count)."""
    import tifffile

    def tiles(a: np.ndarray):
        for y in range(0, a.shape[0], TILE):
            for x in range(0, a.shape[1], TILE):
                t = a[y : y + TILE, x : x + TILE]
                yield np.pad(t, ((0, TILE - t.shape[0]), (0, TILE - t.shape[1]), (0, 0)))

    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for i, a in enumerate(levels):
            extra = {"subifds": len(levels) - 1} if i == 0 else {"subfiletype": 1}
            tif.write(tiles(a), shape=a.shape, dtype=a.dtype, tile=(TILE, TILE),
                      photometric="rgb", compression="zlib", metadata=None, **extra)  # fmt: skip


def writer_table(rows: list[dict]) -> str:
    def flag(r: dict) -> str:
        return " CONTAMINATED" if r["other_cores"] > 0.2 else ""

    lines = [
        "| output side | writer | threads | wall s | MP/s (all levels) | vs before | MB "
        "| writer CPU s | of it main thread | other load (cores) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = next(b["wall_s"] for b in rows if b["threads"] == 0 and b["side"] == r["side"])
        lines.append(
            f"| {r['side']} | {r['writer']} | {r['threads'] or 'auto'} | {r['wall_s']:.1f} | "
            f"{r['mp'] / r['wall_s']:.1f} | {base / r['wall_s']:.2f}x | {r['bytes'] / 1e6:.0f} | "
            f"{r['cpu_s']:.1f} | {r['main_s']:.1f} | {r['other_cores']:.2f}{flag(r)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_baseline":
        baseline_worker(argv[1], argv[2])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,20000", help="comma-separated input sides")
    ap.add_argument("--quick", action="store_true", help="sizes 2000,4000")
    ap.add_argument("--interval", type=float, default=0.2, help="RSS sampling period (s)")
    ap.add_argument("--baseline-limit-gib", type=float, default=16.0)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument(
        "--inputs",
        default="flat",
        help="comma-separated input kinds per size: flat (tiled BigTIFF), cog (GDAL COG "
        "with overviews: the pyramidal-input row)",
    )
    ap.add_argument(
        "--code",
        choices=("snapshot", "worktree"),
        default="snapshot",
        help="run a git-archive copy of HEAD (default) or the checkout as is",
    )
    ap.add_argument(
        "--max-wait-quiet",
        type=float,
        default=600.0,
        help="before each run, wait up to this long for other load to stop",
    )
    ap.add_argument(
        "--quiet", action="store_true", help="pass --quiet to the pipeline (no stage timings)"
    )
    ap.add_argument(
        "--writer-sides",
        default="",
        help="also time the TIFF writer alone on these output sides, before (1 thread) "
        "and after (all cores); e.g. 8000,20000",
    )
    ap.add_argument("--writer-only", action="store_true", help="only the TIFF writer table")
    args = ap.parse_args(argv)
    sizes = [2000, 4000] if args.quick else [int(s) for s in args.sizes.split(",") if s]
    if args.writer_sides:
        DATA.mkdir(parents=True, exist_ok=True)
        cores = len(os.sched_getaffinity(0))
        rows = []
        for side in [int(s) for s in args.writer_sides.split(",") if s]:
            print(f"[writer {side}] threads 1 and {cores} ...", flush=True)
            rows += bench_tiff_writer(side, sorted({1, cores}), args.max_wait_quiet)
        print(f"TIFF writer, {cores} cores, tile {TILE}, zlib/deflate level 6:")
        print(writer_table(rows), flush=True)
        if args.writer_only:
            return 0
    started = datetime.now(timezone.utc)
    code, code_desc = code_snapshot(args.code)
    print(
        f"gigapixel benchmark {started:%Y-%m-%d %H:%M} UTC; {psutil.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / GIB:.1f} GiB RAM; sizes {sizes}",
        flush=True,
    )
    print(f"pipeline code: {code_desc}, run from {code}", flush=True)
    kinds = [k for k in args.inputs.split(",") if k]
    if set(kinds) - {"flat", "cog"}:
        ap.error(f"--inputs: unknown kind in {args.inputs!r} (flat, cog)")
    results = []
    for size, kind in [(size, kind) for kind in kinds for size in sizes]:
        inp = make_input(size) if kind == "flat" else make_cog(size)
        tag = f"{size}" if kind == "flat" else f"{size} {kind}"
        print(f"[{tag}] pipeline ...", flush=True)
        wait_for_quiet(args.max_wait_quiet)
        p = run_pipeline(inp, size, args.interval, args.quiet, code, kind)
        print(
            f"[{tag}] pipeline rc={p['rc']} {p['wall_s']:.1f} s, peak RSS "
            f"{_g(p['peak_rss'])} GiB; {p['check']}; {_load(p)}",
            flush=True,
        )
        if kind != "flat":
            b = {"skipped": "not run for a pyramidal input (the flat row has it)"}
        elif args.no_baseline:
            b = {"skipped": "not run (--no-baseline)"}
        else:
            print(f"[{size}] baseline ...", flush=True)
            if baseline_bytes(size) <= args.baseline_limit_gib * GIB:
                wait_for_quiet(args.max_wait_quiet)
            b = run_baseline(inp, size, args.interval, args.baseline_limit_gib)
            if "skipped" in b:
                print(f"[{size}] baseline {b['skipped']}", flush=True)
            else:
                print(
                    f"[{size}] baseline rc={b['rc']} {b['wall_s']:.1f} s, peak RSS "
                    f"{_g(b['peak_rss'])} GiB; {b['check']}; {_load(b)}",
                    flush=True,
                )
        results.append({"size": size, "kind": kind, "pipeline": p, "baseline": b})
    print()
    print(f"pipeline code: {code_desc}")
    print(table(results))
    for r in results:
        for who in ("pipeline", "baseline"):
            if "cpu" in r[who]:
                print(f"  {r['size']} {who}: {_load(r[who])}")
    print()
    for kind in kinds:
        rows = [r for r in results if r["kind"] == kind]
        if kind == "flat":
            goal, _ = rss_goal(rows)
        else:  # issue 20: a pyramidal input is read at level 0, as flat in memory
            goal, _ = rss_goal(rows, 1.1, f" ({kind} input)")
        print(goal)
    for r in results:
        print()
        print(details(r))
    stamp = started.strftime("%Y%m%d-%H%M%S")
    res_path = DATA / f"results-{stamp}.json"
    res_path.write_text(
        json.dumps(
            {"started": started.isoformat(), "argv": argv, "code": code_desc, "results": results},
            indent=1,
            default=str,
        )
    )
    print(f"\nraw results: {res_path.relative_to(ROOT)}")
    return 0 if all(r["pipeline"]["rc"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
