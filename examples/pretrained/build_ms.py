"""Ship the multi-scale DR network ``pretrained:ms-slim``: one UNet (64 px, width 8) with heads
T5S2, T3S2, T9S4, so one forward pass gives the whole MDR, trained on every person of
../shared/data/faces. Its held-out accuracy is the leave-one-source-out protocol's
(examples/generalisation/protocol.py): the same recipe trained with one source repository left
out, ranked on that source's people, mean and spread over the folds (seeds averaged per fold).

    drkit train-dr PERSONS/*.zarr -o RUN --heads T5S2,T3S2,T9S4 --net-size 64 --base 8 --epochs 3 --seed 0
    python examples/pretrained/build_ms.py RUN --faces ../shared/data/faces \\
        --loso examples/generalisation/loso_ranking_seed0.jsonl [WORK/results.jsonl ...] -o drkit/pretrained

PERSONS: one 112-px store per person (`drkit preprocess --crop-size 112`, as protocol.py and
build_au.py make them). ``--loso``: protocol.py results files (later files win for the same fold,
seed and measure); loso_ranking_seed0.jsonl holds the 7-fold seed-0 table of
examples/generalisation/RESULTS.md. The manifest's other models are kept.
"""

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from shipping import licences, ship_checkpoint


def held_out(files: list[Path], heads: list[tuple[int, int]]) -> dict:
    recs = {}
    for f in files:
        for r in map(json.loads, f.read_text().splitlines()):
            recs[(r["fold"], r["seed"], r["what"])] = r
    out = {}
    for T, S in heads:
        key = f"T{T}S{S}"
        dr = defaultdict(list)
        for (fold, seed, what), r in recs.items():
            if what == f"rank_{key}" and fold != "insource":
                dr[fold].append(r["dr"])
        base = {f: recs[(f, -1, f"baselines_{key}")] for f in dr if (f, -1, f"baselines_{key}") in recs}
        folds = sorted(base)
        d = np.array([100 * np.mean(dr[f]) for f in folds])
        out[key] = {"dr": round(float(d.mean()), 2), "dr_sd_folds": round(float(d.std()), 2),
                    "identity": round(100 * float(np.mean([base[f]["identity"] for f in folds])), 2),
                    "ranksvm": round(100 * float(np.mean([base[f]["ranksvm"] for f in folds])), 2),
                    "folds": len(folds), "seeds_per_fold": {f: len(dr[f]) for f in folds},
                    "protocol": "leave-one-source-out (examples/generalisation/protocol.py)"}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--faces", type=Path, required=True)
    ap.add_argument("--loso", type=Path, nargs="+", required=True)
    ap.add_argument("--name", default="ms-slim")
    ap.add_argument("-o", "--out", type=Path, required=True)
    a = ap.parse_args()
    stores = torch.load(a.run / "best.pt", map_location="cpu", weights_only=True)["config"]["train"]["train_stores"]
    people = sorted(Path(s).name.removesuffix(".zarr") for s in stores)
    rows = [r for r in csv.DictReader(open(a.faces / "manifest.csv")) if r["person"] in people]
    dest = a.out / f"{a.name}.pt"
    ck, sha = ship_checkpoint(a.run / "best.pt", dest, f"<{len(people)} people of ../shared/data/faces, see MANIFEST.json>")
    c = ck["config"]
    heads = [tuple(h) for h in c["heads"]]
    base = ck["model"]["kwargs"]["base"]
    heads_arg = ",".join(f"T{T}S{S}" for T, S in heads)
    entry = {
        "file": dest.name, "sha256": sha,
        "T": heads[0][0], "stride": heads[0][1], "heads": [list(h) for h in heads],
        "net_size": c["net_size"], "model": ck["model"], "train_steps": ck["train_state"].get("global_step"),
        "trained_on": (f"{len(rows)} clips of {len(people)} people: every person of ../shared/data/faces, "
                       "preprocessed with `drkit preprocess --crop-size 112` (dlib, one store per person); "
                       "licences " + licences(rows)),
        "command": (f"drkit train-dr PERSONS/*.zarr -o {a.name} --heads {heads_arg} --net-size {c['net_size']} "
                    f"--base {base} --epochs {c['train'].get('epochs', 3)} --seed {c['train'].get('seed', 0)}"),
        "held_out": held_out(a.loso, heads),
        "description": ("one network, one 3-channel DR per head (one forward pass gives the whole MDR); "
                        "held-out accuracy: the same recipe with each source repository left out in turn, "
                        "ranked on that source's people (no person or camera of it seen), mean over folds"),
    }
    mp = a.out / "MANIFEST.json"
    man = json.loads(mp.read_text())
    man["models"][a.name] = entry
    mp.write_text(json.dumps(man, indent=1) + "\n")
    print(json.dumps(entry["held_out"], indent=1))


if __name__ == "__main__":
    main()
