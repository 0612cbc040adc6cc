#!/usr/bin/env bash
# The main job on a fresh machine, with data the install itself provides: make a face video,
# preprocess it into a face store, summarise the store and draw one frame with its landmarks.
set -euo pipefail
OUT=${1:-quickstart}
python examples/make_test_video.py "$OUT/videos/astronaut.avi"
drkit preprocess "$OUT/videos" -o "$OUT/faces.zarr" --size 112
drkit inspect "$OUT/faces.zarr"
drkit inspect "$OUT/faces.zarr" --video astronaut.avi --frame 10 -o "$OUT/frame10.png"
