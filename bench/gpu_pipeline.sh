#!/usr/bin/env bash
# The whole pipeline on the GPU machine, in one prepared run (docs/PERFORMANCE.md,
# "Whole pipeline on a GPU"). Bundle from bench/gpu_bundle.py, carried in two calls:
#   call 1: carry bench/_data/gpu_bundle/part1  ->  STAGE_ONLY=1 bash bench/gpu_pipeline.sh
#   call 2: carry bench/_data/gpu_bundle/part2  ->  bash bench/gpu_pipeline.sh
# Each call unpacks what it finds into /tmp/site (kept while the machine stays warm);
# call 2 writes full-size random weights and runs bench/gpu_pipeline.py under TOTAL_TIMEOUT.
# Image only, part 1 alone, one call: IMAGE_ONLY=1 bash bench/gpu_pipeline.sh
# CPU dry run: DRY=1 SITE=<unpacked sites, ':'-joined> PYTHON=<interpreter> bash bench/gpu_pipeline.sh
set -u
OUT=${OUT:-bench/_data/gpu_pipeline_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
B=bench/_data/gpu_bundle
exec > >(tee -a "$OUT/gpu_pipeline.log") 2>&1

if [ -z "${SITE:-}" ]; then
    mkdir -p /tmp/site
    for a in "$B"/part1/*.tar.xz; do
        [ -f "$a" ] || continue
        t=$(date +%s); tar -C /tmp/site -xJf "$a" || exit 1
        echo "unpacked $a ($(du -sh "$a" | cut -f1)) in $(( $(date +%s) - t )) s"
    done
    for w in "$B"/part2/*.whl; do
        [ -f "$w" ] || continue
        "$PY" -m zipfile -e "$w" /tmp/site || exit 1
        echo "unpacked $w ($(du -sh "$w" | cut -f1))"
    done
    SITE=/tmp/site
fi
export PYTHONPATH="$PWD:$SITE" PYTHONUNBUFFERED=1
MODS="torch ray zarr numcodecs diffusers peft av"
[ "${IMAGE_ONLY:-0}" = 1 ] && MODS="${MODS% av}" && set -- --skip a "$@"
MODS=$MODS "$PY" - <<'EOF' || { echo "bundle incomplete: run call 1 (part1) and call 2 (part2) back to back"; [ "${STAGE_ONLY:-0}" = 1 ] && exit 0; exit 1; }
import importlib, os
for m in os.environ["MODS"].split():
    mod = importlib.import_module(m)
    print(f"{m} {getattr(mod, '__version__', '?')}", end="; ")
print()
EOF
[ "${STAGE_ONLY:-0}" = 1 ] && exit 0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee "$OUT/gpu_info.txt"

if [ "${DRY:-0}" = 1 ]; then
    SIZE=tiny; ARGS=(--cpu-smoke); export CUDA_VISIBLE_DEVICES=
else
    SIZE=full; ARGS=()
fi
W=${WEIGHTS:-/tmp/weights_$SIZE}
if [ ! -f "$W/s3diff.pkl" ]; then
    if [ ! -f bench/random_weights.py ]; then
        if [ "${DRY:-0}" = 1 ]; then
            W=tests/data/golden/weights
            echo "bench/random_weights.py is not in this tree: dry run uses $W"
        else
            echo "error: bench/random_weights.py is missing (issue 13, item 5); it writes the" \
                 "full-size random weights this run needs. Merge it first, or set WEIGHTS=DIR."
            exit 2
        fi
    else
        t=$(date +%s)
        timeout 180 "$PY" bench/random_weights.py "$W" --size "$SIZE" || exit 2
        echo "random weights ($SIZE) in $W: $(( $(date +%s) - t )) s"
    fi
fi
timeout -k 10 "${TOTAL_TIMEOUT:-400}" "$PY" bench/gpu_pipeline.py --weights "$W" --out "$OUT" \
    "${ARGS[@]}" "$@"
rc=$?
rm -rf "$OUT"/*.job.zarr "$OUT"/image* "$OUT"/clip*  # 8 files of 16 MiB come back at most
ls -la "$OUT"
exit $rc
