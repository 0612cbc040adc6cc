"""`drkit demo`: what drkit is for, on a fresh machine, in minutes: a real face analysed with the
shipped models, then the whole pipeline on synthetic faces whose labels are exact.

1. **A real face.** The short clip that ships with drkit (drkit/data/, a man talking and pulling
   faces; Apache-2.0, from PaddleGAN: drkit/data/NOTICE.md), analysed with ``pretrained:au``:
   per-frame AU intensities (CSV), one plot per AU over time, an annotated video (frame,
   landmarks, DR maps, AU bars) and DR pictures of its most expressive frames.
2. **Synthetic faces, SI against MDR.** synth -> preprocess (train / test people) -> the shipped
   DR model ``pretrained:T5`` (or, with ``--train-dr``, DRs trained here) -> rank-eval (with the
   identity baseline) -> gen-dr (MDR) -> train-task (SI and MDR, several seeds, until validation
   stops improving) -> eval-task on the held-out people -> predict on a held-out video (SI and
   MDR against the true intensities) and on a still at an AU apex.

Every step is one `drkit` command line, printed and then run through the same CLI in this
process (the runner is handed in by drkit.cli, which this module does not import), so what the
demo prints is exactly what it runs: copy any printed line into a shell and it does the same.
"""

from __future__ import annotations

import csv
import json
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .. import log
from ..configs import DemoConfig
from ..contracts import Result
from ..fsutil import write_json_atomic

_RUN_ARGV = None   # drkit.cli.run_argv, handed in by run()


def drkit(*args) -> None:
    """Print one `drkit` command line and run it (through the CLI's run_argv)."""
    argv = [str(a) for a in args]
    if log.VERBOSITY >= 1:   # one line, never wrapped, so it can be copied into a shell
        log.console.print("$ drkit " + shlex.join(argv), style="bold cyan", markup=False, soft_wrap=True)
    _RUN_ARGV(argv)


