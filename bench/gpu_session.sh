#!/usr/bin/env bash
# One prepared GPU session: the CUDA-marked tests, then bench/gpu_model.py.
#   bash bench/gpu_session.sh [bench/gpu_model.py options]   (RUN_TESTS=0 skips the tests)
# Logs go to $OUT (the device tool's result folder) or bench/_data/.
# Packages the GPU image lacks travel as wheels in .whl/ (see docs/PERFORMANCE.md).
set -u
OUT=${OUT:-bench/_data}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
    # Prefer the image's own peft if the carried one does not import there.
    python3 -c "import peft" 2>/dev/null || rm -rf /tmp/site/peft /tmp/site/peft-*
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    python3 -c "import torch, diffusers, peft, transformers as t; print('torch', torch.__version__, '| diffusers', diffusers.__version__, '| peft', peft.__version__, '| transformers', t.__version__)"
} 2>&1 | tee "$OUT/gpu_info.txt"
if [ "${RUN_TESTS:-1}" != 0 ]; then
    timeout "${TEST_TIMEOUT:-150}" python3 -m pytest -q --noconftest -p no:cacheprovider -m gpu \
        tests/test_s3diff_model.py tests/test_s3diff_golden.py 2>&1 | tee "$OUT/gpu_tests.log"
fi
[ $# -gt 0 ] || set -- --compile --compile-batches 8
timeout "${BENCH_TIMEOUT:-330}" python3 bench/gpu_model.py "$@" 2>&1 | tee "$OUT/gpu_bench.log"
