#!/usr/bin/env bash
# The CUDA paths of issue 23 (item 5) in one call on a lent GPU machine, ~5 minutes there:
#   1. here, once (no GPU needed; fetches wheels from the package index):
#        bash benchmarks/gpu_check.sh --prepare
#      -> .gpu/ (git-ignored through .git/info/exclude): wheels of what the device image lacks
#         (zarr and its needs; torch, numpy, opencv, typer, onnxruntime... are there).
#   2. the device tool: run(command="bash benchmarks/gpu_check.sh", carry=[".gpu"], timeout_s=560)
#      -> $OUT/gpu_check.json (benchmarks/gpu_check.py: fp32/bf16/fp16 training, resume, nccl
#         DDP, gen-dr and predict against the CPU, crops/s), $OUT/dr_speed.json (the GPU rows of
#         benchmarks/dr_speed.py: training images/s and share of the bf16/fp32 peak),
#         $OUT/tests.log (the precision, distributed and export tests with a GPU present), and
#         $OUT/summary.txt.
# Off a GPU machine step 2 runs everything on the CPU (gpu_check.py --device cpu), which is how
# this script itself is tested.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare" ]; then
  mkdir -p .gpu/whl
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .gpu/whl "zarr>=3,<4" "numcodecs<0.17" "donfig" "google-crc32c" "typing-extensions>=4.12"
  ls -la .gpu/whl
  exit 0
fi
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
if ls .gpu/whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl \
    || { echo "wheel install failed" | tee "$OUT/summary.txt"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
DEV=$(python3 -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
GPUS=$(python3 -c 'import torch; print(torch.cuda.device_count())')
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  python3 -c 'import torch, zarr; print("torch", torch.__version__, "zarr", zarr.__version__)'; } | tee "$OUT/summary.txt"
step() {   # step NAME SECONDS CMD...: its output to $OUT/NAME.log, its status to summary.txt
  local name=$1 secs=$2; shift 2
  local t0=$SECONDS
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1
  echo "$name: exit $? in $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
}
step gpu_check 200 python3 benchmarks/gpu_check.py --device "$DEV" --ddp "1,$(( GPUS > 1 ? 2 : 1 ))" --json "$OUT/gpu_check.json"
step dr_speed 150 python3 benchmarks/dr_speed.py --quick --devices "$DEV" --json "$OUT/dr_speed.json"
step tests 150 python3 -m pytest -q -p no:cacheprovider tests/test_precision.py tests/test_distributed.py tests/test_export.py
tail -n 3 "$OUT/tests.log" >> "$OUT/summary.txt"
grep -E '"check"' "$OUT/gpu_check.log" | cut -c1-220
cat "$OUT/summary.txt"
