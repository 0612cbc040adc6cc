"""Rebuild the AU models that ship with drkit: ``pretrained:au`` (image + DRs, MDR) and its
still-image twin ``pretrained:au-si``, trained on the real faces of ../shared/data/faces with
OpenFace 2.2's AU intensities as labels, and scored on people none of their networks saw.

    python examples/pretrained/build_au.py WORK [--seeds 0,1,2] [--install]
    python examples/pretrained/build_au.py --report     # the held-out table of README

What they are: a student of an instrument. The labels are OpenFace 2.2's 17 intensity AUs
(AU01 ... AU45, 0-5) estimated on every frame, not human FACS coding; the held-out figures are
agreement with OpenFace on people the models never saw (ICC(3,1) per AU), not accuracy against
coders. OpenFace is licensed for academic, non-commercial use, so the weights are marked for
non-commercial research use.

Steps (each skipped when its output is there, so a rerun resumes):
1. ``split``: one person per line of manifest.csv; per source repository with >= 3 people a
   quarter of them (at least one, seeded shuffle, seed 0) are test people, as in the in-source
   split of examples/generalisation/protocol.py; the person of the demo clip shipped in
   drkit/data (``paddlegan_fomdv``) is moved to test, so the demo never shows a training face;
   of the training people, two per source with >= 4 labelled people are validation people.
2. ``drkit preprocess`` per person (112 px, dlib, tracked) -> WORK/persons/<person>.zarr.
3. labels: ../shared/tools/openface/openface_labels.py per store -> WORK/labels.csv.
4. ``drkit train-dr`` on the training + validation people: one multi-scale DR network, heads
   T5S2, T3S2, T9S4, 64 px, width 8, 3 epochs (one forward pass gives the whole MDR).
5. ``drkit gen-dr`` per person at 64 px (image + 9 DR channels, mirrored too).
6. ``drkit train-task --task au`` with ``--input mdr`` and ``--input si`` (small CNN, width 16,
   early stopping on the validation people) per seed; ``drkit eval-task`` on the test people.
7. ``--install``: seed 0's bundles become drkit/pretrained/au.pt and au-si.pt, and MANIFEST.json
   gets their entries: SHA-256, command, licence, and the held-out ICC per AU as mean and
   spread over the seeds.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO / "examples" / "generalisation"))
import protocol  # noqa: E402  (the in-source split and validation people, one definition)
AUS = "AU01 AU02 AU04 AU05 AU06 AU07 AU09 AU10 AU12 AU14 AU15 AU17 AU20 AU23 AU25 AU26 AU45".split()
AUS5 = ["AU06", "AU10", "AU12", "AU14", "AU17"]
DEMO_PERSON = "paddlegan_fomdv"
DR_ARGS = "--heads T5S2,T3S2,T9S4 --net-size 64 --base 8 --epochs 3 --seed 0"
TASK_ARGS = "--task au --arch small --epochs 40 --patience 6 --val-frames 1500"
LICENCE = "non-commercial research use (OpenFace 2.2 licence)"


def sh(cmd: str) -> None:
    print("+", cmd, flush=True)
    subprocess.run(cmd, shell=True, check=True)


def people(faces: Path) -> dict[str, dict]:
    out: dict[str, dict] = defaultdict(lambda: {"repo": None, "clips": []})
    for r in csv.DictReader(open(faces / "manifest.csv")):
        out[r["person"]]["repo"] = r["repo"]
        out[r["person"]]["clips"].append(str(faces / re.sub(r"/? \(.*\)$", "", r["path"])))
    return dict(out)


def split(faces: Path, labelled: set[str], seed: int = 0) -> dict[str, list[str]]:
    """The in-source split of examples/generalisation/protocol.py (its test people), the demo
    clip's person moved to test, and its validation people among the labelled training people."""
    folds = protocol.make_folds(faces, seed=seed)
    test = list(folds["insource"]["test"])
    if DEMO_PERSON in folds["repo_of"] and DEMO_PERSON not in test:
        test.append(DEMO_PERSON)
    train = [p for p in sorted(folds["repo_of"]) if p not in test and p in labelled]
    val = protocol.val_people(train, folds["repo_of"], seed=seed)
    return {"dr_train": sorted(p for p in folds["repo_of"] if p not in test),
            "train": sorted(p for p in train if p not in val), "val": val,
            "test": sorted(p for p in test if p in labelled)}


