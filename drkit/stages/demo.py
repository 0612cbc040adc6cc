"""`drkit demo`: the whole pipeline on synthetic faces, on a fresh machine, in minutes.

synth -> preprocess (train / test people) -> train-dr (two T) -> rank-eval (with the identity
baseline) -> gen-dr (MDR) -> train-task (SI vs MDR) -> eval-task on the held-out person ->
predict on a held-out still frame, plus plots. Every step is one `drkit` command line, printed
and then run through the same CLI in this process, so what the demo prints is exactly what it
runs: copy any printed line into a shell and it does the same.
"""

from __future__ import annotations

import csv
import json
import shlex
import time
from pathlib import Path

import cv2
import numpy as np

from .. import log
from ..configs import DemoConfig
from ..fsutil import write_json_atomic


def drkit(*args) -> None:
    """Print one `drkit` command line and run it (drkit.cli.run_argv)."""
    from ..cli import run_argv
    argv = [str(a) for a in args]
    if log.VERBOSITY >= 1:   # one line, never wrapped, so it can be copied into a shell
        log.console.print("$ drkit " + shlex.join(argv), style="bold cyan", markup=False, soft_wrap=True)
    run_argv(argv)


def plot_curves(runs: dict[str, Path], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.2))
    for ax, (name, run) in zip(np.atleast_1d(axes), runs.items()):
        recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        for k in recs[-1]:
            if k.startswith(("train_acc", "val_acc", "val_icc", "val_pcc")) and "/" not in k:
                ax.plot([r["epoch"] for r in recs], [r.get(k) for r in recs], marker=".", label=k)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(cfg: DemoConfig) -> dict:
    t0 = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    q, seed = cfg.quick, cfg.seed
    n, secs, ids = (6, 4.0, 3) if q else (12, 8.0, 4)
    dr_budget, task_budget = (12, 20) if q else (90, 75)
    size = 80
    Ts = (3, 5)
    aus = "AU06,AU10,AU12,AU14,AU17"

    drkit("synth", "-o", out / "synth", "--n", n, "--seconds", secs, "--identities", ids, "--seed", seed)
    labels = out / "synth" / "labels.csv"
    with open(labels) as f:
        label_rows = list(csv.DictReader(f))
    person = {r["video"]: r["person"] for r in label_rows}
    people = sorted(set(person.values()))
    test_people = {people[-1]}
    vids = {k: sorted(str(out / "synth" / "videos" / v) for v, p in person.items() if (p in test_people) == (k == "test"))
            for k in ("train", "test")}
    stores = {k: out / f"{k}.zarr" for k in ("train", "test")}
    for k in ("train", "test"):
        drkit("preprocess", *vids[k], "-o", stores[k], "--size", size)

    dr_runs = {T: out / f"dr_T{T}" for T in Ts}
    for T in Ts:
        # the held-out person is only ever used for the reported numbers, never to pick a model
        drkit("train-dr", stores["train"], "-o", dr_runs[T], "--T", T, "--stride", 2, "--size", size,
              "--time-budget", dr_budget, "--epochs", 50, "--seed", seed, "--overwrite")
    grid = out / "rank_grid.png"
    drkit("rank-eval", dr_runs[Ts[-1]], stores["test"], "--T", ",".join(map(str, Ts)), "--stride", "1,2",
          "--baselines", "identity", "--json", out / "rank_eval.json", "--plot", grid)
    recs = json.loads((out / "rank_eval.json").read_text())
    own = {}
    for T in Ts:   # each DR on its own T and stride
        js = out / f"rank_eval_T{T}.json"
        drkit("rank-eval", dr_runs[T], stores["test"], "--baselines", "identity", "--json", js)
        own[T] = {x["method"]: x["accuracy"] for x in json.loads(js.read_text())}

    mdr = {k: out / f"{k}_mdr.zarr" for k in ("train", "test")}
    for k in ("train", "test"):
        drkit("gen-dr", stores[k], "-o", mdr[k], *sum((["--dr", dr_runs[T]] for T in Ts), []), "--overwrite")
    task_runs, task_res = {}, {}
    for kind in ("si", "mdr"):
        task_runs[kind] = out / f"au_{kind}"
        # validation (epoch choice) on one of the training people; scores on the held-out person
        drkit("train-task", mdr["train"], "--labels", labels, "--task", "au", "--input", kind,
              "--targets", aus, "--val-share", 0.34, "-o", task_runs[kind], "--time-budget", task_budget,
              "--epochs", 30, "--seed", seed, "--overwrite")
        js = out / f"eval_au_{kind}.json"
        drkit("eval-task", task_runs[kind], mdr["test"], "--labels", labels, "--json", js)
        task_res[kind] = json.loads(js.read_text())

    # a held-out still frame: the apex of the strongest smile in a test video
    test_vid = Path(vids["test"][0])
    rows = [r for r in label_rows if r["video"] == test_vid.name]
    k = int(max(rows, key=lambda r: float(r["AU12"]))["frame"])
    cap = cv2.VideoCapture(str(test_vid))
    cap.set(cv2.CAP_PROP_POS_FRAMES, k)
    ok, frame = cap.read()
    cap.release()
    still = out / "still.png"
    cv2.imwrite(str(still), frame)
    drkit("predict", task_runs["mdr"], still, "-o", out / "predict.csv", "--save-dr", out / "dr_pictures")
    with open(out / "predict.csv") as f:
        pred = next(csv.DictReader(f))
    truth = next(r for r in rows if int(r["frame"]) == k)
    plot_curves({f"train-dr T={T}": dr_runs[T] for T in Ts} | {f"train-task {k2}": v for k2, v in task_runs.items()},
                out / "training_curves.png")
    summary = {
        "seconds": round(time.time() - t0, 1),
        "rank_accuracy": {f"T{T}S2": {"dr": round(100 * own[T]["dr"], 1), "identity": round(100 * own[T]["identity"], 1)}
                          for T in Ts},
        "au_icc": {kind: round(task_res[kind]["icc"], 3) for kind in task_res},
        "au_mse": {kind: round(task_res[kind]["mse"], 3) for kind in task_res},
        "predict": {"image": str(still), "face_found": pred["face_found"],
                    **{a: (pred[a], truth[a]) for a in ("AU06", "AU12")}},
        "files": {"rank_grid": str(grid), "training_curves": str(out / "training_curves.png"),
                  "dr_picture": str(out / "dr_pictures" / "still.png"), "rank_eval_json": str(out / "rank_eval.json")},
        "grid": [{k2: r[k2] for k2 in ("method", "T", "stride", "accuracy", "pairs")} for r in recs],
    }
    write_json_atomic(out / "summary.json", summary)
    return summary
