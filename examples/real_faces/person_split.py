"""Split ../shared/data/faces by person (never by frame or clip): writes train.txt and test.txt,
one media path per line, for `drkit preprocess $(cat train.txt) -o train.zarr`.

    python examples/real_faces/person_split.py [FACES_DIR] [--test-share 0.3] [--seed 0] [-o DIR]

People are shuffled with the seed and assigned to test until the test share of clips is
reached; every clip of a person lands on the same side.
"""

import argparse
import csv
import random
import re
from collections import defaultdict
from pathlib import Path

ap = argparse.ArgumentParser()
ap.add_argument("faces", nargs="?", default=str(Path(__file__).resolve().parents[3] / "shared/data/faces"))
ap.add_argument("--test-share", type=float, default=0.3)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("-o", "--out", default=".")
a = ap.parse_args()

root = Path(a.faces)
clips = defaultdict(list)
with open(root / "manifest.csv") as f:
    for row in csv.DictReader(f):
        path = root / re.sub(r"/? \(.*\)$", "", row["path"])   # "dir/ (363 jpg frames)" -> dir
        if path.exists():
            clips[row["person"]].append(path)
people = sorted(clips)
random.Random(a.seed).shuffle(people)
n_total = sum(len(v) for v in clips.values())
test, n_test = [], 0
for p in people:
    if n_test >= a.test_share * n_total:
        break
    test.append(p)
    n_test += len(clips[p])
out = Path(a.out)
out.mkdir(parents=True, exist_ok=True)
for name, ps in (("train", [p for p in people if p not in test]), ("test", test)):
    paths = sorted(str(c) for p in ps for c in clips[p])
    (out / f"{name}.txt").write_text("\n".join(paths) + "\n")
    print(f"{name}: {len(ps)} people, {len(paths)} clips -> {out / (name + '.txt')}")
