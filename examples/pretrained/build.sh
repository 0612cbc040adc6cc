#!/usr/bin/env bash
# Rebuild the DR models that ship with drkit (drkit/pretrained/: T3, T5, T9 and MANIFEST.json).
# Trained on the real faces of ../shared/data/faces of the 26 training people of
# examples/real_faces/person_split.py (seed 0), so that their ranking accuracy is measured on the
# 15 people none of them saw; scored with rank-eval beside the identity and RankSVM baselines.
# Usage: bash examples/pretrained/build.sh [WORK_DIR] [EPOCHS]   (~25 min on 2 CPU cores)
#        BASE=8 bash examples/pretrained/build.sh [WORK_DIR] [EPOCHS]
# BASE (UNet width, default 16) other than 16 builds the slim variants T3-slim, T5-slim, T9-slim
# (BASE=8: a third of the compute, same held-out accuracy); the manifest keeps the other models.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
FACES=$(cd "$REPO/.." && pwd)/shared/data/faces
W=${1:-pretrained_run}
EPOCHS=${2:-3}
BASE=${BASE:-16}
SUFFIX=$([ "$BASE" = 16 ] && echo "" || echo "-slim")
mkdir -p "$W"
if [ ! -d "$W/train112.zarr" ]; then
  python "$REPO/examples/real_faces/person_split.py" "$FACES" -o "$W"
  drkit -q preprocess $(cat "$W/train.txt") -o "$W/train112.zarr" --crop-size 112 --workers 2
  drkit -q preprocess $(cat "$W/test.txt") -o "$W/test112.zarr" --crop-size 112 --workers 2
fi
for ts in "3 2" "5 2" "9 4"; do
  set -- $ts
  drkit train-dr "$W/train112.zarr" -o "$W/T$1$SUFFIX" --T "$1" --stride "$2" --net-size 64 --base "$BASE" \
      --epochs "$EPOCHS" --seed 0 --overwrite
  drkit rank-eval "$W/T$1$SUFFIX" "$W/test112.zarr" --T "$1" --stride "$2" --baselines identity,ranksvm \
      --json "$W/T$1$SUFFIX.json"
done
python "$HERE/make_manifest.py" "$W" "$FACES" --epochs "$EPOCHS" --base "$BASE" -o "$REPO/drkit/pretrained"
drkit models
