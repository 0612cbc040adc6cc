"""What a ``--dr-norm video`` bundle answers for still images, on a LOSO fold's left-out people.

Every labelled test frame is answered alone, its channels taken relative to
  own        the frame itself (what predict did before 0.3.0: the DRs become 0),
  population the training videos' mean MDR (what a 0.3.0 bundle carries: ``population_mean``;
             for older runs computed here from the fold's training stores, every 5th frame),
  video      its video's mean (the answer predict gives for the whole video),
and scored with ICC(3,1) against the labels (AU06/10/12/14/17 and all targets).

    python examples/generalisation/still_probe.py WORK FOLD RUN --labels LABELS.csv [--seed 0]

WORK, FOLD: protocol.py's work folder and fold; RUN: the task run under WORK/FOLD/s<seed>/
(e.g. au_mdr_vnorm), whose DR stores are WORK/FOLD/s<seed>/mdr/<person>.zarr.
"""
import argparse
import json
from pathlib import Path

import numpy as np

from drkit.labels import read_labels
from drkit.metrics import icc31
from drkit.predictor import Predictor
from drkit.store import open_store
from drkit.tasks import labelled_frames, video_mean

FIVE = ("AU06", "AU10", "AU12", "AU14", "AU17")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("fold")
    ap.add_argument("run")
    ap.add_argument("--labels", required=True)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    sd = a.work / a.fold / f"s{a.seed}"
    fold = json.loads((a.work / "folds.json").read_text())["loso"][a.fold]
    p = Predictor.from_bundle(sd / a.run / "best.pt", device="cpu")
    labels = read_labels(a.labels, p.config.targets)
    stores = lambda people: [open_store(sd / "mdr" / f"{x}.zarr") for x in people  # noqa: E731
                             if (sd / "mdr" / f"{x}.zarr").exists()]
    pop = p.still_mean
    if pop is None:
        pop = np.mean([video_mean(st.video(v)["mdr"][::5]) for st in stores(fold["train"]) for v in st.videos],
                      0).astype(np.float32)
    res = {k: ([], []) for k in ("own", "population", "video")}
    for st in stores(fold["test"]):
        s = labelled_frames([st], labels)
        for v in sorted(set(s.videos)):
            idx = [i for i, x in enumerate(s.videos) if x == v]
            arr = st.video(v)["mdr"]
            m = np.stack([np.asarray(arr[int(s.positions[i])], np.float32) for i in idx])
            means = {"population": pop, "video": video_mean(arr)}
            for k, (P, Y) in res.items():
                if k == "own":
                    P.append(np.concatenate([p.values_of(m[i:i + 1], m[i]) for i in range(len(m))]))
                else:
                    P.append(np.concatenate([p.values_of(m[i:i + 64], means[k]) for i in range(0, len(m), 64)]))
                Y.append(s.y[idx])
    five = [p.targets.index(x) for x in FIVE if x in p.targets]
    for k, (P, Y) in res.items():
        icc = icc31(np.concatenate(P), np.concatenate(Y))
        print(f"{a.fold} {a.run} {k:10s} ICC {'/'.join(FIVE)} {np.nanmean(icc[five]):.3f}  "
              f"all {np.nanmean(icc):.3f}  frames {sum(map(len, P))}")


if __name__ == "__main__":
    main()