def plot_curves(runs: dict[str, list[Path]], metric: str, path: Path) -> None:
    """Validation ``metric`` per epoch of every run, SI and MDR on one axis (one colour per input,
    one line per seed), each run's best epoch marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for (kind, dirs), colour in zip(runs.items(), ("tab:blue", "tab:red", "tab:green")):
        for i, run in enumerate(dirs):
            recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            ep, val = [r["epoch"] for r in recs], [r.get(f"val_{metric}") for r in recs]
            ax.plot(ep, val, color=colour, lw=1, alpha=0.85, label=f"{kind.upper()}" if i == 0 else None)
            best = max(range(len(val)), key=lambda k: -1e9 if val[k] is None else val[k])
            ax.plot(ep[best], val[best], "o", color=colour, ms=5)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metric.upper()}(3,1)" if metric == "icc" else f"validation {metric}")
    ax.set_title(f"train-task, validation people, {len(next(iter(runs.values())))} seeds per input (dot: best epoch, "
                 "the one kept)", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_video(preds: dict[str, Path], label_rows: list[dict], video: str, aus: list[str], path: Path) -> None:
    """True intensity against each model's prediction (from `drkit predict` on the video), one
    labelled panel per AU."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    truth = {int(r["frame"]): r for r in label_rows if r["video"] == video}
    fig, axes = plt.subplots(len(aus), 1, figsize=(7, 1.35 * len(aus) + 0.8), sharex=True)
    for ax, au in zip(np.atleast_1d(axes), aus):
        ax.plot(sorted(truth), [float(truth[k][au]) for k in sorted(truth)], color="k", lw=1.4, label="true")
        for (name, csv_path), colour in zip(preds.items(), ("tab:blue", "tab:red")):
            with open(csv_path) as f:
                rows = [r for r in csv.DictReader(f) if r["face_found"] == "1"]
            ax.plot([int(r["frame"]) for r in rows], [float(r[au]) for r in rows], color=colour, lw=1, label=name)
        ax.set_ylabel(f"{au}\nintensity", fontsize=8)
        ax.set_ylim(-0.3, 5.3)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=7, ncol=3, loc="upper right")
    np.atleast_1d(axes)[-1].set_xlabel(f"frame of {video} (a held-out person)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def verdict(si: list[float], mdr: list[float]) -> str:
    """"mdr" or "si" when one input beats the other by more than the spread of their difference over
    seeds (the same seed pairs the two runs), else "tie"."""
    d = np.array(mdr) - np.array(si)
    if len(d) < 2 or abs(d.mean()) <= d.std(ddof=1):
        return "tie"
    return "mdr" if d.mean() > 0 else "si"


def real_face(out: Path) -> dict:
    """Part 1: the shipped real clip through `drkit predict pretrained:au` with every output."""
    from importlib.resources import files

    from .. import pretrained
    clip = Path(str(files("drkit") / "data" / "demo_face.mp4"))
    if "au" not in pretrained.names():
        log.warn("this install ships no pretrained:au model: the real-face part is skipped")
        return {}
    real = out / "real"
    drkit("predict", "pretrained:au", clip, "-o", real / "au.csv", "--plot", real / "plots",
          "--video-out", real / "video")
    with open(real / "au.csv") as f:
        rows = list(csv.DictReader(f))
    aus = [k for k in rows[0] if k.startswith("AU")]
    found = [r for r in rows if r["face_found"] == "1"]
    peaks = {a: max(found, key=lambda r: float(r[a])) for a in aus}
    top = sorted(aus, key=lambda a: -float(peaks[a][a]))[:3]   # DR pictures of the most intense moments
    frames = sorted({int(peaks[a]["frame"]) for a in top})
    drkit("predict", "pretrained:au", clip, "-o", real / "au_openface.csv", "--format", "openface",
          "--save-dr", real / "dr_pictures", "--dr-frames", ",".join(map(str, frames)))
    return {"clip": str(clip), "frames": len(rows), "faces": len(found),
            "au": {a: {"mean": round(float(np.mean([float(r[a]) for r in found])), 2),
                       "max": round(float(peaks[a][a]), 2), "frame": int(peaks[a]["frame"]),
                       "time_s": round(float(peaks[a]["timestamp"]), 2)} for a in aus},
            "files": {"csv": str(real / "au.csv"), "openface_csv": str(real / "au_openface.csv"),
                      "plot": str(real / "plots" / "demo_face.png"), "video": str(real / "video" / "demo_face.mp4"),
                      "dr_pictures": str(real / "dr_pictures")}}


def _mean_sd(v: list[float]) -> dict:
    return {"mean": round(float(np.mean(v)), 3), "sd": round(float(np.std(v)), 3), "runs": [round(x, 3) for x in v]}


@dataclass
class DemoSummary(Result):
    """What the demo found (summary.json): the real face's AUs, and the synthetic part's held-out
    ranking accuracy, SI and MDR ICC / MSE over seeds, the verdict, the showcase still and files."""
    seconds: float
    dr: str
    rank_accuracy: dict
    test_people: list
    au_icc: dict
    au_mse: dict
    au_icc_per_au: dict
    better_input: str
    showcase_input: str
    real_face: dict
    showcase: dict
    files: dict


def _best_seed(out: Path, kind: str, seeds: list[int]) -> int:
    """The seed whose run scored best on its validation people (no test peeking)."""
    return max(seeds, key=lambda s: json.loads((out / f"au_{kind}_s{s}" / "val_metrics.json").read_text())["icc"])


def _predict_video(out: Path, test_videos: list[str], label_rows: list[dict], aus: list[str],
                   seeds: list[int]) -> str:
    """The held-out video with the most facial action, predicted frame by frame by each input's
    best model, SI and MDR against the truth in predict_video.png; returns its name."""
    names = [Path(v).name for v in test_videos]
    activity = {v: sum(float(r[a]) for r in label_rows if r["video"] == v for a in aus) for v in names}
    video = max(activity, key=activity.get)
    preds = {}
    for kind in ("si", "mdr"):
        s_best = _best_seed(out, kind, seeds)
        drkit("predict", out / f"au_{kind}_s{s_best}", out / "synth" / "videos" / video, "-o",
              out / f"predict_video_{kind}.csv")
        preds[f"{kind.upper()} (seed {s_best})"] = out / f"predict_video_{kind}.csv"
    plot_video(preds, label_rows, video, aus, out / "predict_video.png")
    return video


def _showcase_still(out: Path, model: Path, video: str, label_rows: list[dict], aus: list[str]):
    """A still at the video's apex (its frame of most action) through ``model``: every AU
    predicted beside its true value, and the DR pictures. Returns frame, still, CSV row, AUs."""
    rows = [r for r in label_rows if r["video"] == video]
    apex = max(rows, key=lambda r: sum(float(r[a]) for a in aus))
    k = int(apex["frame"])
    cap = cv2.VideoCapture(str(out / "synth" / "videos" / video))
    cap.set(cv2.CAP_PROP_POS_FRAMES, k)
    ok, frame = cap.read()
    cap.release()
    still = out / "still.png"
    cv2.imwrite(str(still), frame)
    drkit("predict", model, still, "-o", out / "predict.csv", "--save-dr", out / "dr_pictures")
    with open(out / "predict.csv") as f:
        pred = next(csv.DictReader(f))
    return k, still, pred, {a: [round(float(pred[a]), 2) if pred[a] else None, float(apex[a])] for a in aus}


def _synthetic_people(out: Path, n: int, secs: float, ids: int, n_test: int, seed: int, size: int):
    """synth, then preprocess of the training and the held-out people's videos into one store
    each. Returns the label CSV, its rows, the test people, videos and stores per split."""
    drkit("synth", "-o", out / "synth", "--n", n, "--seconds", secs, "--identities", ids, "--seed", seed)
    labels = out / "synth" / "labels.csv"
    with open(labels) as f:
        label_rows = list(csv.DictReader(f))
    person = {r["video"]: r["person"] for r in label_rows}
    people = sorted(set(person.values()))
    test_people = set(people[-n_test:])
    vids = {k: sorted(str(out / "synth" / "videos" / v) for v, p in person.items() if (p in test_people) == (k == "test"))
            for k in ("train", "test")}
    stores = {k: out / f"{k}.zarr" for k in ("train", "test")}
    for k in ("train", "test"):
        drkit("preprocess", *vids[k], "-o", stores[k], "--crop-size", size)
    return labels, label_rows, test_people, vids, stores


def run(cfg: DemoConfig, run_argv) -> DemoSummary:
    """``run_argv(argv)``: runs one drkit command line (drkit.cli.run_argv)."""
    global _RUN_ARGV
    _RUN_ARGV = run_argv
    t0 = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    real = real_face(out)
    q, seed = cfg.quick, cfg.seed
    # many short videos of many people: a task network needs several identities to generalise
    # to a new one (2 training identities: held-out ICC ~0.1; 6: ~0.6)
    n, secs, ids, n_test = (16, 3.0, 8, 1) if q else (30, 5.0, 10, 2)
    seeds = [seed + i for i in range(2 if q else 3)]
    # ~500 (quick) / ~1500 optimisation steps per task network, stopped earlier when validation
    # stops improving: counted in epochs, not seconds, so the demo gives the same numbers on any
    # machine whatever its load
    task_epochs = 22
    size = 112
    aus = ["AU06", "AU10", "AU12", "AU14", "AU17"]

    labels, label_rows, test_people, vids, stores = _synthetic_people(out, n, secs, ids, n_test, seed, size)

    if cfg.train_dr:   # DRs trained here, on the training people's videos only
        dr = out / "dr_T5"
        drkit("train-dr", stores["train"], "-o", dr, "--T", 5, "--stride", 2, "--net-size", 64,
              "--time-budget", 15 if q else 120, "--epochs", 50, "--seed", seed, "--overwrite")
    else:              # the DR model that ships with drkit (trained on real faces)
        dr = "pretrained:T5"
    drkit("rank-eval", dr, stores["test"], "--T", 5, "--stride", 2, "--baselines", "identity",
          "--json", out / "rank_eval.json")
    rank = {x["method"]: x["accuracy"] for x in json.loads((out / "rank_eval.json").read_text())}

    mdr = {k: out / f"{k}_mdr.zarr" for k in ("train", "test")}
    for k in ("train", "test"):
        # torch, whatever is installed: onnxruntime's maps differ in the last float16 bits, enough
        # to move the trained networks, and the demo's numbers should not depend on the install
        drkit("gen-dr", stores[k], "-o", mdr[k], "--dr", dr, "--overwrite", "--engine", "torch")
    res: dict[str, list[dict]] = {"si": [], "mdr": []}
    for kind in ("si", "mdr"):
        for s in seeds:
            run_dir = out / f"au_{kind}_s{s}"
            # validation (epoch choice, early stop) on a training person; scores on held-out people
            drkit("train-task", mdr["train"], "--labels", labels, "--task", "au", "--input", kind,
                  "--targets", ",".join(aus), "--val-share", 0.25, "-o", run_dir, "--epochs", task_epochs,
                  "--patience", 8, "--seed", s, "--overwrite")
            js = out / f"eval_au_{kind}_s{s}.json"
            drkit("eval-task", run_dir, mdr["test"], "--labels", labels, "--json", js)
            res[kind].append(json.loads(js.read_text()))
    icc = {k: _mean_sd([r["icc"] for r in v]) for k, v in res.items()}
    best_kind = max(icc, key=lambda k: icc[k]["mean"])
    # the showcase model: the better input's run with the best validation score (no test peeking)
    model = out / f"au_{best_kind}_s{_best_seed(out, best_kind, seeds)}"

    video = _predict_video(out, vids["test"], label_rows, aus, seeds)
    k, still, pred, showcase = _showcase_still(out, model, video, label_rows, aus)
    plot_curves({kind: [out / f"au_{kind}_s{s}" for s in seeds] for kind in ("si", "mdr")}, "icc",
                out / "training_curves.png")
    summary = {
        "seconds": round(time.time() - t0, 1),
        "dr": str(dr),
        "rank_accuracy": {"T5S2": {"dr": round(100 * rank["dr"], 1), "identity": round(100 * rank["identity"], 1)}},
        "test_people": sorted(test_people),
        "au_icc": icc,
        "au_mse": {k: _mean_sd([r["mse"] for r in v]) for k, v in res.items()},
        "au_icc_per_au": {k: {a: round(float(np.mean([r[f"icc/{a}"] for r in v])), 3) for a in aus} for k, v in res.items()},
        "better_input": verdict([r["icc"] for r in res["si"]], [r["icc"] for r in res["mdr"]]),
        "showcase_input": best_kind,
        "real_face": real,
        "showcase": {"model": str(model), "video": video, "frame": k, "image": str(still),
                     "face_found": pred["face_found"], "au": showcase,
                     "max_abs_error": round(max(abs(p - t) for p, t in showcase.values() if p is not None), 2)
                     if pred["face_found"] == "1" else None},
        "files": {**{f"real_{k}": v for k, v in real.get("files", {}).items() if k != "dr_pictures"},
                  "predict_video_plot": str(out / "predict_video.png"), "training_curves": str(out / "training_curves.png"),
                  "dr_picture": str(out / "dr_pictures" / "still.png"), "rank_eval_json": str(out / "rank_eval.json")},
    }
    write_json_atomic(out / "summary.json", summary)
    return DemoSummary(**summary)
