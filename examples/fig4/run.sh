#!/usr/bin/env bash
# Fig. 4 of the paper on real faces, held-out people: the rank-loss DR against the fixed-target
# DRs (UNet-MSE and Pix2Pix on DI and BDI targets), beside the identity, di and ranksvm
# baselines, at T=5,S=2 and T=9,S=4, with the same CPU time budget for every learned method.
# Usage: bash examples/fig4/run.sh [FACES_DIR] [WORK_DIR] [BUDGET_S]   (~35 min on 2 CPU cores)
# UNet(P) (--objective perceptual) needs ImageNet VGG-16 weights (--perceptual-weights), which
# cannot be downloaded here: it is left out; add it with a weights file where you have one.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
FACES=${1:-$(cd "$HERE/../../.." && pwd)/shared/data/faces}
W=${2:-fig4_run}
BUDGET=${3:-120}
mkdir -p "$W"
python "$HERE/../real_faces/person_split.py" "$FACES" -o "$W"          # 26 people train / 15 test
drkit -q preprocess $(cat "$W/train.txt") -o "$W/train112.zarr" --crop-size 112 --workers 2
drkit -q preprocess $(cat "$W/test.txt") -o "$W/test112.zarr" --crop-size 112 --workers 2
COMMON=(--net-size 64 --time-budget "$BUDGET" --epochs 1000 --seed 0)
for ts in "5 2" "9 4"; do
  set -- $ts
  R="$W/T$1S$2"
  drkit train-dr "$W/train112.zarr" -o "$R/rank" --T "$1" --stride "$2" "${COMMON[@]}" --overwrite
  drkit train-dr "$W/train112.zarr" -o "$R/rank_direct" --T "$1" --stride "$2" "${COMMON[@]}" --param direct --overwrite
  for obj in mse pix2pix; do
    for tgt in di bdi; do
      drkit train-dr "$W/train112.zarr" -o "$R/${obj}_$tgt" --T "$1" --stride "$2" "${COMMON[@]}" \
        --param direct --objective "$obj" --target "$tgt" --overwrite
    done
  done
  drkit rank-eval "$R/rank" "$R/rank_direct" "$R/mse_di" "$R/mse_bdi" "$R/pix2pix_di" "$R/pix2pix_bdi" \
    "$W/test112.zarr" --baselines identity,di,ranksvm --every 2 --json "$W/fig4_T$1S$2.json" \
    --plot "$W/fig4_T$1S$2.png"
done
