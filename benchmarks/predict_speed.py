"""`drkit predict` on one real video: frames/s, where the time goes, and the same clip through
OpenFace 2.2's FeatureExtraction when it is installed (issue 11: drkit must reach >= 1.5x
OpenFace's frames/s on CPU with two DRs + a task network at 112 px, default backend dlib).

    python benchmarks/predict_speed.py [--bundle RUN_OR_BEST_PT] [--dr-size 64|112]
        [--dr-base 16] [--clip VIDEO] [--faces ../shared/data/faces] [--modes sequential,pipelined]
        [--batch-size 32] [--repeat 1] [--openface PATH/FeatureExtraction] [--work DIR] [--json OUT] [--csv-dir DIR]

Bundle: without --bundle one is built once into --work (default $TMPDIR/drkit_predict_bench) and
reused: two short real clips preprocessed at 112 px (dlib), gen-dr at map size 112 with two DR
networks, and a small task network (train-task --arch small, 17 AU targets, random labels, one
epoch). Only the architecture matters for speed, not the weights. ``--dr-size 64`` (default)
uses the shipped `pretrained:T5` and `pretrained:T9` (net_size 64: each DR net runs at 64 px,
its output resized to the 112 px map; with ``--dr-base 8`` the slim `pretrained:T5-slim` and
`pretrained:T9-slim`); ``--dr-size 112`` trains two DR nets at 112 px (width ``--dr-base``) for a
few seconds each (DR nets at full map size, as issue 11 measured); ``--dr-size 0`` builds it with
every stage at its defaults (preprocess, train-dr, gen-dr, train-task: what a user who sets
nothing gets, issue 23).

Clip: by default the clip of ../shared/data/faces/manifest.csv closest to 1000 frames (the
1008-frame KwaiVGI__LivePortrait/assets/examples/driving/d6.mp4, 480x480, 30 fps); it is read in
place, never copied.

Modes, each a call of the library function ``drkit.stages.predict.run`` (CPU, fp32, the bundle's
backend) on the clip into a temporary CSV:
- ``sequential``: ``pipeline=False`` (the default on the CPU): decode, track, then the networks per
  batch, one after the other (the loop drkit had before the pipeline);
- ``sequential-nchw``: the same with the networks in the standard memory layout
  (``channels_last=False``; channels_last is the default since 0.2);
- ``pipelined``: ``pipeline=True`` (the default of `drkit predict` on a GPU): decoding + tracking
  in a background thread;
- ``pipelined-1t``: the same with torch limited to one intra-op thread meanwhile;
- ``default``: ``run(cfg)`` as the CLI calls it (the only mode a drkit without the pipeline
  accepts: run this script with PYTHONPATH pointing at an older drkit to time it);
- ``sequential-torch`` / ``sequential-ort``: ``sequential`` with ``--engine torch`` /
  ``onnxruntime`` (the other modes use the default engine, ``auto``, except ``sequential-nchw``
  and ``pipelined-1t``, which set torch's own options and so run torch).
- ``default-reuse``: ``default`` with ``--reuse-mad 3`` (preprocess's default: the tracker keeps
  landmarks while the face has not changed; off by default for bundles whose store predates it);
  its CSV differs from the others' where a kept frame's crop does.
- ``default-fasttrack``: ``default-reuse`` with ``--redetect-region`` as well (periodic
  re-detections on a small region around the face): the tracking preprocess does by default since
  0.3.0, for bundles whose store predates it (pretrained:au and au-si track so by default).
- ``default-fitall``: ``default`` with ``--reuse-mad 0 --redetect-frame``: landmarks fitted on every
  frame and whole-frame re-detections, the tracking of drkit 0.2 and of pretrained:au's training
  stores.
Every mode's CSV is compared with the first mode's: identical, or (sequential-nchw) the largest
difference of its numbers (the layouts round differently, ~1e-6).

Printed per mode: frames/s end to end (wall time of ``run``: bundle and face model loading
included, as a user timing the command sees it) and in the frame loop, and the time split:
decode, tracking (landmarks + crop), DR nets (the MDR stack: DR networks and their resizes) and
the task network, in seconds (busy time: in the pipelined modes decode + tracking run beside the
networks, so the parts add up to more than the loop).

OpenFace: --openface PATH, else $OPENFACE_BIN, else FeatureExtraction on PATH, else
$TMPDIR/peer/OpenFace/build/bin/FeatureExtraction (built by ../shared/tools/openface/build.sh).
It runs as ../shared/tools/openface/run.sh runs it (-2Dfp -aus -pose, from its bin folder), in
the same run, and drkit's frames/s is printed as a ratio to it. Without it drkit runs alone and
the ratio is given to the OpenFace rate recorded in issue 11 (38 frames/s on the 1008-frame clip,
this 2-core machine) -- a recorded reference, not a measurement of this run.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
FACES = HERE.parents[2] / "shared" / "data" / "faces"
OPENFACE_REFERENCE_FPS = 38.0     # issue 11: OpenFace 2.2 FeatureExtraction, 1008-frame clip, this machine
AUS = ["AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12", "AU14", "AU15", "AU17",
       "AU20", "AU23", "AU25", "AU26", "AU45"]   # OpenFace's 17 AU intensities
TRAIN_CLIPS = ["Hangz-nju-cuhk__Talking-Face_PC-AVS/misc/Input/00010.mp4",          # 106 frames
               "Hangz-nju-cuhk__Talking-Face_PC-AVS/misc/Pose_Source/620900105.mp4"]  # 108, another person


def pick_clip(faces: Path, target: int = 1000) -> tuple[Path, int]:
    with open(faces / "manifest.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["opened"] == "True" and (faces / r["path"]).is_file()]
    r = min(rows, key=lambda r: abs(int(r["frames"]) - target))
    return faces / r["path"], int(r["frames"])


def build_bundle(work: Path, dr_size: int, faces: Path, dr_base: int = 16) -> Path:
    """A task bundle: two DR nets (pretrained T5 + T9 at 64 px, or two trained briefly at
    ``dr_size`` px with UNet width ``dr_base``), MDR at map size 112, small task network; built
    once into ``work``."""
    import numpy as np

    from drkit.configs import (
        GenDRConfig,
        PreprocessConfig,
        TrainDRConfig,
        TrainTaskConfig,
    )
    from drkit.labels import write_labels
    from drkit.stages import gen_dr, preprocess, train_dr, train_task
    from drkit.store import open_store

    defaults = dr_size == 0   # every stage at its defaults, as a user who sets nothing gets (issue 23)
    d = work / ("defaults" if defaults else f"dr{dr_size}" if dr_base == 16 else f"dr{dr_size}b{dr_base}")
    best = d / "task" / "best.pt"
    if best.is_file():
        return best
    d.mkdir(parents=True, exist_ok=True)
    store = d / "faces.zarr"
    if not store.exists():
        preprocess.run(PreprocessConfig(inputs=[str(faces / c) for c in TRAIN_CLIPS], out=str(store),
                                        **({} if defaults else {"crop_size": 112})))
    if dr_size == 64 and dr_base in (16, 8):   # the shipped models (base 8: the slim ones)
        sfx = "" if dr_base == 16 else "-slim"
        drs = [f"pretrained:T5{sfx}", f"pretrained:T9{sfx}"]
    else:
        drs = []
        for T in (5, 9):
            out = d / f"dr_T{T}"
            if not (out / "best.pt").is_file() and not (out / "last.pt").is_file():
                sized = {} if defaults else {"net_size": dr_size, "base": dr_base}
                train_dr.run(TrainDRConfig(stores=[store], out=out, T=T, stride=2, **sized,
                                           epochs=1, time_budget=8, device="cpu", overwrite=True))
            drs.append(str(out))
    mdr = d / "mdr.zarr"
    if not mdr.exists():
        gen_dr.run(GenDRConfig(store=store, out=mdr, dr=drs, device="cpu", **({} if defaults else {"map_size": 112})))
    st = open_store(store)
    rng = np.random.default_rng(0)
    rows = []
    for k, v in enumerate(st.videos):
        for i in st.video(v)["frame_index"][:]:
            rows.append({"video": v, "frame": int(i), "person": f"p{k}",
                         **{a: round(float(rng.uniform(0, 5)), 2) for a in AUS}})
    write_labels(d / "labels.csv", rows, AUS)
    train_task.run(TrainTaskConfig(input=[mdr], out=d / "task", labels=d / "labels.csv", targets=AUS,
                                   val_share=0.5, epochs=1, device="cpu", overwrite=True))
    return best


def csv_max_diff(a: Path, b: Path) -> float:
    """Largest difference between two prediction CSVs' numbers (inf if their rows differ)."""
    with open(a) as fa, open(b) as fb:
        ra, rb = list(csv.reader(fa)), list(csv.reader(fb))
    if len(ra) != len(rb) or ra[:1] != rb[:1]:
        return float("inf")
    d = 0.0
    for x, y in zip(ra[1:], rb[1:]):
        for u, v in zip(x, y):
            if u != v:
                try:
                    d = max(d, abs(float(u) - float(v)))
                except ValueError:
                    return float("inf")
    return d


