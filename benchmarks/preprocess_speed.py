"""Preprocess throughput on the real face videos: dlib tracked vs naive detect-every-frame, and
the insightface backend (tracked) beside them.

    python benchmarks/preprocess_speed.py [--faces ../shared/data/faces] [--limit N] [--crop-size 224]
        [--model-root ../shared/models/insightface] [--backends dlib,insightface]
        [--insightface-naive] [--workers-compare] [--refit-compare] [--frame-compare] [--interleave]
        [--json OUT]

Runs `drkit preprocess` once per mode over the same videos (one process, one worker), into
temporary stores, and reports for each mode frames/s (source frames decoded / wall time), the
share of frames with a face, and how its landmarks agree with dlib's naive detect-every-frame
reference, in source pixels, as a share of the inter-ocular distance (IOD, outer eye corners,
from the reference):

- dlib tracked vs dlib naive (`same_landmarks_pct`): mean landmark distance below 5% of the IOD
  (tracking must reproduce what detecting every frame gives);
- insightface vs dlib (`agree_8pct`): mean distance below 8% of the IOD (another model: the
  106 -> 68 map, different training data), plus the median error.

``tracked`` runs with preprocess's defaults, which keep a frame's landmarks for the next frames
while the face there has not changed (``--reuse-mad``); ``--refit-compare`` adds
``tracked_refit``, fitting landmarks on every tracked frame (``--reuse-mad 0``, as before 0.3.0),
reported as ``reuse_gain`` (tracked / tracked_refit), ``refit_speedup`` and
``refit_same_landmarks_pct``. The periodic re-detections of ``tracked`` run the detector on a
small region around the face (``--redetect-region``, the default); ``--frame-compare`` adds
``tracked_frame``, re-detecting on the whole frame (``--redetect-frame``, as before 0.3.0),
reported as ``region_gain``, ``frame_speedup`` and ``frame_same_landmarks_pct``.

With ``--workers-compare`` two more dlib tracked runs: ``tracked_inline`` (one worker, frames
decoded inline instead of in the read-ahead thread a spare core allows) and ``tracked_workers2``
(``--workers 2``: two worker processes, decoding inline), reported as ``read_ahead_gain`` and
``workers2_speedup`` (over ``tracked_inline``, one worker on one core: the issue's "--workers 2
close to 2x one worker") and ``workers2_vs_tracked`` (over the default one-worker run).

``--interleave`` runs each video through every one-worker mode before the next video (one
``run`` per video and mode, so the modes share the machine's slow and fast moments; the
``--workers 2`` mode still runs once over all videos).

Each mode also reports ``cpu_cores``: its CPU time (user + system, worker processes included)
over its wall time. One dlib worker uses more than one core: the store's writer thread compresses
beside the tracker (and with a spare core, FFmpeg decodes in the read-ahead thread), so two
workers on two cores cannot reach twice one worker's frames/s.

Frames where only one of the two found a face count as disagreeing. insightface runs with
onnxruntime's intra-op threads as the backend sets them (all cores in one process, reported as
`threads`; DRKIT_ORT_THREADS overrides); dlib is single-threaded. insightface is skipped, with a
note, where onnxruntime or the model folder is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

import drkit.stages.preprocess as pp
from drkit.background import available_cores
from drkit.stages.preprocess import PreprocessConfig, run
from drkit.store import open_store

HERE = Path(__file__).resolve()
# settings that differ from preprocess's defaults, per mode
MODE_SETTINGS = {"tracked_refit": {"reuse_mad": 0.0}, "tracked_frame": {"redetect_region": False}}


def source_landmarks(store_path: Path) -> dict[str, dict[int, np.ndarray]]:
    st = open_store(store_path)
    out = {}
    for v in st.videos:
        g = st.video(v)
        lm, M, idx = g["landmarks"][:], g["transform"][:], g["frame_index"][:]
        A, t = M[:, :, :2].astype(np.float64), M[:, :, 2].astype(np.float64)
        src = np.einsum("nij,npj->npi", np.linalg.inv(A), lm - t[:, None, :])
        out[v] = dict(zip(idx.tolist(), src))
    return out


def agreement(test: dict, ref: dict, tol: float) -> dict:
    """Share of frames (found by either) where ``test`` is within ``tol`` IOD of ``ref``."""
    agree = total = both = 0
    errs = []
    for v in set(ref) | set(test):
        r, t = ref.get(v, {}), test.get(v, {})
        for k in set(r) | set(t):
            total += 1
            if k in r and k in t:
                both += 1
                e = np.linalg.norm(t[k] - r[k], axis=1).mean() / np.linalg.norm(r[k][36] - r[k][45])
                errs.append(e)
                agree += e < tol
    return {"agree_pct": round(100 * agree / max(total, 1), 2),
            "both_found_pct": round(100 * both / max(total, 1), 2),
            "median_err_iod": round(float(np.median(errs)), 4) if errs else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", default=str(HERE.parents[2] / "shared/data/faces"))
    ap.add_argument("--limit", type=int, default=0, help="use only the first N videos")
    ap.add_argument("--crop-size", "--size", dest="size", type=int, default=224)
    ap.add_argument("--refit-compare", action="store_true",
                    help="also a tracked run fitting landmarks on every frame (--reuse-mad 0)")
    ap.add_argument("--frame-compare", action="store_true",
                    help="also a tracked run re-detecting on the whole frame (--redetect-frame)")
    ap.add_argument("--model-root", default=str(HERE.parents[2] / "shared/models/insightface"),
                    help="insightface model folder (see README, 'Optional: insightface backend')")
    ap.add_argument("--backends", default="dlib,insightface")
    ap.add_argument("--insightface-naive", action="store_true",
                    help="also run insightface detecting on every frame (slow on CPU)")
    ap.add_argument("--interleave", action="store_true",
                    help="run each video through every one-worker mode before the next video")
    ap.add_argument("--workers-compare", action="store_true",
                    help="also time dlib tracked with decoding inline and with --workers 2")
    ap.add_argument("--json", help="write the numbers here too")
    a = ap.parse_args()
    vids = sorted(p for p in Path(a.faces).rglob("*")
                  if p.suffix.lower() in (".mp4", ".mov", ".avi"))
    if a.limit:
        vids = vids[:a.limit]
    backends = [b.strip() for b in a.backends.split(",") if b.strip()]
    modes = [("tracked", "dlib", False, 1), ("naive", "dlib", True, 1)]
    if a.refit_compare:
        modes.append(("tracked_refit", "dlib", False, 1))
    if a.frame_compare:
        modes.append(("tracked_frame", "dlib", False, 1))
    if a.workers_compare:
        modes += [("tracked_inline", "dlib", False, 1), ("tracked_workers2", "dlib", False, 2)]
    res: dict = {"videos": len(vids)}
    if "insightface" in backends:
        from drkit.errors import DrkitError
        from drkit.faces import make_backend
        try:
            be = make_backend("insightface", a.model_root)
            res["insightface_version"] = be.version
            res["insightface_threads"] = be.threads
            modes.append(("insightface", "insightface", False, 1))
            if a.insightface_naive:
                modes.append(("insightface_naive", "insightface", True, 1))
        except DrkitError as e:   # no onnxruntime, no models: report and go on with dlib
            res["insightface_skipped"] = str(e)
    with tempfile.TemporaryDirectory() as tmp:
        stores = {}
        def one_run(mode, backend, naive, workers, inputs):
            out = Path(tmp) / f"{mode}.zarr"
            # tracked_inline: as if no core were spare, so the frames are decoded inline
            pp.available_cores = (lambda: 1) if mode == "tracked_inline" else available_cores
            t0, c0 = time.perf_counter(), os.times()
            s = run(PreprocessConfig(inputs=[str(v) for v in inputs], out=str(out), crop_size=a.size,
                                     naive=naive, backend=backend, workers=workers,
                                     **MODE_SETTINGS.get(mode, {}),
                                     model_root=a.model_root if backend == "insightface" else None))
            pp.available_cores = available_cores
            dt, c1 = time.perf_counter() - t0, os.times()
            cpu[mode] += sum(c1[i] - c0[i] for i in range(4))   # user + system, workers' included
            return dt, s

        for backend in {m[1] for m in modes}:   # load (and hash) the models before any timing
            pp._backend(backend, a.model_root if backend == "insightface" else None).models
        # one run per video and mode in turn (--interleave: each video through every one-worker
        # mode before the next video, so a machine that slows down mid-run slows every mode alike)
        seconds = dict.fromkeys([m[0] for m in modes], 0.0)
        cpu = dict.fromkeys([m[0] for m in modes], 0.0)
        summaries = {m[0]: [] for m in modes}
        rounds = [[v] for v in vids] if a.interleave else [vids]
        for inputs in rounds:
            for mode, backend, naive, workers in modes:
                if a.interleave and workers > 1:
                    continue
                dt, s = one_run(mode, backend, naive, workers, inputs)
                seconds[mode] += dt
                summaries[mode].append(s)
        for mode, backend, naive, workers in modes:
            if a.interleave and workers > 1:   # parallel over videos: one run over all of them
                dt, s = one_run(mode, backend, naive, workers, vids)
                seconds[mode], summaries[mode] = dt, [s]
        for mode, backend, naive, workers in modes:
            out = Path(tmp) / f"{mode}.zarr"
            st = open_store(out)
            dt = seconds[mode]
            n_src = sum(st.video_info(v)["n_source_frames"] for v in st.videos)
            n_face = sum(x.frames for x in summaries[mode])
            res[mode] = {"backend": backend, "naive": naive, "workers": workers, "seconds": round(dt, 2),
                         "source_frames": n_src, "face_frames": n_face,
                         "faces_found_pct": round(100 * n_face / max(n_src, 1), 2),
                         "fps": round(n_src / dt, 1),
                         "cpu_cores": round(cpu[mode] / dt, 2)}
            stores[mode] = source_landmarks(out)
        ref = stores["naive"]
        same = agreement(stores["tracked"], ref, 0.05)
        res["speedup"] = round(res["tracked"]["fps"] / res["naive"]["fps"], 2)
        res["same_landmarks_pct"] = same["agree_pct"]
        res["both_found_pct"] = same["both_found_pct"]
        if "tracked_refit" in stores:
            res["reuse_gain"] = round(res["tracked"]["fps"] / res["tracked_refit"]["fps"], 2)
            res["refit_speedup"] = round(res["tracked_refit"]["fps"] / res["naive"]["fps"], 2)
            res["refit_same_landmarks_pct"] = agreement(stores["tracked_refit"], ref, 0.05)["agree_pct"]
        if "tracked_frame" in stores:
            res["region_gain"] = round(res["tracked"]["fps"] / res["tracked_frame"]["fps"], 2)
            res["frame_speedup"] = round(res["tracked_frame"]["fps"] / res["naive"]["fps"], 2)
            res["frame_same_landmarks_pct"] = agreement(stores["tracked_frame"], ref, 0.05)["agree_pct"]
        if a.workers_compare:
            fps = {m: res[m]["fps"] for m in ("tracked", "tracked_inline", "tracked_workers2")}
            res["read_ahead_gain"] = round(fps["tracked"] / fps["tracked_inline"], 2)
            res["workers2_speedup"] = round(fps["tracked_workers2"] / fps["tracked_inline"], 2)
            res["workers2_vs_tracked"] = round(fps["tracked_workers2"] / fps["tracked"], 2)
            for m in ("tracked_inline", "tracked_workers2"):   # same results whatever the scheduling
                res[m]["same_landmarks_as_tracked_pct"] = agreement(stores[m], stores["tracked"], 1e-6)["agree_pct"]
        for mode in ("insightface", "insightface_naive"):
            if mode in stores:
                ag = agreement(stores[mode], ref, 0.08)
                res[mode].update({"agree_8pct_with_dlib": ag["agree_pct"],
                                  "both_found_pct": ag["both_found_pct"],
                                  "median_err_iod": ag["median_err_iod"]})
    print(json.dumps(res, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
