"""Copy the trained DR models of examples/pretrained/build.sh into drkit/pretrained/ and write
MANIFEST.json: file, SHA-256, window, net size, the people and licences trained on, the command,
and the held-out ranking accuracy beside the baselines (from each rank-eval JSON).

    python examples/pretrained/make_manifest.py WORK_DIR FACES_DIR --epochs N [--base 16] -o drkit/pretrained

``--base`` other than 16: the slim models ``T3-slim``, ``T5-slim``, ``T9-slim`` (UNet width BASE),
from WORK_DIR/T<T>-slim. The manifest's other models are kept.
"""

import argparse
import csv
import json
import re
from pathlib import Path

from shipping import licences, ship_checkpoint

ap = argparse.ArgumentParser()
ap.add_argument("work")
ap.add_argument("faces")
ap.add_argument("--epochs", type=int, required=True)
ap.add_argument("--base", type=int, default=16)
ap.add_argument("-o", "--out", required=True)
a = ap.parse_args()
work, out = Path(a.work), Path(a.out)

rows = list(csv.DictReader(open(Path(a.faces) / "manifest.csv")))
train_paths = {Path(p).resolve() for p in (work / "train.txt").read_text().split()}
test_paths = {Path(p).resolve() for p in (work / "test.txt").read_text().split()}


def clip(r):
    return (Path(a.faces) / re.sub(r"/? \(.*\)$", "", r["path"])).resolve()


train_rows = [r for r in rows if clip(r) in train_paths]
test_people = sorted({r["person"] for r in rows if clip(r) in test_paths})
suffix = "" if a.base == 16 else "-slim"
old = out / "MANIFEST.json"
models = json.loads(old.read_text())["models"] if old.is_file() else {}
for T, S in ((3, 2), (5, 2), (9, 4)):
    name = f"T{T}{suffix}"
    dest = out / f"{name}.pt"
    ck, sha = ship_checkpoint(work / name / "best.pt", dest, "<26 training people of ../shared/data/faces, see MANIFEST.json>")
    assert ck["model"]["kwargs"]["base"] == a.base, f"{work / name}: UNet width {ck['model']['kwargs']['base']}, not {a.base}"
    res = json.loads((work / f"{name}.json").read_text())
    acc = {r["method"]: round(100 * r["accuracy"], 2) for r in res if r["T"] == T and r["stride"] == S}
    models[name] = {
        "file": dest.name, "sha256": sha,
        "T": T, "stride": S, "net_size": ck["config"]["net_size"], "model": ck["model"],
        "train_steps": ck["train_state"].get("global_step"),
        "command": (f"drkit train-dr train112.zarr -o {name} --T {T} --stride {S} --net-size 64"
                    + (f" --base {a.base}" if a.base != 16 else "") + f" --epochs {a.epochs} --seed 0"),
        "held_out": {**acc, "people": len(test_people), "windows": next((r["windows"] for r in res), None),
                     "command": f"drkit rank-eval {name} test112.zarr --T {T} --stride {S} --baselines identity,ranksvm"},
    }
manifest = {
    "format": "drkit-pretrained", "format_version": 1,
    "trained_on": (f"{len(train_rows)} clips of {len({r['person'] for r in train_rows})} people of "
                   "../shared/data/faces (person split of examples/real_faces/person_split.py, seed 0), "
                   "preprocessed with `drkit preprocess --crop-size 112` (dlib); licences "
                   + licences(train_rows)),
    "train_clips": sorted(r["path"] for r in train_rows),
    "held_out_people": test_people,
    "build": "bash examples/pretrained/build.sh WORK_DIR (slim models: BASE=8 bash examples/pretrained/build.sh WORK_DIR)",
    "models": models,
}
(out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
print(json.dumps({f"T{T}{suffix}": models[f"T{T}{suffix}"]["held_out"] for T in (3, 5, 9)}, indent=1))
