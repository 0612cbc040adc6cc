#!/usr/bin/env bash
# HG-HMR against the small CNN and VGG-16 for AU intensity, same time budget each, scored on
# people none of them saw: (a) drkit synth faces with exact AU labels, (b) the real faces of
# ../shared/data/faces with OpenFace 2.2's AU intensities as labels (an instrument, not FACS
# coders). Input: the still image (SI) at 64 px.
# Usage: bash examples/hg_hmr/run.sh [WORK_DIR] [BUDGET_S] [FIG4_WORK_DIR]   (~20 min on 2 CPU cores)
# FIG4_WORK_DIR: where examples/fig4/run.sh preprocessed the real faces (reused; else made here).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SHARED=$(cd "$HERE/../../.." && pwd)/shared
W=${1:-hg_hmr_run}
BUDGET=${2:-120}
REAL=${3:-$W}
mkdir -p "$W"
AUS=AU06,AU10,AU12,AU14,AU17

# (a) synthetic: 6 identities, 2 held out
drkit -q synth -o "$W/synth" --n 12 --seconds 8 --identities 6 --seed 0
python - "$W" <<'PY'
import csv, sys
from pathlib import Path
w = Path(sys.argv[1])
rows = list(csv.DictReader(open(w / "synth/labels.csv")))
people = sorted({r["person"] for r in rows})
test = set(people[-2:])
for name, keep in (("train", lambda p: p not in test), ("test", lambda p: p in test)):
    vids = sorted({r["video"] for r in rows if keep(r["person"])})
    (w / f"synth_{name}.txt").write_text("\n".join(str(w / "synth/videos" / v) for v in vids) + "\n")
PY
for s in train test; do
  drkit -q preprocess $(cat "$W/synth_$s.txt") -o "$W/synth_$s.zarr" --frame-size 112
  drkit -q gen-dr "$W/synth_$s.zarr" -o "$W/synth_${s}_si.zarr" --frame-size 64
done

# (b) real faces with OpenFace labels (same person split as examples/fig4)
if [ ! -d "$REAL/train112.zarr" ]; then
  python "$HERE/../real_faces/person_split.py" "$SHARED/data/faces" -o "$REAL"
  for s in train test; do drkit -q preprocess $(cat "$REAL/$s.txt") -o "$REAL/${s}112.zarr" --crop-size 112 --workers 2; done
fi
for s in train test; do
  python "$SHARED/tools/openface/openface_labels.py" "$REAL/${s}112.zarr" "$W/openface_$s.csv"
  drkit -q gen-dr "$REAL/${s}112.zarr" -o "$W/real_${s}_si.zarr" --map-size 64
done
cat "$W/openface_train.csv" > "$W/openface.csv"; tail -n +2 "$W/openface_test.csv" >> "$W/openface.csv"

for data in synth real; do
  labels=$([ $data = synth ] && echo "$W/synth/labels.csv" || echo "$W/openface.csv")
  for arch in small vgg16 hg_hmr; do
    drkit train-task "$W/${data}_train_si.zarr" --labels "$labels" --task au --input si --arch "$arch" \
      --targets "$AUS" --val-share 0.25 -o "$W/${data}_$arch" --time-budget "$BUDGET" --epochs 1000 --overwrite
    drkit eval-task "$W/${data}_$arch" "$W/${data}_test_si.zarr" --labels "$labels" --json "$W/${data}_$arch.json"
  done
done
python - "$W" <<'PY'
import json, sys
from pathlib import Path
w = Path(sys.argv[1])
aus = ["AU06", "AU10", "AU12", "AU14", "AU17"]
print("| data | arch | frames | ICC | MSE | " + " | ".join(f"ICC {a}" for a in aus) + " |")
print("|---|---|---|---|---|" + "---|" * len(aus))
for data in ("synth", "real"):
    for arch in ("small", "vgg16", "hg_hmr"):
        r = json.loads((w / f"{data}_{arch}.json").read_text())
        print(f"| {data} | {arch} | {r['frames']} | {r['icc']:.3f} | {r['mse']:.3f} | "
              + " | ".join(f"{r['icc/' + a]:.2f}" for a in aus) + " |")
PY
