"""`drkit demo`: the whole pipeline on synthetic faces, on a fresh machine, in minutes.

synth -> preprocess (train / test people) -> train-dr (two T) -> rank-eval (with the identity
baseline) -> gen-dr (MDR) -> train-task (SI vs MDR) -> predict on a held-out still frame, plus
plots. Each stage is run through its library function with the options of the CLI command it
prints, so every step can be re-run by hand.
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


@dataclass
class DemoConfig:
    out: str = "drkit-demo"
    quick: bool = False
    seed: int = 0


def _cmd(args: list) -> None:
    log.info("[bold cyan]$ drkit " + " ".join(shlex.quote(str(a)) for a in args) + "[/bold cyan]")


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
    from . import gen_dr, predict, preprocess, rank_eval, synth, train_dr, train_task
    t0 = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    q = cfg.quick
    n, secs = (6, 4.0) if q else (12, 8.0)
    dr_budget, task_budget = (12, 20) if q else (90, 75)
    size = 80
    Ts = (3, 5)

    _cmd(["synth", "-o", out / "synth", "--n", n, "--seconds", secs, "--seed", cfg.seed])
    syn = synth.run(synth.SynthConfig(out=str(out / "synth"), n=n, seconds=secs, seed=cfg.seed,
                                      identities=3 if q else 4))
    with open(syn["labels"]) as f:
        label_rows = list(csv.DictReader(f))
    person = {r["video"]: r["person"] for r in label_rows}
    people = sorted(set(person.values()))
    test_people = {people[-1]}
    vids = {k: sorted(str(out / "synth" / "videos" / v) for v, p in person.items() if (p in test_people) == (k == "test"))
            for k in ("train", "test")}
    stores = {}
    for k in ("train", "test"):
        stores[k] = out / f"{k}.zarr"
        _cmd(["preprocess", *vids[k], "-o", stores[k], "--size", size])
        preprocess.run(preprocess.PreprocessConfig(inputs=vids[k], out=str(stores[k]), size=size))

    dr_runs = {}
    for T in Ts:
        dr_runs[T] = out / f"dr_T{T}"
        # the held-out person is only ever used for the reported numbers, never to pick a model
        _cmd(["train-dr", stores["train"], "-o", dr_runs[T], "--T", T, "--stride", 2, "--size", size,
              "--time-budget", dr_budget, "--epochs", 50, "--overwrite"])
        train_dr.run(train_dr.TrainDRConfig(stores=[str(stores["train"])], out=str(dr_runs[T]), T=T, stride=2,
                                            size=size, time_budget=dr_budget, epochs=50, overwrite=True,
                                            seed=cfg.seed))
    grid = out / "rank_grid.png"
    _cmd(["rank-eval", dr_runs[Ts[-1]], stores["test"], "--T", ",".join(map(str, Ts)), "--stride", "1,2",
          "--baselines", "identity", "--json", out / "rank_eval.json", "--plot", grid])
    recs = rank_eval.run(rank_eval.RankEvalConfig(ckpt=str(dr_runs[Ts[-1]]), stores=[str(stores["test"])],
                                                  T=list(Ts), stride=[1, 2], baselines=["identity"],
                                                  json=str(out / "rank_eval.json"), plot=str(grid)))
    own = {}
    for T in Ts:   # each DR on its own T
        r = rank_eval.run(rank_eval.RankEvalConfig(ckpt=str(dr_runs[T]), stores=[str(stores["test"])],
                                                   baselines=["identity"]))
        own[T] = {x["method"]: x["accuracy"] for x in r}

    mdr = {}
    for k in ("train", "test"):
        mdr[k] = out / f"{k}_mdr.zarr"
        _cmd(["gen-dr", stores[k], "-o", mdr[k], *sum((["--dr", dr_runs[T]] for T in Ts), [])])
        gen_dr.run(gen_dr.GenDRConfig(store=str(stores[k]), out=str(mdr[k]), dr=[str(dr_runs[T]) for T in Ts],
                                      overwrite=True))
    task_runs, task_res = {}, {}
    for kind in ("si", "mdr"):
        task_runs[kind] = out / f"au_{kind}"
        # validation (epoch choice) on one of the training people; scores on the held-out person
        _cmd(["train-task", mdr["train"], "--labels", syn["labels"], "--task", "au", "--input", kind,
              "--targets", "AU06,AU10,AU12,AU14,AU17", "--val-share", 0.34, "-o", task_runs[kind],
              "--time-budget", task_budget, "--epochs", 30, "--overwrite"])
        train_task.run(train_task.TrainTaskConfig(
            input=[str(mdr["train"])], out=str(task_runs[kind]), labels=syn["labels"], task="au",
            input_kind=kind, targets=["AU06", "AU10", "AU12", "AU14", "AU17"], val_share=0.34,
            time_budget=task_budget, epochs=30, overwrite=True, seed=cfg.seed))
        _cmd(["train-task", "--eval-only", task_runs[kind], mdr["test"], "--labels", syn["labels"]])
        task_res[kind] = train_task.run(train_task.TrainTaskConfig(
            input=[str(mdr["test"])], out=None, labels=syn["labels"], eval_only=str(task_runs[kind])))

    # a held-out still frame: the apex of the strongest smile in a test video
    test_vid = Path(vids["test"][0])
    rows = [r for r in label_rows if r["video"] == test_vid.name]
    k = int(max(rows, key=lambda r: float(r["AU12"]))["frame"])
    cap = cv2.VideoCapture(str(test_vid))
    cap.set(cv2.CAP_PROP_POS_FRAMES, k)
    ok, frame = cap.read()
    still = out / "still.png"
    cv2.imwrite(str(still), frame)
    _cmd(["predict", task_runs["mdr"], still, "-o", out / "predict.csv", "--save-dr", out / "dr_pictures"])
    predict.run(predict.PredictConfig(model=str(task_runs["mdr"]), inputs=[str(still)],
                                      out=str(out / "predict.csv"), save_dr=str(out / "dr_pictures")))
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
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
