#!/usr/bin/env bash
# The downstream protocol in one command (issue 10): do DR channels help AU-intensity networks
# when few people are labelled? DRs: the shipped pretrained:T5 (trained on unlabelled video of
# the 26 training people of ../shared/data/faces). Task networks: small CNN on SI (image) or MDR
# (image + DR T=5), trained on k labelled people (k = 1, 2, 4, 8, all), best epoch on 5 fixed
# validation people, scored on people neither the DR nor the task network saw; 3 seeds each.
#   (a) real faces, OpenFace 2.2 AU intensities as labels (AU06, AU10, AU12, AU14, AU17);
#   (b) synthetic faces made from real people's frames (drkit synth --faces, --morphology 1.5):
#       each identity is one real person, training identities from the training people,
#       test identities from the held-out people.
# Usage: bash examples/downstream/run.sh [WORK_DIR] [REAL_WORK_DIR]   (~80 min on 2 CPU cores)
# REAL_WORK_DIR: where examples/fig4 or examples/pretrained preprocessed the real faces (reused).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SHARED=$(cd "$HERE/../../.." && pwd)/shared
W=${1:-downstream_run}
REAL=${2:-$W}
AUS=AU06,AU10,AU12,AU14,AU17
PROTO=(--task au --targets "$AUS" --inputs si,mdr --ks 1,2,4,8,all --seeds 0,1,2 --val-people 5 --max-steps 12000 --patience 5 --patience-steps 300 --val-frames 300)
mkdir -p "$W"

# (a) real faces, OpenFace labels
if [ ! -d "$REAL/train112.zarr" ]; then
  python "$HERE/../real_faces/person_split.py" "$SHARED/data/faces" -o "$REAL"
  for s in train test; do drkit -q preprocess $(cat "$REAL/$s.txt") -o "$REAL/${s}112.zarr" --crop-size 112 --workers 2; done
fi
for s in train test; do
  python "$SHARED/tools/openface/openface_labels.py" "$REAL/${s}112.zarr" "$W/openface_$s.csv"
  drkit -q gen-dr "$REAL/${s}112.zarr" -o "$W/real_$s.zarr" --dr pretrained:T5
done
cat "$W/openface_train.csv" > "$W/openface.csv"; tail -n +2 "$W/openface_test.csv" >> "$W/openface.csv"
python "$HERE/protocol.py" run --train "$W/real_train.zarr" --test "$W/real_test.zarr" --labels "$W/openface.csv" \
  "${PROTO[@]}" -o "$W/real_openface"

# (b) synthetic faces of real people: one clip (its first file) per person and split
python - "$REAL" "$W" "$SHARED/data/faces" <<'PY'
import csv, re, sys
from pathlib import Path
real, w, faces = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
person = {(faces / re.sub(r"/? \(.*\)$", "", r["path"])).resolve(): r["person"]
          for r in csv.DictReader(open(faces / "manifest.csv"))}
for s in ("train", "test"):
    seen, keep = set(), []
    for p in (real / f"{s}.txt").read_text().split():   # video files only, one per person
        who = person.get(Path(p).resolve())
        if Path(p).is_file() and who not in seen:
            seen.add(who)
            keep.append(p)
    (w / f"synth_faces_{s}.txt").write_text("\n".join(keep) + "\n")
PY
for s in train test; do
  args=(); for f in $(cat "$W/synth_faces_$s.txt"); do args+=(--faces "$f"); done
  n=$(( $(wc -l < "$W/synth_faces_$s.txt") * 2 ))
  seed=$([ $s = train ] && echo 0 || echo 1)
  drkit -q synth -o "$W/synth_$s" "${args[@]}" --n "$n" --seconds 6 --morphology 1.5 --seed "$seed"
  # video ids must differ between the two synth folders: synth_000.avi -> train_000.avi / test_000.avi
  python - "$W/synth_$s" "$s" <<'PY'
import csv, sys
from pathlib import Path
d, s = Path(sys.argv[1]), sys.argv[2]
for f in sorted((d / "videos").glob("synth_*.avi")):
    f.rename(f.with_name(f.name.replace("synth_", s + "_")))
rows = list(csv.reader(open(d / "labels.csv")))
for r in rows[1:]:
    r[0] = r[0].replace("synth_", s + "_")
csv.writer(open(d / "labels.csv", "w", newline="")).writerows(rows)
PY
  drkit -q preprocess "$W/synth_$s/videos" -o "$W/synth_$s.zarr" --frame-size 112 --workers 2
  drkit -q gen-dr "$W/synth_$s.zarr" -o "$W/synth_${s}_mdr.zarr" --dr pretrained:T5
done
cat "$W/synth_train/labels.csv" > "$W/synth_labels.csv"; tail -n +2 "$W/synth_test/labels.csv" >> "$W/synth_labels.csv"
python "$HERE/protocol.py" run --train "$W/synth_train_mdr.zarr" --test "$W/synth_test_mdr.zarr" \
  --labels "$W/synth_labels.csv" "${PROTO[@]}" --ks 4,all -o "$W/synth_realistic"

python "$HERE/protocol.py" report "$W/real_openface" "$W/synth_realistic"
