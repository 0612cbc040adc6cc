"""The downstream protocol: do inferred dynamics (DR channels) help a task network when labels
are scarce? Task networks are trained on k labelled people (k = 1, 2, 4, 8, all), with the best
epoch chosen on validation people who are never trained on, and scored on test people that
neither the task network nor the DR networks ever saw; every (input, k) over several seeds.

    python examples/downstream/protocol.py run --train TRAIN_DR_STORE --test TEST_DR_STORE \\
        --labels LABELS.csv --task au --targets AU06,AU10,AU12,AU14,AU17 -o OUT
    python examples/downstream/protocol.py report OUT [OUT2 ...] > RESULTS_PART.md

The labelled people of seed s are the first k of one seeded permutation of the training pool
(nested: the k=2 people include the k=1 person); the validation people are fixed for all runs.
Each run stops after --max-steps optimisation steps or when validation has not improved for
--patience epochs and --patience-steps steps, whichever is first; no time limit by default, so
a result depends only on the data and the seed, not on the machine's load.
Results go to OUT/results.jsonl, one line per run (a rerun skips the runs already there, except
those that stopped at a smaller --max-steps than the rerun's: they are redone and their new line
replaces the old one), learning curves to OUT/runs/*/metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from drkit.checkpoint import load_checkpoint
from drkit.configs import TrainTaskConfig
from drkit.contracts import TASK_MONITOR
from drkit.labels import read_labels
from drkit.stages import train_task
from drkit.store import open_store
from drkit.tasks import evaluate_bundle, people_in


def split_people(labels, train_store, n_val: int, seed: int = 1000) -> tuple[list[str], list[str]]:
    """(validation people, training pool): the validation people are a fixed random choice."""
    people = people_in(labels, [open_store(train_store, "dr")])
    rng = np.random.default_rng(seed)
    val = sorted(rng.permutation(people)[:n_val].tolist())
    return val, [p for p in people if p not in val]


def labelled_people(pool: list[str], k: int | None, seed: int) -> list[str]:
    order = np.random.default_rng(seed).permutation(sorted(pool)).tolist()
    return order if k is None else order[:k]


def run(a) -> None:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    labels = read_labels(a.labels, a.targets.split(",") if a.targets else None)
    val, pool = split_people(labels, a.train, a.val_people)
    ks = [None if k == "all" else int(k) for k in a.ks.split(",")]
    res_path = out / "results.jsonl"
    done = latest(res_path)
    (out / "protocol.json").write_text(json.dumps({**vars(a), "val_people": val, "pool": pool}, indent=1))
    for seed in map(int, a.seeds.split(",")):
        for k in ks:
            people = labelled_people(pool, k, seed)
            kk = len(people) if k is None else k
            for kind in a.inputs.split(","):
                key = (kind, "all" if k is None else k, seed, a.arch)
                name = f"{a.arch}_{kind}_k{key[1]}_s{seed}"
                # patience in epochs, but never fewer than --patience-steps optimisation steps: with one
                # labelled person an epoch is a dozen steps and the validation score is flat for a while
                n_lab = sum(len(labels.frames[v]) for v in labels.frames if labels.person.get(v, v) in people)
                per_epoch = max(1, math.ceil(n_lab / 32))
                patience = max(a.patience, math.ceil(a.patience_steps / per_epoch))
                max_epochs = max(a.patience + 1, math.ceil(a.max_steps / per_epoch))
                # done, unless it ran out of steps and this call allows more (constant learning rate, so a
                # run that early-stopped under a smaller cap is the same run under a larger one)
                if key in done and not (hit_cap(done[key]) and max_epochs > done[key]["epochs"]):
                    continue
                n_videos = sum(labels.person.get(v, v) in people for v in labels.frames)
                cfg = TrainTaskConfig(
                    input=[Path(a.train)], labels=Path(a.labels), out=out / "runs" / name, task=a.task,
                    input_kind=kind, arch=a.arch, targets=a.targets.split(",") if a.targets else [],
                    train_people=people, val_people=val, epochs=max_epochs, time_budget=a.budget,
                    val_frames=a.val_frames,
                    patience=patience, seed=seed, overwrite=True, lr=a.lr)
                r = train_task.run(cfg)
                test = evaluate_bundle(load_checkpoint(cfg.out / "best.pt", "task"), [a.test], a.labels)
                curve = [json.loads(x) for x in (cfg.out / "metrics.jsonl").read_text().splitlines()]
                mon = f"val_{TASK_MONITOR[a.task]}"
                rec = {"input": kind, "k": key[1], "n_people": kk, "seed": seed, "arch": a.arch, "patience": patience,
                       "labelled_videos": n_videos, "val": r["val"], "test": test,
                       "epochs": len(curve), "max_epochs": max_epochs, "best_epoch": int(np.nanargmax([c.get(mon, np.nan) for c in curve])) + 1,
                       "seconds": curve[-1]["seconds"] if curve else None,
                       "curve": [[c["epoch"], c["step"], c.get(mon)] for c in curve]}
                with open(res_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(f"{name}: val {r['val'][TASK_MONITOR[a.task]]:.3f} test {test[TASK_MONITOR[a.task]]:.3f} "
                      f"({rec['epochs']} epochs, best {rec['best_epoch']})", flush=True)


def latest(res_path: Path) -> dict:
    """The last record of each (input, k, seed, arch) in a results file: a rerun with a larger
    step cap appends a record that replaces the capped one."""
    if not res_path.exists():
        return {}
    recs = map(json.loads, res_path.read_text().splitlines())
    return {(r["input"], r["k"], r["seed"], r["arch"]): r for r in recs}


def hit_cap(rec: dict) -> bool:
    """True if the run stopped at its step cap, not because validation stopped improving."""
    return rec["epochs"] - rec["best_epoch"] < rec["patience"]


def plot(d: Path, recs: list[dict], metric: str) -> Path:
    """Test score against the number of labelled people (mean and sd over seeds), one line per
    input, and the validation curves of the runs on all people: ``d/learning_curves.png``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9, 3.4))
    for i, kind in enumerate(dict.fromkeys(r["input"] for r in recs)):
        ks = sorted({r["n_people"] for r in recs if r["input"] == kind})
        m = [np.mean([r["test"][metric] for r in recs if r["input"] == kind and r["n_people"] == k]) for k in ks]
        sd = [np.std([r["test"][metric] for r in recs if r["input"] == kind and r["n_people"] == k]) for k in ks]
        ax.errorbar(ks, m, yerr=sd, marker="o", capsize=3, label=kind.upper())
        for r in recs:
            if r["input"] == kind and r["k"] == "all":
                bx.plot([c[1] for c in r["curve"]], [c[2] for c in r["curve"]], color=f"C{i}", alpha=0.7,
                        label=kind.upper() if r["seed"] == min(x["seed"] for x in recs) else None)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("labelled people (k)")
    ax.set_ylabel(f"test {metric.upper()} (unseen people)")
    ax.legend()
    ax.grid(alpha=0.3)
    bx.set_xlabel("optimisation step (k = all)")
    bx.set_ylabel(f"validation {metric.upper()}")
    bx.legend()
    bx.grid(alpha=0.3)
    fig.suptitle(d.name, fontsize=9)
    fig.tight_layout()
    fig.savefig(d / "learning_curves.png", dpi=110)
    plt.close(fig)
    return d / "learning_curves.png"


