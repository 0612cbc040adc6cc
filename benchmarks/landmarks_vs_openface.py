"""How close are drkit's 68 face landmarks to a third opinion, OpenFace 2.2, on real video?

    python benchmarks/landmarks_vs_openface.py [--faces ../shared/data/faces]
        [--openface ../shared/data/faces_openface] [--model-root ../shared/models/insightface]
        [--modes dlib_tracked,dlib_naive,insightface_tracked] [--step 2]
        [--baseline-tracker OLD_tracker.py] [--only SUBSTR[,SUBSTR...]] [--limit N]
        [--repeat-speed K] [--fit-confidence] [--records frames.csv] [--json OUT]

e.g. the tracker against its previous version, on all clips (about 15 minutes on 2 CPU cores):

    git show HEAD:drkit/faces/tracker.py > /tmp/old_tracker.py
    python benchmarks/landmarks_vs_openface.py --baseline-tracker /tmp/old_tracker.py --repeat-speed 2

For every video clip of the manifest (``FACES/manifest.csv``; folders of image frames are
skipped) the frames are decoded with ``drkit.sources.FrameReader`` and fed, in order, to one
``drkit.faces.FaceTracker`` per mode, through the library (no store is written):

- ``dlib_tracked``: the default ``drkit preprocess`` (dlib, tracked), every frame;
- ``dlib_naive``: dlib detecting on every frame (``--naive``), every ``--step``-th frame;
- ``insightface_tracked``: ``--backend insightface`` tracked, every frame;
- ``insightface_naive``: insightface detecting on every frame, every ``--step``-th frame;
- with ``--baseline-tracker FILE``, ``dlib_tracked_baseline``: dlib tracked by the ``FaceTracker``
  of another version of drkit/faces/tracker.py (e.g. ``git show HEAD:drkit/faces/tracker.py >
  /tmp/old_tracker.py``), so a change to the tracker is measured against its predecessor on
  the same frames, in the same run.

Reference: OpenFace 2.2's 68 landmarks (``OPENFACE/<file stem>.csv.gz``; columns ``frame``
(1-based), ``confidence``, ``success``, ``x_0..x_67``, ``y_0..y_67`` in source pixels), on the
frames where OpenFace reports success=1 and confidence >= ``--min-confidence`` (0.8).

Error of a frame = mean point-to-point distance over the 68 points / inter-ocular distance
(outer eye corners 36 and 45 of OpenFace's landmarks). A frame where the mode found no face
counts as an infinite error (``missed``). Per mode, per source repository and overall: the
median error, ``fits`` = share of frames with error < 0.08, ``off`` = share with error > 0.15
(the landmarks are off the face, or no face), and the worst clips (by share off). Note that
OpenFace is a third model, not the truth: on clean frontal frames dlib and OpenFace differ by
~0.04 IOD (different annotation habits, e.g. along the jaw), so a small error is agreement of
two models and a large one means at least one of them is off.

For modes whose results carry ``FaceResult.confidence`` (the tracker of this version), how well
it separates good from bad frames: error statistics of frames with confidence < 0.5 and >= 0.5
and of the 5% least confident frames against the rest, and the ROC AUC of (1 - confidence) for
telling ``off`` frames (error > 0.15) from the rest. ``--fit-confidence`` fits the logistic model
behind the confidence (``drkit.faces.tracker.CONFIDENCE``, P(error < 0.08) from the cues in
``FaceResult.cues``) to the frames of each tracked mode and prints it with its ROC AUC from
leave-one-repository-out predictions (scikit-learn), to paste into tracker.py.

Speed: the seconds spent inside each tracker's calls (frame decoding excluded), as frames/s.
Frames are decoded once, in chunks of ``--chunk`` frames, and each chunk runs through every mode
in turn, in an order rotating per chunk, so all modes share the machine's slow and fast moments
(each mode has its own backend instance, so no mode reuses another's grey conversion).
``--repeat-speed K`` times the tracked dlib modes K more times on the first ``--speed-clips``
clips (every frame, interleaved), to tighten the before/after frames/s on a busy machine.

``--records FILE`` writes one CSV row per (mode, clip, evaluated frame): error, detected, score,
confidence and the cues (JSON), for further analysis.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import importlib.util
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
FIT, OFF = 0.08, 0.15

MODES = {   # name: (backend, naive, subsampled)
    "dlib_tracked": ("dlib", False, False),
    "dlib_naive": ("dlib", True, True),
    "insightface_tracked": ("insightface", False, False),
    "insightface_naive": ("insightface", True, True),
    "dlib_tracked_baseline": ("dlib", False, False),
}


def load_openface(path: Path, min_conf: float) -> dict[int, np.ndarray]:
    """0-based frame -> (68, 2) OpenFace landmarks, frames with success=1 and confidence>=min_conf."""
    with gzip.open(path, "rt") as f:
        header = [h.strip() for h in f.readline().split(",")]
        data = np.loadtxt(f, delimiter=",", ndmin=2)
    col = {h: i for i, h in enumerate(header)}
    xs = data[:, [col[f"x_{i}"] for i in range(68)]]
    ys = data[:, [col[f"y_{i}"] for i in range(68)]]
    lm = np.stack([xs, ys], -1)
    ok = (data[:, col["success"]] == 1) & (data[:, col["confidence"]] >= min_conf)
    out = {}
    for fr, good, pts in zip(data[:, col["frame"]].astype(int) - 1, ok, lm):
        if good and fr not in out:   # one face per frame: keep the first row
            out[int(fr)] = pts
    return out


def load_tracker_class(path: str):
    """FaceTracker from another copy of drkit/faces/tracker.py, imported inside drkit.faces so
    its relative imports resolve."""
    name = "drkit.faces._baseline_tracker"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod.FaceTracker


def error(lm: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(lm - ref, axis=1).mean() / np.linalg.norm(ref[36] - ref[45]))


def summary(errs) -> dict:
    e = np.asarray(errs, np.float64)
    if not len(e):
        return {"frames": 0}
    return {"frames": len(e), "median": round(float(np.median(e)), 4),
            "fits": round(float((e < FIT).mean()), 4), "off": round(float((e > OFF).mean()), 4),
            "missed": round(float(np.isinf(e).mean()), 4)}


def auc(pos_scores, neg_scores) -> float | None:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney)."""
    p, n = np.asarray(pos_scores, float), np.asarray(neg_scores, float)
    if not len(p) or not len(n):
        return None
    allv = np.concatenate([p, n])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sv = allv[order]
    i = 0
    while i < len(sv):   # average ranks of ties
        j = i
        while j + 1 < len(sv) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[:len(p)].sum() - len(p) * (len(p) + 1) / 2) / (len(p) * len(n)))