def bundle_summary(bundle: Path) -> str:
    from drkit.checkpoint import load_checkpoint
    ck = load_checkpoint(bundle, "task")
    c = ck.config
    nets = ", ".join(f"T{n.config.T} {n.model.kwargs.get('base')}x{n.model.kwargs.get('depth')} @ {n.config.net_size}px"
                     for n in ck.dr_nets)
    return (f"map {c.map_size} px, crop {c.preprocess.crop_size} px, backend {c.preprocess.backend}; "
            f"DR nets: {nets}; task net: {ck.model.name} {ck.model.kwargs}")


def find_openface(arg: str | None) -> Path | None:
    cands = [arg, os.environ.get("OPENFACE_BIN"), shutil.which("FeatureExtraction"),
             str(Path(os.environ.get("TMPDIR", "/tmp")) / "peer" / "OpenFace" / "build" / "bin" / "FeatureExtraction")]
    for c in cands:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c).resolve()
    if arg:
        sys.exit(f"--openface {arg}: not an executable file")
    return None


def run_openface(exe: Path, clip: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        r = subprocess.run([str(exe), "-mloc", "model/main_clnf_general.txt", "-f", str(clip), "-out_dir", tmp,
                            "-2Dfp", "-aus", "-pose"], cwd=exe.parent, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        out = list(Path(tmp).glob("*.csv"))
        if r.returncode != 0 or not out:
            return {"error": f"FeatureExtraction failed (rc {r.returncode}): {r.stderr[-300:]}"}
        with open(out[0]) as f:
            n = sum(1 for _ in f) - 1
    return {"frames": n, "wall_s": wall, "fps": n / wall}


def run_drkit(bundle: Path, clip: Path, mode: str, out: Path, batch_size: int = 32) -> dict:
    from drkit.configs import PredictConfig
    from drkit.stages import predict
    cfg = PredictConfig(model=bundle, inputs=[clip], out=out, device="cpu", batch_size=batch_size)
    if mode == "sequential-nchw":   # the standard memory layout (channels_last is the default)
        cfg.channels_last = False
    if hasattr(cfg, "engine"):      # the engine modes name it; the torch-setting modes measure torch
        cfg.engine = {"sequential-torch": "torch", "sequential-ort": "onnxruntime", "sequential-nchw": "torch",
                      "pipelined-1t": "torch"}.get(mode, cfg.engine)
    if mode in ("default-reuse", "default-fasttrack"):   # predict --reuse-mad 3: landmark reuse for a bundle whose store had none
        from drkit.configs import REUSE_MAD
        cfg.reuse_mad = REUSE_MAD
    if mode == "default-fasttrack":   # and --redetect-region: preprocess's tracking defaults since 0.3.0
        cfg.redetect_region = True
    if mode == "default-fitall":   # --reuse-mad 0 --redetect-frame: the tracking of drkit 0.2
        cfg.reuse_mad, cfg.redetect_region = 0.0, False
    kw = {"sequential": {"pipeline": False}, "sequential-nchw": {"pipeline": False}, "pipelined": {"pipeline": True},
          "pipelined-1t": {"pipeline": True, "net_threads": 1}, "default": {}, "default-reuse": {}, "default-fasttrack": {}, "default-fitall": {},
          "sequential-torch": {"pipeline": False}, "sequential-ort": {"pipeline": False}}[mode]
    if kw and "pipeline" not in inspect.signature(predict.run).parameters:
        raise SystemExit(f"mode {mode}: this drkit's predict.run has no pipeline option (use --modes default)")
    t0 = time.perf_counter()
    r = predict.run(cfg, **kw)
    wall = time.perf_counter() - t0
    return {"mode": mode, "rows": r["rows"], "faces": r["faces"], "wall_s": wall, "fps": r["rows"] / wall,
            "timings": r.get("timings")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, help="a task bundle (train-task run folder or best.pt); default: build one")
    ap.add_argument("--dr-size", type=int, default=64, choices=(0, 64, 112),
                    help="built bundle: DR nets pretrained:T5/T9 at 64 px, or trained briefly at 112 px; 0: "
                         "every stage (preprocess, train-dr, gen-dr, train-task) at its defaults")
    ap.add_argument("--dr-base", type=int, default=16,
                    help="built bundle: UNet width of the DR nets (64 px: 16 = pretrained:T5/T9, 8 = "
                    "pretrained:T5-slim/T9-slim; otherwise trained briefly at --dr-size)")
    ap.add_argument("--faces", type=Path, default=FACES)
    ap.add_argument("--clip", type=Path, help="video to predict on (default: the manifest clip closest to 1000 frames)")
    ap.add_argument("--modes", default="sequential,pipelined")
    ap.add_argument("--batch-size", type=int, default=32, help="predict --batch-size (rows per network batch)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per mode and of OpenFace; the fastest is reported")
    ap.add_argument("--openface", help="OpenFace FeatureExtraction binary (else $OPENFACE_BIN, PATH, $TMPDIR/peer)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "drkit_predict_bench")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--csv-dir", type=Path, help="keep each mode's predictions as DIR/<mode>.csv (e.g. to compare "
                    "with another drkit version's)")
    a = ap.parse_args()

    import torch

    import drkit
    from drkit import log
    log.set_verbosity(0)

    clip, n_manifest = (a.clip, None) if a.clip else pick_clip(a.faces)
    bundle = a.bundle or build_bundle(a.work, a.dr_size, a.faces, a.dr_base)
    print(f"drkit {getattr(drkit, '__version__', '?')} from {Path(drkit.__file__).parent}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"clip: {clip} ({n_manifest or '?'} frames)")
    print(f"bundle: {bundle}\n  {bundle_summary(bundle)}")

    res = []
    with tempfile.TemporaryDirectory() as tmp:
        ref_csv = None
        for mode in a.modes.split(","):
            best = None
            for k in range(a.repeat):
                out = Path(tmp) / f"{mode}_{k}.csv"
                r = run_drkit(bundle, clip, mode, out, a.batch_size)
                if ref_csv is None:
                    ref_csv = out
                r["csv_identical"] = out.read_text() == ref_csv.read_text()
                r["csv_max_diff"] = csv_max_diff(out, ref_csv)
                best = r if best is None or r["wall_s"] < best["wall_s"] else best
                if a.csv_dir and k == 0:
                    a.csv_dir.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(out, a.csv_dir / f"{mode}.csv")
            res.append(best)

    of_exe = find_openface(a.openface)
    of = None
    for _ in range(a.repeat if of_exe else 0):   # best of --repeat, as for drkit's modes
        r = run_openface(of_exe, clip)
        of = r if of is None or "fps" not in of or ("fps" in r and r["fps"] > of["fps"]) else of

    print(f"\n{'mode':<14} {'rows':>5} {'faces':>5} {'wall s':>7} {'fps':>6} {'loop fps':>8} "
          f"{'setup':>6} {'decode':>7} {'track':>6} {'DR nets':>7} {'task':>6}  same CSV")
    for r in res:
        t = r["timings"] or {}
        loop_fps = r["rows"] / t["loop"] if t else float("nan")
        cols = [t.get(k, float("nan")) for k in ("setup", "decode", "track", "dr", "task")]
        print(f"{r['mode']:<14} {r['rows']:>5} {r['faces']:>5} {r['wall_s']:>7.2f} {r['fps']:>6.1f} {loop_fps:>8.1f} "
              + " ".join(f"{c:>{w}.2f}" for c, w in zip(cols, (6, 7, 6, 7, 6)))
              + f"  {'yes' if r['csv_identical'] else 'max diff %.1e' % r['csv_max_diff']}")
        if t:
            busy = sum(t[k] for k in ("decode", "track", "dr", "task"))
            r["split_pct"] = {k: round(100 * t[k] / busy, 1) for k in ("decode", "track", "dr", "task")}
            print(f"{'':<14} split of busy time: " + ", ".join(f"{k} {v}%" for k, v in r["split_pct"].items())
                  + f"; loop {t['loop']:.2f} s {'(decode + track in a thread beside the nets)' if t.get('pipeline') else ''}")
    best = max(res, key=lambda r: r["fps"])
    if of and "fps" in of:
        print(f"\nOpenFace 2.2 FeatureExtraction ({of_exe}), same clip, this run: {of['frames']} frames in "
              f"{of['wall_s']:.2f} s = {of['fps']:.1f} frames/s")
        for r in res:
            print(f"  drkit {r['mode']}: {r['fps'] / of['fps']:.2f}x OpenFace (goal >= 1.5x)")
    else:
        print("\nOpenFace FeatureExtraction: " + (of["error"] if of else
              "not installed (--openface PATH or OPENFACE_BIN; built by ../shared/tools/openface/build.sh)")
              + "; drkit measured alone.")
        print(f"Recorded reference, NOT measured in this run: OpenFace 2.2 at {OPENFACE_REFERENCE_FPS:.0f} frames/s on "
              "the 1008-frame clip on this 2-core machine (issue 11); goal >= 1.5x = "
              f"{1.5 * OPENFACE_REFERENCE_FPS:.0f} frames/s.")
        for r in res:
            print(f"  drkit {r['mode']}: {r['fps']:.1f} frames/s = {r['fps'] / OPENFACE_REFERENCE_FPS:.2f}x the "
                  "recorded OpenFace rate")
    if a.json:
        a.json.write_text(json.dumps({"clip": str(clip), "bundle": str(bundle), "summary": bundle_summary(bundle),
                                      "drkit": res, "openface": of, "best_mode": best["mode"],
                                      "openface_reference_fps": OPENFACE_REFERENCE_FPS}, indent=1))


if __name__ == "__main__":
    main()
