#!/usr/bin/env bash
# DR ranking on real faces, person-disjoint: the commands behind examples/real_faces/RESULTS.md.
# Usage: bash examples/real_faces/run.sh [FACES_DIR] [WORK_DIR]     (~25 minutes on 2 CPU cores)
set -euo pipefail
FACES=${1:-$(cd "$(dirname "$0")/../../.." && pwd)/shared/data/faces}
W=${2:-real_faces_run}
mkdir -p "$W"
python "$(dirname "$0")/person_split.py" "$FACES" -o "$W"                      # 26 people train / 15 test
drkit preprocess $(cat "$W/train.txt") -o "$W/train112.zarr" --crop-size 112 --workers 2
drkit preprocess $(cat "$W/test.txt") -o "$W/test112.zarr" --crop-size 112 --workers 2
for ts in "5 2" "9 4"; do
  set -- $ts
  drkit train-dr "$W/train112.zarr" -o "$W/dr_T$1S$2" --T "$1" --stride "$2" --net-size 64 --time-budget 540 --epochs 100
  drkit rank-eval "$W/dr_T$1S$2" "$W/test112.zarr" --baselines identity,ranksvm,di --json "$W/rank_T$1S$2.json"
done
drkit rank-eval "$W/dr_T5S2" "$W/test112.zarr" --T 3,5,7,9 --stride 1,2,3,4 --baselines identity \
  --every 2 --json "$W/grid_T5S2.json" --plot "$W/grid_T5S2.png"