def report(a) -> None:
    for d in a.outs:
        d = Path(d)
        recs = list(latest(d / "results.jsonl").values())
        proto = json.loads((d / "protocol.json").read_text())
        task = proto["task"]
        metrics = ["icc", "mse"] if task == "au" else ["pcc", "ccc", "mse"]
        inputs = list(dict.fromkeys(r["input"] for r in recs))
        ks = sorted({r["k"] for r in recs}, key=lambda k: math.inf if k == "all" else k)
        archs = list(dict.fromkeys(r["arch"] for r in recs))
        print(f"\n### {d.name}: {task}, {', '.join(archs)}; test people never seen; mean ± sd over seeds\n")
        print(f"validation people: {', '.join(proto['val_people'])}; training pool: {len(proto['pool'])} people; "
              f"at most {proto['max_steps']} steps, patience {proto['patience']} epochs / {proto['patience_steps']} "
              f"steps; runs stopped by the step cap, not by patience: {sum(map(hit_cap, recs))}/{len(recs)}\n")
        for arch in archs:
            head = "| k (people) | " + " | ".join(f"{m.upper()} {i.upper()}" for m in metrics for i in inputs)
            head += " | " + " | ".join(f"{i.upper()} - SI ({metrics[0].upper()})" for i in inputs if i != "si") + " |"
            print(head)
            print("|" + "---|" * (1 + len(metrics) * len(inputs) + len([i for i in inputs if i != "si"])))
            for k in ks:
                cells = []
                by = {i: [r for r in recs if r["k"] == k and r["input"] == i and r["arch"] == arch] for i in inputs}
                for m in metrics:
                    for i in inputs:
                        v = [r["test"][m] for r in by[i]]
                        cells.append(f"{np.mean(v):.3f} ± {np.std(v):.3f} ({len(v)})" if v else "-")
                for i in inputs:
                    if i == "si":
                        continue
                    si = {r["seed"]: r["test"][metrics[0]] for r in by["si"]}
                    dif = [r["test"][metrics[0]] - si[r["seed"]] for r in by[i] if r["seed"] in si]
                    wins = sum(x > 0 for x in dif)
                    cells.append(f"{np.mean(dif):+.3f} ± {np.std(dif):.3f} ({wins}/{len(dif)} seeds)" if dif else "-")
                n = next((r["n_people"] for r in recs if r["k"] == k), k)
                print(f"| {k} ({n}) | " + " | ".join(cells) + " |")
            print()
        print(f"![learning curves]({plot(d, recs, metrics[0]).name})  (in {d})\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--train", required=True, help="DR store of the labelled + validation people")
    r.add_argument("--test", required=True, help="DR store of the test people")
    r.add_argument("--labels", required=True)
    r.add_argument("--task", default="au", choices=["au", "affect"])
    r.add_argument("--targets", default="")
    r.add_argument("--inputs", default="si,mdr")
    r.add_argument("--arch", default="small")
    r.add_argument("--ks", default="1,2,4,8,all")
    r.add_argument("--seeds", default="0,1,2")
    r.add_argument("--val-people", type=int, default=5)
    r.add_argument("--budget", type=float, default=None, help="seconds per run at most (default: none, so "
                   "that a run's result does not depend on the machine's load)")
    r.add_argument("--max-steps", type=int, default=12000, help="optimisation steps per run at most; "
                   "rerunning with a larger value redoes only the runs that stopped at the smaller cap")
    r.add_argument("--val-frames", type=int, default=300, help="validation frames (spread over the people)")
    r.add_argument("--patience", type=int, default=5, help="epochs without a better validation score")
    r.add_argument("--patience-steps", type=int, default=300, help="... and at least this many steps")
    r.add_argument("--lr", type=float, default=2e-3)
    r.add_argument("-o", "--out", required=True)
    p = sub.add_parser("report")
    p.add_argument("outs", nargs="+")
    a = ap.parse_args()
    run(a) if a.cmd == "run" else report(a)
