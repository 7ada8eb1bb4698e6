"""Bundle the Python packages the GPU image lacks, so the whole pipeline runs there offline.

The GPU machine (docs/PERFORMANCE.md, "Whole pipeline on a GPU") has torch, peft,
huggingface_hub, safetensors, tifffile, aiohttp, grpcio, msgpack, psutil, pyyaml, tqdm,
fsspec and more, but no Ray, Zarr, PyAV or diffusers, no network, and at most 64 MiB of
working tree + carried files per call (this repo's tracked files are about 20 MiB of it).

    python bench/gpu_bundle.py                    # cp312 bundle for the GPU machine
    python bench/gpu_bundle.py --python 3.11 --no-pack --fake-image
                                                  # this machine's Python: CPU proof

Part 1 (``part1/site1.tar.xz``): Ray (installed tree without ray/jars, the dashboard's
client build, RLlib, ray.llm and console scripts), zarr, numcodecs, donfig, google-crc32c,
diffusers, importlib_metadata and jsonschema with its dependencies. Part 2
(``part2/av-*.whl``): PyAV's wheel as it is (its FFmpeg libraries are already compressed;
xz gains little and costs minutes). Both go under the ignored bench/_data/.

``--fake-image DIR`` also writes a folder of links to this venv's copies of the packages
the GPU image has (its package list from the device notes), so an interpreter that sees
only that folder and the unpacked bundle stands in for the GPU machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Versions as tested in this project's venv. Everything here is missing on the GPU image.
PART1 = [
    "ray==2.60.0",
    "zarr==3.1.6",
    "numcodecs==0.16.6",
    "donfig==0.8.1.post1",
    "google-crc32c==1.9.0",  # zarr 3's crc32c codec (sharding index checksums)
    "diffusers==0.42.1",  # needs huggingface_hub>=1.32 (image: 1.33), safetensors>=0.8 (0.8)
    "importlib_metadata==10.2.0",  # diffusers imports it by that name
    "jsonschema==4.26.0",  # Ray's runtime_env validation
    "jsonschema-specifications==2025.9.1",
    "referencing==0.37.0",
    "rpds-py==2026.9.1",
]
PART2 = ["av==18.1.0"]
# Not carried: on the image already (click, filelock, msgpack, packaging, protobuf, pyyaml,
# requests, attrs, typing_extensions, numpy, pillow, tifffile, tqdm, psutil, peft,
# safetensors, huggingface_hub, regex, zipp). imagecodecs is optional (publish falls back
# to zlib); Ray's dashboard extras are not needed (local runs use include_dashboard=False).

# Large parts of the Ray tree a local pipeline run never imports or starts.
RAY_STRIP = ["ray/jars", "ray/dashboard/client/build", "ray/rllib", "ray/llm", "bin"]

PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]

# The GPU image's Python packages (/work/.library/device/KINDS.md, read 2026-11-17) that the
# pipeline or its bundle imports; --fake-image links this venv's copies of them.
GPU_IMAGE = """
aiohappyeyeballs aiohttp aiosignal attrs certifi charset-normalizer click cloudpickle
filelock frozenlist fsspec grpcio hf-xet httpcore httpx huggingface-hub idna jinja2
markupsafe mpmath msgpack multidict networkx numpy packaging peft pillow propcache
protobuf psutil pyyaml regex requests safetensors sympy tifffile tqdm torch
typing-extensions urllib3 yarl zipp accelerate transformers tokenizers
""".split()


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def target_args(python: str) -> list[str]:
    out = ["--only-binary=:all:", "--python-version", python, "--implementation", "cp"]
    for p in PLATFORMS:
        out += ["--platform", p]
    return out


def du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def tracked_bytes() -> int:
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    return sum(
        (ROOT / f.decode()).stat().st_size for f in files if f and (ROOT / f.decode()).exists()
    )


def build_site(wheels: list[Path], site: Path, python: str) -> None:
    if site.exists():
        shutil.rmtree(site)
    pip("install", "-q", "--no-deps", "--no-compile", "--target", str(site),
        *target_args(python), *map(str, wheels))  # fmt: skip
    for rel in RAY_STRIP:
        shutil.rmtree(site / rel, ignore_errors=True)
    for cache in list(site.rglob("__pycache__")):
        shutil.rmtree(cache, ignore_errors=True)


def pack(site: Path, archive: Path, level: str) -> None:
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_suffix(".part")
    env = {**os.environ, "XZ_OPT": f"-{level} -T0"}
    subprocess.run(["tar", "-C", str(site), "-cJf", str(tmp), "."], check=True, env=env)
    tmp.rename(archive)


def fake_image(dest: Path) -> None:
    """Links to this interpreter's copies of the GPU image's packages (by their RECORDs)."""
    from importlib import metadata

    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    missing, done, todo = [], set(), list(GPU_IMAGE)
    while todo:  # the image's packages and what this venv's versions of them require
        name = todo.pop().lower().replace("_", "-")
        if name in done:
            continue
        done.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
            continue
        for req in dist.requires or []:
            if "extra ==" not in req:
                todo.append(re.split(r"[ ;<>=!~\[(]", req.strip(), maxsplit=1)[0])
        base = Path(dist.locate_file(""))
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in sorted(tops):
            src, link = base / top, dest / top
            if top == "bin" or not src.exists():
                continue
            if not link.exists() and not link.is_symlink():
                link.symlink_to(src)
                continue
            if not src.is_dir():
                continue
            # a namespace folder two distributions share (google/): merge one level down
            if link.is_symlink():
                first = Path(os.readlink(link))
                link.unlink()
                link.mkdir()
                for child in first.iterdir():
                    (link / child.name).symlink_to(child)
            for child in src.iterdir():
                if not (link / child.name).exists():
                    (link / child.name).symlink_to(child)
    print(f"fake GPU image: {dest} ({len(done) - len(missing)} distributions linked)")
    if missing:
        print("  not in this venv (so not linked): " + " ".join(missing))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default="3.12", help="target Python (3.12: GPU image)")
    parser.add_argument("--out", type=Path, help="default bench/_data/gpu_bundle[_cpXY]")
    parser.add_argument("--no-pack", action="store_true", help="unpacked sites only")
    parser.add_argument("--xz-level", default="6", help="xz preset (6: ~9 CPU-min for part 1)")
    parser.add_argument("--fake-image", action="store_true", help="also write OUT/fake_image")
    args = parser.parse_args()

    tag = "cp" + args.python.replace(".", "")
    out = args.out or ROOT / "bench" / "_data" / (
        "gpu_bundle" if tag == "cp312" else f"gpu_bundle_{tag}"
    )
    wheels_dir = out / "wheels"
    wheels_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pip("download", "-q", "--no-deps", "-d", str(wheels_dir), *target_args(args.python),
        *PART1, *PART2)  # fmt: skip
    wheels = sorted(wheels_dir.glob("*.whl"))
    av = [w for w in wheels if w.name.startswith("av-")]
    rest = [w for w in wheels if not w.name.startswith("av-")]
    print(f"downloaded {len(wheels)} wheels ({mib(sum(map(du, wheels)))}) in {wheels_dir}")

    site1, site2 = out / "site1", out / "site2"
    build_site(rest, site1, args.python)
    build_site(av, site2, args.python)
    print(f"site1 (part 1 unpacked, stripped): {mib(du(site1))}; site2 (PyAV): {mib(du(site2))}")
    if args.fake_image:
        fake_image(out / "fake_image")
    if args.no_pack:
        print(f"done in {time.perf_counter() - t0:.0f} s (not packed)")
        return 0

    part1 = out / "part1" / "site1.tar.xz"
    pack(site1, part1, args.xz_level)
    part2_dir = out / "part2"
    shutil.rmtree(part2_dir, ignore_errors=True)
    part2_dir.mkdir()
    for w in av:
        shutil.copy2(w, part2_dir / w.name)
    repo = tracked_bytes()
    budget = 64 * 2**20 - repo
    p1, p2 = du(part1), du(part2_dir)
    print(f"part 1: {part1.relative_to(ROOT)}  {mib(p1)}")
    print(f"part 2: {part2_dir.relative_to(ROOT)}/  {mib(p2)}")
    print(f"tracked files travel too: {mib(repo)}; room per call: {mib(budget)}")
    ok = p1 <= budget and p2 <= budget
    print("each part fits one call" if ok else "A PART DOES NOT FIT one call: strip more")
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