def confidence_report(errs, confs) -> dict:
    e, c = np.asarray(errs, float), np.asarray(confs, float)
    keep = np.isfinite(e) & np.isfinite(c)
    e, c = e[keep], c[keep]
    if not len(e):
        return {}
    lo, hi = c < 0.5, c >= 0.5
    off = e > OFF
    k = max(1, round(0.05 * len(c)))
    order = np.argsort(c, kind="stable")
    return {"low_conf_share": round(float(lo.mean()), 4),
            "lowest_5pct": summary(e[order[:k]]), "other_95pct": summary(e[order[k:]]),
            "low_conf": summary(e[lo]), "high_conf": summary(e[hi]),
            "off_frames_flagged_low": round(float(lo[off].mean()), 4) if off.any() else None,
            "auc_off": round(auc(1 - c[off], 1 - c[~off]), 4) if off.any() and (~off).any() else None}


def fit_confidence(frames: list, backend: str) -> dict:
    """Logistic regression of (error < FIT) on the cues the tracker's confidence model for
    ``backend`` uses, with AUCs from leave-one-repository-out predictions."""
    from sklearn.linear_model import LogisticRegression

    from drkit.faces.tracker import CONFIDENCE, confidence
    names = list(CONFIDENCE.get(backend, CONFIDENCE["default"])[1])
    repo = np.array([r for r, _, _ in frames])
    e = np.array([x for _, x, _ in frames])
    X = np.array([[c[k] for k in names] for _, _, c in frames])
    y = (e < FIT).astype(int)
    p = np.full(len(y), np.nan)
    for g in np.unique(repo):
        te = repo == g
        if len(np.unique(y[~te])) == 2:
            p[te] = LogisticRegression(C=10, max_iter=2000).fit(X[~te], y[~te]).predict_proba(X[te])[:, 1]
    m = LogisticRegression(C=10, max_iter=2000).fit(X, y)
    ok = np.isfinite(p)
    cur = np.array([confidence(c, backend) for _, _, c in frames])
    return {"backend": backend, "frames": len(y), "cues": names,
            "intercept": round(float(m.intercept_[0]), 2),
            "weights": {k: round(float(w), 2) for k, w in zip(names, m.coef_[0])},
            "cv_auc_fits": round(auc(p[ok][y[ok] == 1], p[ok][y[ok] == 0]), 4),
            "cv_auc_off": round(auc(1 - p[ok][e[ok] > OFF], 1 - p[ok][e[ok] <= OFF]), 4) if (e[ok] > OFF).any() else None,
            "current_auc_fits": round(auc(cur[y == 1], cur[y == 0]), 4)}


