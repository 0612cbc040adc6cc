"""How much identity and recording setup do the DR channels carry, beside the image itself?

    python examples/generalisation/leakage.py MDR_STORES_DIR --repo-of WORK/folds.json [--frames 60]

Reads DR stores made by `drkit gen-dr` (image + DR channels; one store per person, named
<person>.zarr), takes up to --frames frames spread over each person's videos, and fits a linear
classifier (multinomial logistic regression on the channels average-pooled to 8 x 8 maps, each
feature standardised) to tell, from each channel group alone:

- the **person**: trained on the first half of every video's chosen frames, tested on the second
  half (same people, other moments);
- for a residual DR (d = (I - mean I) + UNet(I), drkit's default), also from the DR minus the
  centred image: what the network adds;
- the **source** (repository, i.e. the recording setup): trained on some people of a source,
  tested on its other people (grouped 4-fold cross-validation by person), over sources with at
  least 3 people.

A DR that carries little identity or setup scores near chance; one that scores like the image
hands a downstream network the same shortcuts to people and cameras, which is one way a gain on
the training sources could fail to carry to new ones. Prints one table (accuracy, chance level).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def pooled(x: np.ndarray, side: int = 8) -> np.ndarray:
    """(n, C, M, M) -> (n, C * side * side): mean over blocks."""
    n, c, m, _ = x.shape
    k = m // side
    return x[:, :, :k * side, :k * side].reshape(n, c, side, k, side, k).mean((3, 5)).reshape(n, -1)


def load(stores: list[Path], per_person: int):
    from drkit.store import open_store
    from drkit.viz import dr_groups
    feats, person, video, pos = defaultdict(list), [], [], []
    groups, img_ch = None, []
    for p in stores:
        st = open_store(p, "dr")
        names = st.typed_params.channels
        if groups is None:
            img = [i for i, n in enumerate(names) if n.startswith("image_")]
            groups = ([("image", img)] if img else []) + dr_groups(names)
            img_ch = img
        vids = st.videos
        n_each = max(2, per_person // max(1, len(vids)))
        for v in vids:
            m = st.video(v)["mdr"]
            idx = np.linspace(0, len(m) - 1, min(n_each, len(m))).round().astype(int)
            x = np.asarray(m[np.unique(idx)], np.float32)
            for label, ch in groups:
                feats[label].append(pooled(x[:, ch]))
                if label != "image" and img_ch:   # what the network adds to the image (residual DRs)
                    centred = x[:, img_ch] - x[:, img_ch].mean((1, 2, 3), keepdims=True)
                    feats[f"{label} minus image"].append(pooled(x[:, ch] - centred))
            person += [p.stem] * len(x)
            video += [v] * len(x)
            pos += list(np.linspace(0, 1, len(x)))
    return {k: np.concatenate(v) for k, v in feats.items()}, np.array(person), np.array(video), np.array(pos)


def accuracy(X, y, train, test) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    clf.fit(X[train], y[train])
    return float((clf.predict(X[test]) == y[test]).mean())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stores", help="folder of <person>.zarr DR stores")
    ap.add_argument("--repo-of", required=True, help="folds.json of protocol.py (its repo_of map)")
    ap.add_argument("--frames", type=int, default=60, help="frames per person")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    repo = json.loads(Path(a.repo_of).read_text())["repo_of"]
    stores = sorted(Path(a.stores).glob("*.zarr"))
    feats, person, video, pos = load(stores, a.frames)
    src = np.array([repo.get(p, "?") for p in person])
    out = {}
    first = pos < 0.5
    for label, X in feats.items():
        out.setdefault(label, {})["person"] = accuracy(X, person, first, ~first)
    people_of = defaultdict(set)
    for p, r in zip(person, src):
        people_of[r].add(p)
    keep = np.array([len(people_of[r]) >= 3 for r in src])
    ps = sorted(set(person[keep]))
    rng = np.random.default_rng(0)
    fold_of = dict(zip(rng.permutation(ps), np.arange(len(ps)) % 4))
    fold = np.array([fold_of.get(p, -1) for p in person])
    for label, X in feats.items():
        accs = [accuracy(X, src, keep & (fold != f), keep & (fold == f)) for f in range(4)]
        out[label]["source"] = float(np.mean(accs))
    n_people, n_src = len(set(person)), len(set(src[keep]))
    print(f"| channels | person (chance {100 / n_people:.1f}%) | source, new people (chance ~{100 / n_src:.1f}%) |")
    print("|---|---|---|")
    for label, r in out.items():
        print(f"| {label} | {100 * r['person']:.1f}% | {100 * r['source']:.1f}% |")
    if a.json:
        Path(a.json).write_text(json.dumps({"people": n_people, "sources": n_src, "frames": len(person), **out}, indent=1))


if __name__ == "__main__":
    main()