def held_out(runs: list[Path]) -> dict:
    import numpy as np
    rs = [json.loads(r.read_text()) for r in runs]
    icc5 = [float(np.mean([r[f"icc/{a}"] for a in AUS5])) for r in rs]
    per = {a: round(float(np.mean([r[f"icc/{a}"] for r in rs])), 3) for a in AUS}
    per_sd = {a: round(float(np.std([r[f"icc/{a}"] for r in rs])), 3) for a in AUS}
    return {"icc5": round(float(np.mean(icc5)), 3), "icc5_sd": round(float(np.std(icc5)), 3),
            "icc": round(float(np.mean([r["icc"] for r in rs])), 3),
            "icc_sd": round(float(np.std([r["icc"] for r in rs])), 3),
            "mse": round(float(np.mean([r["mse"] for r in rs])), 3),
            "per_target": per, "per_target_sd": per_sd, "seeds": len(rs), "frames": rs[0].get("frames")}


def install(work: Path, seeds: list[int], sp: dict) -> None:
    from drkit.fsutil import sha256_file, write_json_atomic
    dest = REPO / "drkit" / "pretrained"
    man = json.loads((dest / "MANIFEST.json").read_text())
    for name, inp in (("au", "mdr"), ("au-si", "si")):
        src = work / "au" / f"{inp}_s{seeds[0]}" / "best.pt"
        shutil.copyfile(src, dest / f"{name}.pt")
        h = held_out([work / "au" / f"{inp}_s{s}.test.json" for s in seeds])
        h.update(people=len(sp["test"]), command="drkit eval-task RUN mdr/<test person>.zarr... --labels labels.csv")
        man["models"][name] = {
            "file": f"{name}.pt", "sha256": sha256_file(dest / f"{name}.pt"), "kind": "task",
            "input": inp, "targets": AUS, "licence": LICENCE, "held_out": h,
            "command": (f"drkit train-task mdr/<train person>.zarr... --val mdr/<val person>.zarr... "
                        f"--labels labels.csv {TASK_ARGS} --input {inp} --seed {seeds[0]}"),
            "description": (
                ("Image + multi-scale DRs (T5S2, T3S2, T9S4 heads of one 64-px width-8 network, "
                 f"`drkit train-dr {DR_ARGS}`)" if inp == "mdr" else "The still image alone")
                + f" -> 17 AU intensities (0-5, clipped), a small CNN at 64 px. Distilled from "
                  f"OpenFace 2.2's estimates on {len(sp['train'])} people of ../shared/data/faces "
                  f"(validation {len(sp['val'])}), not from human FACS coding; held-out figures are "
                  f"agreement with OpenFace on {len(sp['test'])} people no network of it saw. "
                  f"Rebuild: python examples/pretrained/build_au.py WORK --install"),
        }
    write_json_atomic(dest / "MANIFEST.json", man)
    print(json.dumps({k: man["models"][k]["held_out"] for k in ("au", "au-si")}, indent=1))