def table(rows: list[list], head: list[str]) -> str:
    cols = [head] + [[str(x) for x in r] for r in rows]
    w = [max(len(r[i]) for r in cols) for i in range(len(head))]
    line = lambda r: "  ".join(s.ljust(w[i]) if i == 0 else s.rjust(w[i]) for i, s in enumerate(r))
    return "\n".join([line(head), line(["-" * x for x in w])] + [line(r) for r in cols[1:]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", default=str(HERE.parents[2] / "shared/data/faces"))
    ap.add_argument("--openface", default=str(HERE.parents[2] / "shared/data/faces_openface"))
    ap.add_argument("--model-root", default=str(HERE.parents[2] / "shared/models/insightface"))
    ap.add_argument("--modes", default="dlib_tracked,dlib_naive,insightface_tracked",
                    help=f"comma-separated, of {', '.join(m for m in MODES if 'baseline' not in m)}")
    ap.add_argument("--baseline-tracker", help="a tracker.py whose FaceTracker runs as dlib_tracked_baseline")
    ap.add_argument("--step", type=int, default=2, help="naive modes run on every STEP-th frame")
    ap.add_argument("--min-confidence", type=float, default=0.8, help="OpenFace frames used")
    ap.add_argument("--only", help="only clips whose path contains one of these (comma-separated)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N clips")
    ap.add_argument("--chunk", type=int, default=200, help="frames decoded at a time")
    ap.add_argument("--worst", type=int, default=8, help="worst clips listed per mode")
    ap.add_argument("--repeat-speed", type=int, default=0,
                    help="time the tracked dlib modes K more times on the first --speed-clips clips")
    ap.add_argument("--speed-clips", type=int, default=6)
    ap.add_argument("--records", help="per-frame CSV")
    ap.add_argument("--fit-confidence", action="store_true",
                    help="fit the logistic confidence model (drkit.faces.tracker.CONFIDENCE) of each "
                         "tracked mode to these frames and print it, with its cross-validated AUC")
    ap.add_argument("--json", help="write the numbers here too")
    a = ap.parse_args()

    from drkit.faces import FaceTracker, make_backend
    from drkit.sources import FrameReader, discover

    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    if a.baseline_tracker:
        modes.append("dlib_tracked_baseline")
    bad = [m for m in modes if m not in MODES]
    if bad:
        ap.error(f"unknown mode(s) {bad}; choose from {', '.join(MODES)}")
    trackers_cls = {m: FaceTracker for m in modes}
    if a.baseline_tracker:
        trackers_cls["dlib_tracked_baseline"] = load_tracker_class(a.baseline_tracker)
    backends = {}
    for m in modes:   # one backend per mode: no mode gets another's grey conversion for free
        b = MODES[m][0]
        backends[m] = make_backend(b, a.model_root if b == "insightface" else None)

    faces, ofdir = Path(a.faces), Path(a.openface)
    clips = []
    with open(faces / "manifest.csv", newline="") as f:
        for r in csv.DictReader(f):
            p = faces / r["path"]
            if not p.is_file():
                continue   # folders of jpg frames
            if a.only and not any(o in r["path"] for o in a.only.split(",")):
                continue
            clips.append((r["path"], r["repo"], p, ofdir / f"{p.stem}.csv.gz"))
    if a.limit:
        clips = clips[:a.limit]

    errs = defaultdict(lambda: defaultdict(list))     # mode -> clip -> [error]
    confs = defaultdict(list)                         # mode -> [confidence], aligned with all errors
    cues = defaultdict(list)                          # mode -> [(repo, error, FaceResult.cues)], found frames
    allerr = defaultdict(list)
    secs, nframes = defaultdict(float), defaultdict(int)
    rec: list[list] | None = [] if a.records else None   # rows of --records
    rot = 0
    t_start = time.time()
    for ci, (rel, repo, path, ofpath) in enumerate(clips):
        if not ofpath.is_file():
            print(f"no OpenFace file for {rel}: skipped", file=sys.stderr)
            continue
        ref = load_openface(ofpath, a.min_confidence)
        trackers = {m: trackers_cls[m](backends[m], naive=MODES[m][1]) for m in modes}
        reader = FrameReader(discover([path])[0])
        it = iter(reader)
        done = False
        while not done:
            chunk = []
            for idx, frame in it:
                chunk.append((idx, frame))
                if len(chunk) >= a.chunk:
                    break
            else:
                done = True
            if not chunk:
                break
            rot += 1
            for m in modes[rot % len(modes):] + modes[:rot % len(modes)]:
                tr, sub = trackers[m], MODES[m][2]
                for idx, frame in chunk:
                    if sub and idx % a.step:
                        continue
                    t0 = time.perf_counter()
                    res = tr(frame)
                    secs[m] += time.perf_counter() - t0
                    nframes[m] += 1
                    if idx not in ref:
                        continue
                    e = error(res.landmarks, ref[idx]) if res is not None else float("inf")
                    c = float(getattr(res, "confidence", np.nan)) if res is not None else np.nan
                    errs[m][rel].append(e)
                    allerr[m].append(e)
                    confs[m].append(c)
                    cu = getattr(res, "cues", None) or {}
                    if cu:
                        cues[m].append((repo, e, cu))
                    if rec is not None:
                        rec.append([m, rel, idx, f"{e:.5f}", int(res.detected) if res else "",
                                      f"{res.score:.4f}" if res else "", f"{c:.4f}",
                                      json.dumps({k: round(v, 5) for k, v in cu.items()})])
        line = "  ".join(f"{m} {np.median(errs[m][rel]):.3f}" for m in modes if errs[m][rel])
        print(f"[{ci + 1}/{len(clips)} {time.time() - t_start:.0f}s] {rel}: {line}", file=sys.stderr, flush=True)
    if rec is not None:
        with open(a.records, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["mode", "clip", "frame", "error", "detected", "score", "confidence", "cues"])
            w.writerows(rec)

    # extra speed rounds: tracked dlib modes only, every frame of the first clips, interleaved
    speed = {m: {"seconds": secs[m], "frames": nframes[m]} for m in modes}
    tracked_dlib = [m for m in modes if MODES[m][0] == "dlib" and not MODES[m][1]]
    if a.repeat_speed and tracked_dlib:
        sp = {m: [0.0, 0] for m in tracked_dlib}
        for k in range(a.repeat_speed):
            for rel, repo, path, ofpath in clips[:a.speed_clips]:
                frames = [f for _, f in FrameReader(discover([path])[0])]
                order = tracked_dlib if k % 2 == 0 else tracked_dlib[::-1]
                for m in order:
                    tr = trackers_cls[m](backends[m])
                    t0 = time.perf_counter()
                    for f in frames:
                        tr(f)
                    sp[m][0] += time.perf_counter() - t0
                    sp[m][1] += len(frames)
        for m in tracked_dlib:
            speed[m]["repeat_fps"] = round(sp[m][1] / sp[m][0], 1)

    res: dict = {"clips": len(clips), "min_openface_confidence": a.min_confidence,
                 "step_naive": a.step, "modes": {}}
    for m in modes:
        s = summary(allerr[m])
        s["fps"] = round(speed[m]["frames"] / max(speed[m]["seconds"], 1e-9), 1)
        if "repeat_fps" in speed[m]:
            s["repeat_fps"] = speed[m]["repeat_fps"]
        s["backend_version"] = backends[m].version
        by_repo = defaultdict(list)
        for rel, e in errs[m].items():
            by_repo[next(r for p, r, *_ in clips if p == rel)].extend(e)
        s["by_repo"] = {r: summary(e) for r, e in sorted(by_repo.items())}
        per_clip = {rel: summary(e) for rel, e in errs[m].items()}
        s["worst_clips"] = dict(sorted(per_clip.items(), key=lambda kv: (-kv[1]["off"], -kv[1]["median"]))[:a.worst])
        if np.isfinite(confs[m]).any():
            s["confidence"] = confidence_report(allerr[m], confs[m])
        res["modes"][m] = s

    # printed tables
    print(f"\n{len(clips)} clips; error = mean landmark distance / OpenFace inter-ocular distance; "
          f"fits < {FIT}, off > {OFF} (or no face); naive modes on every {a.step}. frame\n")
    print(table([[m, s["frames"], s["median"], f"{100 * s['fits']:.2f}%", f"{100 * s['off']:.2f}%",
                  f"{100 * s['missed']:.2f}%", s["fps"], s.get("repeat_fps", "")]
                 for m, s in res["modes"].items()],
                ["mode", "frames", "median", "fits", "off", "missed", "fps", "fps(repeat)"]))
    repos = sorted({r for s in res["modes"].values() for r in s["by_repo"]})
    print("\nper repository: median / fits / off")
    rows = []
    for r in repos:
        row = [r, res["modes"][modes[0]]["by_repo"].get(r, {}).get("frames", 0)]
        for m in modes:
            x = res["modes"][m]["by_repo"].get(r)
            row.append(f"{x['median']:.3f} {100 * x['fits']:.0f}% {100 * x['off']:.1f}%" if x and x["frames"] else "-")
        rows.append(row)
    print(table(rows, ["repository", "frames"] + modes))
    for m in modes:
        print(f"\nworst clips, {m}: median / fits / off")
        print(table([[c, x["frames"], x["median"], f"{100 * x['fits']:.0f}%", f"{100 * x['off']:.1f}%"]
                     for c, x in res["modes"][m]["worst_clips"].items()],
                    ["clip", "frames", "median", "fits", "off"]))
    for m in modes:
        cr = res["modes"][m].get("confidence")
        if cr:
            lo, hi = cr["low_conf"], cr["high_conf"]
            print(f"\nconfidence, {m}: {100 * cr['low_conf_share']:.1f}% of frames < 0.5 "
                  f"(median {lo.get('median')}, fits {lo.get('fits')}, off {lo.get('off')}) vs >= 0.5 "
                  f"(median {hi.get('median')}, fits {hi.get('fits')}, off {hi.get('off')}); "
                  f"off frames flagged < 0.5: {cr['off_frames_flagged_low']}; AUC(off) {cr['auc_off']}; "
                  f"lowest 5% of confidence: {cr['lowest_5pct']} vs the rest: {cr['other_95pct']}")
    if a.fit_confidence:
        res["confidence_fit"] = {}
        for m in modes:
            if cues[m] and not MODES[m][1]:
                res["confidence_fit"][m] = fit = fit_confidence(cues[m], MODES[m][0])
                print(f"\nconfidence model fitted on {m} ({fit['frames']} frames; P(error < {FIT})): "
                      f"{fit['backend']!r}: ({fit['intercept']}, {fit['weights']}); leave-one-repository-out "
                      f"AUC(fits) {fit['cv_auc_fits']}, AUC(off) {fit['cv_auc_off']}; "
                      f"in-sample with the model in tracker.py: AUC(fits) {fit['current_auc_fits']}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