def report() -> str:
    """The shipped AU models' held-out agreement with OpenFace as a markdown table (README)."""
    man = json.loads((REPO / "drkit" / "pretrained" / "MANIFEST.json").read_text())["models"]
    a, s = man["au"]["held_out"], man["au-si"]["held_out"]
    f = lambda h, k: f"{h['per_target'][k]:.2f} ± {h['per_target_sd'][k]:.2f}"  # noqa: E731
    rows = ["| AU | pretrained:au (MDR) | pretrained:au-si (SI) |", "|---|---|---|"]
    rows += [f"| {k} | {f(a, k)} | {f(s, k)} |" for k in AUS]
    rows += [f"| **mean of AU06/10/12/14/17** | **{a['icc5']:.3f} ± {a['icc5_sd']:.3f}** | "
             f"**{s['icc5']:.3f} ± {s['icc5_sd']:.3f}** |",
             f"| mean of all 17 | {a['icc']:.3f} ± {a['icc_sd']:.3f} | {s['icc']:.3f} ± {s['icc_sd']:.3f} |",
             f"| MSE (all 17) | {a['mse']:.3f} | {s['mse']:.3f} |"]
    return "\n".join(rows) + f"\n\nICC(3,1) with OpenFace 2.2, {a['people']} held-out people, {a['frames']} frames, " \
        f"mean ± sd over {a['seeds']} seeds.\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("work", type=Path, nargs="?")
    ap.add_argument("--faces", type=Path, default=SHARED / "data" / "faces")
    ap.add_argument("--openface", type=Path, default=SHARED / "tools" / "openface" / "openface_labels.py")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--install", action="store_true")
    ap.add_argument("--report", action="store_true", help="print the shipped models' held-out table and stop")
    a = ap.parse_args()
    if a.report:
        print(report())
        return
    if a.work is None:
        ap.error("WORK is needed (unless --report)")
    w, seeds = a.work, [int(s) for s in a.seeds.split(",")]
    for d in ("persons", "labels", "mdr", "au"):
        (w / d).mkdir(parents=True, exist_ok=True)
    P = people(a.faces)
    for p, v in sorted(P.items()):                                          # 2
        if not (w / "persons" / f"{p}.done").exists():
            sh(f"drkit -q preprocess {' '.join(map(repr, v['clips']))} -o {w}/persons/{p}.zarr --crop-size 112")
            (w / "persons" / f"{p}.done").touch()
    if not (w / "labels.csv").exists():                                      # 3
        rows = []
        for p in sorted(P):
            out = w / "labels" / f"{p}.csv"
            if not out.exists():
                subprocess.run([sys.executable, str(a.openface), str(w / "persons" / f"{p}.zarr"), str(out), *AUS])
            if out.exists():
                rows += out.read_text().splitlines()[0 if not rows else 1:]
        (w / "labels.csv").write_text("\n".join(rows) + "\n")
    labelled = {r["person"] for r in csv.DictReader(open(w / "labels.csv"))}
    sp = split(a.faces, labelled)                                            # 1
    (w / "split.json").write_text(json.dumps(sp, indent=1))
    stores = lambda ps, d="mdr": " ".join(f"{w}/{d}/{p}.zarr" for p in ps)  # noqa: E731
    if not (w / "dr" / "best.pt").exists():                                  # 4
        sh(f"drkit -q train-dr {stores(sp['dr_train'], 'persons')} -o {w}/dr {DR_ARGS} --overwrite")
    for p in sorted(P):                                                      # 5
        if not (w / "mdr" / f"{p}.done").exists():
            sh(f"drkit -q gen-dr {w}/persons/{p}.zarr -o {w}/mdr/{p}.zarr --dr {w}/dr --map-size 64")
            (w / "mdr" / f"{p}.done").touch()
    for s in seeds:                                                          # 6
        for inp in ("mdr", "si"):
            run, res = w / "au" / f"{inp}_s{s}", w / "au" / f"{inp}_s{s}.test.json"
            if not res.exists():
                sh(f"drkit -q train-task {stores(sp['train'])} --val {stores(sp['val'])} --labels {w}/labels.csv "
                   f"{TASK_ARGS} --input {inp} --seed {s} -o {run} --overwrite")
                sh(f"drkit -q eval-task {run} {stores(sp['test'])} --labels {w}/labels.csv --json {res}")
    if a.install:                                                            # 7
        install(w, seeds, sp)


if __name__ == "__main__":
    main()
