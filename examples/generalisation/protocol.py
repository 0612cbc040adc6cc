"""Do inferred dynamics carry to new people and new cameras? The leave-one-source-out protocol
(issue 21) for DR ranking and for AU intensity, beside the in-source person-disjoint split.

    python examples/generalisation/protocol.py folds FACES -o WORK/folds.json
    python examples/generalisation/protocol.py run WORK --persons STORES_DIR --labels LABELS.csv \\
        --folds all --seeds 0,1,2
    python examples/generalisation/protocol.py report WORK > RESULTS_PART.md

Data: one face store per person (``STORES_DIR/<person>.zarr``, `drkit preprocess --crop-size 112` of
that person's clips of ../shared/data/faces), OpenFace 2.2's AU intensities as labels
(../shared/tools/openface/openface_labels.py).

Folds (``folds``): the six sources (repositories) with >= 6 people, one at a time, and the ten
small sources together as a seventh fold; each fold's test people all come from sources no
network of that fold saw. ``insource`` is the person-disjoint split across all sources (a quarter
of the people of every source with >= 3 people held out, seed 0) that the in-source figures use.

Per fold and seed (``run``):
1. ranking: a DR network trained on the fold's training people (``--dr-args``: by default the
   multi-scale network, one head each for T3S2, T5S2, T9S4, 64 px, width 8, 3 epochs), scored by
   `drkit rank-eval` on the test people at each head's window, beside the identity baseline and
   the test-time RankSVM (baselines once per fold: they do not depend on the seed);
2. AU intensity: `drkit gen-dr` with that network (image + every head), then `drkit train-task`
   with SI (the image) and MDR (image + DRs) on the training people (8 of them, two per large
   source, held out for validation), `drkit eval-task` on the test people.
Every step calls the stage's library function with the settings the printed command line would
give, and skips work whose result is already in WORK (a rerun resumes). Results: one JSON line per
(fold, seed, what) in WORK/results.jsonl. Disk: a (fold, seed)'s MDR stores take ~3.6 GB on the
shared clips (7 folds x 3 seeds: ~75 GB); ``--drop-mdr`` deletes them once that pair's results are
recorded.

``report`` prints the tables and each input minus SI (and each per-video normalised input minus
``si_vnorm``, its control), paired by fold and seed, over the pairs and as the mean over folds
(each fold's seeds averaged first). A lever (one changed setting, its own WORK_LEVER with the same
folds.json, ``run ... --no-task --no-baselines --dr-args "... LEVER"``) is read against the recipe
with ``report WORK_LEVER --baselines-from WORK --against WORK``.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import shlex
import shutil
import sys
import time
from collections import defaultdict
from functools import partial
from pathlib import Path

import numpy as np

HEADS = [(3, 2), (5, 2), (9, 4)]
DR_ARGS = "--heads T5S2,T3S2,T9S4 --net-size 64 --base 8 --epochs 3"
AUS5 = ["AU06", "AU10", "AU12", "AU14", "AU17"]
# the train-task inputs and remedies --inputs can name: the TrainTaskConfig settings of each
KINDS = {"si": {"input_kind": "si"},                                   # the still image
         "mdr": {"input_kind": "mdr"},                                 # image + every DR head
         "mdr_vnorm": {"input_kind": "mdr", "dr_norm": "video"},       # DRs minus their per-video mean
         "si_vnorm": {"input_kind": "si", "image_norm": "video"},      # image minus its per-video mean (control)
         "mdr_drop": {"input_kind": "mdr", "dr_dropout": 0.3},         # DR channels dropped in 30% of samples
         "mdr_vnorm_drop": {"input_kind": "mdr", "dr_norm": "video", "dr_dropout": 0.3},   # both: a still image's case trained
         "mdr_vnorm_all": {"input_kind": "mdr", "dr_norm": "video", "image_norm": "video"},   # image and DRs minus their video mean
         "mdr_feat": {"input_kind": "mdr", "arch": "small_drfeat"},    # DRs as 4x4-grid features, not maps
         "si_drenc": {"input_kind": "si", "arch": "dr_encoder"}}       # image, DR UNet encoder as init


# ------------------------------------------------------------------ folds

def make_folds(faces: Path, min_people: int = 6, seed: int = 0) -> dict:
    people, repo = defaultdict(list), {}
    with open(faces / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        people[r["repo"]].append(r["person"])
        repo[r["person"]] = r["repo"]
    by_repo = {k: sorted(set(v)) for k, v in people.items()}
    everyone = sorted(repo)
    big = sorted((r for r, ps in by_repo.items() if len(ps) >= min_people), key=lambda r: -len(by_repo[r]))
    folds = {r: by_repo[r] for r in big}
    folds["small_sources"] = sorted(p for r, ps in by_repo.items() if r not in big for p in ps)
    rng = random.Random(seed)
    held = []
    for r, ps in sorted(by_repo.items()):
        if len(ps) >= 3:
            ps = sorted(ps)
            rng.shuffle(ps)
            held += ps[:max(1, round(len(ps) / 4))]
    out = {"loso": {f: {"train": [p for p in everyone if p not in t], "test": t} for f, t in folds.items()},
           "insource": {"train": [p for p in everyone if p not in held], "test": sorted(held)},
           "repo_of": repo}
    return out


def val_people(train: list[str], repo: dict, per_source: int = 2, seed: int = 0) -> list[str]:
    """Two people of every training source with >= 4 people: the validation people of train-task."""
    rng = random.Random(seed)
    out = []
    for r in sorted({repo[p] for p in train}):
        ps = sorted(p for p in train if repo[p] == r)
        if len(ps) >= 4:
            rng.shuffle(ps)
            out += ps[:per_source]
    return sorted(out)


# ------------------------------------------------------------------ run

def _cmd(*args) -> None:
    print("$ drkit " + shlex.join(map(str, args)), flush=True)


def _done(path: Path) -> set:
    if not path.is_file():
        return set()
    return {(r["fold"], r["seed"], r["what"]) for r in map(json.loads, path.read_text().splitlines())}


def _record(path: Path, rec: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def _zarrs(folder: Path, people) -> list[Path]:
    return [folder / f"{p}.zarr" for p in people]


def run(a) -> None:
    from drkit.configs import (
        EvalTaskConfig,
        GenDRConfig,
        RankEvalConfig,
        TrainDRConfig,
        TrainTaskConfig,
    )
    from drkit.stages import eval_task, gen_dr, rank_eval, train_dr, train_task
    work = Path(a.work)
    folds = json.loads((work / "folds.json").read_text())
    repo = folds["repo_of"]
    persons = Path(a.persons)
    have = {p.stem for p in persons.glob("*.zarr")}
    with open(a.labels, newline="") as fh:
        labelled = {r["person"] for r in csv.DictReader(fh)}
    res = work / "results.jsonl"
    done = _done(res)
    names = [f for f in folds["loso"]] if a.folds == "all" else a.folds.split(",")
    dr_args = shlex.split(a.dr_args)
    inputs = a.inputs.split(",")
    for kind in inputs:
        if kind not in KINDS:
            raise SystemExit(f"--inputs: unknown {kind!r}; choose from {', '.join(KINDS)}")
    for fold in names:     # a fold's name becomes WORK/FOLD, which train-dr --overwrite and --drop-mdr delete in
        if fold != "insource" and fold not in folds["loso"]:
            raise SystemExit(f"--folds: {fold!r} is not a fold of {work}/folds.json ({', '.join(folds['loso'])})")
        if Path(fold).name != fold or fold in (".", ".."):
            raise SystemExit(f"{work}/folds.json: fold {fold!r} is not a plain folder name; "
                             "rebuild the file with `protocol.py folds`")
        part = folds["insource"] if fold == "insource" else folds["loso"][fold]
        train = [p for p in part["train"] if p in have]
        test = [p for p in part["test"] if p in have]
        fd = work / fold
        fd.mkdir(parents=True, exist_ok=True)
        stores = partial(_zarrs, persons)
        for T, S in HEADS:       # baselines: seed-independent
            if (fold, -1, f"baselines_T{T}S{S}") in done or a.no_baselines:
                continue
            js = fd / f"baselines_T{T}S{S}.json"
            _cmd("rank-eval", *stores(test), "--T", T, "--stride", S, "--net-size", 64, "--baselines", "identity,ranksvm", "--json", js)
            recs = rank_eval.run(RankEvalConfig(ckpt=None, stores=stores(test), T=[T], stride=[S], net_size=64,
                                                baselines=["identity", "ranksvm"], json=js))
            _record(res, {"fold": fold, "seed": -1, "what": f"baselines_T{T}S{S}", "T": T, "stride": S,
                          **{r["method"]: r["accuracy"] for r in recs}, "test_people": len(test)})
        for seed in map(int, a.seeds.split(",")):
            sd = fd / f"s{seed}"
            dr = sd / "dr"
            if not (dr / "best.pt").is_file() or not (sd / "dr.done").is_file():
                args = ["train-dr", *stores(train), "-o", dr, *dr_args, "--seed", seed, "--overwrite"]
                _cmd(*args)
                train_dr.run(_train_dr_config(TrainDRConfig, train, persons, dr, dr_args, seed))
                (sd / "dr.done").write_text(time.strftime("%c"))
            for T, S in HEADS:
                key = (fold, seed, f"rank_T{T}S{S}")
                if key in done:
                    continue
                js = sd / f"rank_T{T}S{S}.json"
                recs = rank_eval.run(RankEvalConfig(ckpt=[dr], stores=stores(test), T=[T], stride=[S], baselines=[], json=js))
                _record(res, {"fold": fold, "seed": seed, "what": f"rank_T{T}S{S}", "T": T, "stride": S,
                              "dr": recs[0]["accuracy"], "windows": recs[0]["windows"], "test_people": len(test)})
            if a.no_task:
                continue
            kinds = [k for k in inputs if (fold, seed, f"au_{k}") not in done]
            mdr = sd / "mdr"
            if not kinds:       # every input asked for is recorded: no MDR store is needed
                if a.drop_mdr and mdr.exists():
                    shutil.rmtree(mdr)
                continue
            mdr.mkdir(exist_ok=True)
            for p in train + test:    # a marker per finished store (gen-dr itself resumes a killed one)
                if p in labelled and not (mdr / f"{p}.done").is_file():
                    gen_dr.run(GenDRConfig(store=persons / f"{p}.zarr", out=mdr / f"{p}.zarr", dr=[dr]))
                    (mdr / f"{p}.done").write_text("")
            tr = [p for p in train if p in labelled]
            va = val_people(tr, repo)
            tr = [p for p in tr if p not in va]
            te = [p for p in test if p in labelled]
            for kind in kinds:
                run_dir = sd / f"au_{kind}"
                ms = partial(_zarrs, mdr)
                kw = {**_task_kwargs(a.task_args), **KINDS[kind]}
                flags = [x for k, v in KINDS[kind].items() if k != "input_kind"
                         for x in ("--" + k.replace("_", "-"), v)]
                _cmd("train-task", *ms(tr), "--val", *ms(va), "--labels", a.labels, "--input", KINDS[kind]["input_kind"],
                     *flags, "-o", run_dir, *shlex.split(a.task_args), "--seed", seed, "--overwrite")
                cfg = TrainTaskConfig(input=ms(tr), val=ms(va), labels=Path(a.labels), out=run_dir, task="au",
                                      seed=seed, overwrite=True, **kw)
                train_task.run(cfg)
                js = sd / f"eval_au_{kind}.json"
                ev = eval_task.run(EvalTaskConfig(model=run_dir, stores=ms(te), labels=Path(a.labels), json=js)).to_dict()
                _record(res, {"fold": fold, "seed": seed, "what": f"au_{kind}", **ev,
                              "icc5": float(np.mean([ev[f"icc/{x}"] for x in AUS5])), "test_people": len(te)})
            if a.drop_mdr:    # every input asked for is recorded: the pair's MDR stores are regenerable scratch
                shutil.rmtree(mdr)


def _train_dr_config(cls, train, persons, out, dr_args, seed):
    """The TrainDRConfig of the printed `drkit train-dr` line (its --dr-args)."""
    from drkit.cli import _windows
    kw = _task_kwargs(" ".join(dr_args))
    if "heads" in kw:
        kw["heads"] = _windows(kw["heads"])
    return cls(stores=[persons / f"{p}.zarr" for p in train], out=out, seed=seed, overwrite=True, **kw)


def _task_kwargs(text: str) -> dict:
    """--task-args '--epochs 30 --patience 5 --val-frames 1500' as TrainTaskConfig keywords."""
    toks, out = shlex.split(text), {}
    for k, v in zip(toks[::2], toks[1::2]):
        name = {"T": "T"}.get(k.lstrip("-"), k.lstrip("-").replace("-", "_"))
        out[name] = int(v) if re.fullmatch(r"-?\d+", v) else float(v) if re.fullmatch(r"-?[\d.e-]+", v) else v
    return out


# ------------------------------------------------------------------ report

def _results(work: Path) -> list[dict]:
    return [json.loads(x) for x in (work / "results.jsonl").read_text().splitlines()]


def _same_folds(work: Path, other: Path) -> None:
    if json.loads((work / "folds.json").read_text()) != json.loads((other / "folds.json").read_text()):
        sys.exit(f"{other}/folds.json differs from {work}/folds.json: its test windows are not these")


def report(a) -> None:
    work = Path(a.work)
    recs = _results(work)
    for other in map(Path, a.baselines_from or []):   # identity / RankSVM are seed- and network-independent
        _same_folds(work, other)
        have = {(r["fold"], r["what"]) for r in recs}
        people = {r["fold"]: r["test_people"] for r in recs if "test_people" in r}
        borrowed = [r for r in _results(other) if r["what"].startswith("baselines_") and r["fold"] in people
                    and (r["fold"], r["what"]) not in have]
        for r in borrowed:
            if r["test_people"] != people[r["fold"]]:
                sys.exit(f"{other}: fold {r['fold']} has {r['test_people']} test people, {work} {people[r['fold']]}: "
                         "the two runs had different stores (--persons)")
        recs += borrowed
    by = defaultdict(list)
    for r in recs:
        by[(r["fold"], r["what"])].append(r)
    folds = sorted({r["fold"] for r in recs if r["fold"] != "insource"})
    print("### Ranking accuracy (%), test people of sources no network saw\n")
    print("| fold | test people | " + " | ".join(f"T{T}S{S} DR / identity / RankSVM" for T, S in HEADS) + " |")
    print("|---|---|" + "---|" * len(HEADS))
    means = defaultdict(dict)   # (T, S) -> fold -> {seed: DR}
    base = defaultdict(dict)    # (T, S) -> fold -> (identity, RankSVM)
    for f in folds + (["insource"] if any(r["fold"] == "insource" for r in recs) else []):
        cells = []
        for T, S in HEADS:
            d = [r["dr"] for r in by[(f, f"rank_T{T}S{S}")]]
            b = by[(f, f"baselines_T{T}S{S}")]
            if not d and not b:
                cells.append("-")
                continue
            dr = f"{100 * np.mean(d):.1f} ± {100 * np.std(d):.1f}" if d else "-"
            bl = f"{100 * b[0]['identity']:.1f} / {100 * b[0]['ranksvm']:.1f}" if b else "- / -"
            cells.append(f"{dr} / {bl}")
            if f != "insource":
                if d:
                    means[(T, S)][f] = {r["seed"]: r["dr"] for r in by[(f, f"rank_T{T}S{S}")]}
                if b:
                    base[(T, S)][f] = (b[0]["identity"], b[0]["ranksvm"])
        n = next((r["test_people"] for T, S in HEADS for r in by[(f, f"rank_T{T}S{S}")] + by[(f, f"baselines_T{T}S{S}")]), "?")
        print(f"| {f} | {n} | " + " | ".join(cells) + " |")
    cells = []
    for T, S in HEADS:
        m, b = means[(T, S)], base[(T, S)]
        if not m:
            cells.append("-")
            continue
        dr = np.array([np.mean(list(v.values())) for v in m.values()])
        shared = sorted(set.intersection(*(set(v) for v in m.values())))   # seeds every fold has
        seeds = np.array([np.mean([v[k] for v in m.values()]) for k in shared])
        bl = (f"{100 * np.mean([x[0] for x in b.values()]):.1f} / {100 * np.mean([x[1] for x in b.values()]):.1f}"
              if b else "- / -")
        note = "" if set(b) == set(m) else f" (DR over {len(m)} folds, baselines over {len(b)}: not the same folds)"
        cells.append(f"**{100 * dr.mean():.1f}** (folds ± {100 * dr.std():.1f}, seeds ± {100 * seeds.std():.1f} over "
                     f"{len(shared)}) / {bl}{note}")
    print("| **mean over folds** | | " + " | ".join(cells) + " |\n")
    for other in map(Path, a.against or []):   # a lever's run against the recipe's: same fold, same seed
        _same_folds(work, other)
        ob = defaultdict(list)
        for r in _results(other):
            ob[(r["fold"], r["what"])].append(r)
        for T, S in HEADS:
            w = f"rank_T{T}S{S}"
            per = _paired(folds, lambda f, w=w: by[(f, w)], lambda f, w=w, ob=ob: ob[(f, w)],
                          lambda r, o: 100 * (r["dr"] - o["dr"]))
            if per:
                x = np.array([np.mean(v) for v in per.values()])
                print(f"T{T}S{S}: this run − {other} over {len(x)} folds: {x.mean():+.2f} ± {x.std():.2f} points "
                      f"(ahead in {int((x > 0).sum())}; " + ", ".join(f"{f.split('__')[-1]} {np.mean(v):+.1f}"
                                                                    for f, v in per.items()) + ")\n")
    kinds = sorted({r["what"][3:] for r in recs if r["what"].startswith("au_")})
    if not kinds:
        return
    print("### AU intensity, ICC(3,1) with OpenFace 2.2 on test people (mean of AU06/10/12/14/17; all AUs)\n")
    kinds = ["si"] + [k for k in KINDS if k in kinds and k != "si"] if "si" in kinds else kinds
    print("(cells: 5 AUs mean ± sd over seeds / all 17 AUs; - : not run)\n")
    print("| fold | " + " | ".join(f"{k} 5 AUs / all" for k in kinds) + " |")
    print("|---|" + "---|" * len(kinds))
    for f in folds + ["insource"]:
        rows = {k: by[(f, f"au_{k}")] for k in kinds}
        if any(rows.values()):
            print(f"| {f} | " + " | ".join(
                f"{np.mean([r['icc5'] for r in v]):.3f} ± {np.std([r['icc5'] for r in v]):.3f} / "
                f"{np.mean([r['icc'] for r in v]):.3f}" if v else "-" for v in rows.values()) + " |")
    normalised = [k for k in kinds if "video" in (KINDS.get(k, {}).get("dr_norm"), KINDS.get(k, {}).get("image_norm"))]
    pairs = [(k, "si") for k in kinds if k != "si"] + [(k, "si_vnorm") for k in normalised if k != "si_vnorm"]
    for k, ref in a.minus or []:
        if k not in kinds or ref not in kinds:
            print(f"\n(--minus {k}:{ref}: no results for {k if k not in kinds else ref})", file=sys.stderr)
    for k, ref in dict.fromkeys(pairs + (a.minus or [])):
        if k in kinds and ref in kinds:
            _difference(by, folds, k, ref)


def _paired(folds, mine, other, value) -> dict:
    """fold -> [value(record, other's record of the same seed)] over the seeds both have, for the
    folds with any such pair; ``mine`` / ``other``: fold -> records."""
    out = {}
    for f in folds:
        o = {r["seed"]: r for r in other(f)}
        d = [value(r, o[r["seed"]]) for r in mine(f) if r["seed"] in o]
        if d:
            out[f] = d
    return out


def _difference(by, folds, k: str, ref: str) -> None:
    """``k`` minus ``ref`` (ICC, 5 AUs and all 17) on the left-out sources, paired by fold and
    seed: over the (fold, seed) pairs, and as the issue's mean over folds (each fold's seeds
    averaged first)."""
    per_fold = _paired(folds, lambda f: by[(f, f"au_{k}")], lambda f: by[(f, f"au_{ref}")],
                       lambda r, o: (r["icc5"] - o["icc5"], r["icc"] - o["icc"]))
    if not per_fold:
        return
    x5, xa = (np.array([x[i] for v in per_fold.values() for x in v]) for i in (0, 1))
    print(f"\n{k} − {ref} over {len(x5)} (fold, seed): 5 AUs {x5.mean():+.3f} ± {x5.std():.3f} (ahead in "
          f"{int((x5 > 0).sum())}); all 17 AUs {xa.mean():+.3f} ± {xa.std():.3f} (ahead in {int((xa > 0).sum())})")
    f5, fa = (np.array([np.mean([x[i] for x in v]) for v in per_fold.values()]) for i in (0, 1))
    seeds = ", ".join(f"{f.split('__')[-1]} {len(v)}" for f, v in sorted(per_fold.items()))
    print(f"{k} − {ref}, mean over {len(per_fold)} folds (each fold its seeds' mean; seeds: {seeds}): 5 AUs "
          f"{f5.mean():+.3f} ± {f5.std():.3f} over folds (ahead in {int((f5 > 0).sum())}); all 17 AUs "
          f"{fa.mean():+.3f} ± {fa.std():.3f} (ahead in {int((fa > 0).sum())})")


def _kind_pair(text: str) -> tuple[str, str]:
    k, sep, ref = text.partition(":")
    if not sep or not k or not ref or ":" in ref or not {k, ref} <= set(KINDS):
        raise argparse.ArgumentTypeError(f"{text!r}: give two inputs as KIND:REF, each one of {', '.join(KINDS)}")
    return k, ref


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("folds")
    f.add_argument("faces")
    f.add_argument("-o", "--out", required=True)
    r = sub.add_parser("run")
    r.add_argument("work")
    r.add_argument("--persons", required=True)
    r.add_argument("--labels", required=True)
    r.add_argument("--folds", default="all", help="comma list of fold names, or all; insource for the in-source split")
    r.add_argument("--seeds", default="0,1,2")
    r.add_argument("--dr-args", default=DR_ARGS)
    r.add_argument("--task-args", default="--epochs 30 --patience 4 --val-frames 1500")
    r.add_argument("--inputs", default="si,mdr", help="comma list of " + ", ".join(KINDS))
    r.add_argument("--no-task", action="store_true", help="ranking only")
    r.add_argument("--no-baselines", action="store_true", help="skip identity / RankSVM (already reported)")
    r.add_argument("--drop-mdr", action="store_true",
                   help="delete a (fold, seed)'s generated MDR stores (WORK/FOLD/sSEED/mdr, ~3.6 GB on the shared "
                        "clips) once every --inputs result of it is recorded; a later run with new inputs regenerates them")
    p = sub.add_parser("report")
    p.add_argument("work")
    p.add_argument("--baselines-from", action="append", metavar="WORK",
                   help="take identity / RankSVM from this work folder where this one has none (same folds.json)")
    p.add_argument("--against", action="append", metavar="WORK",
                   help="per fold and seed, this run's DR accuracy minus that work folder's (a lever against the recipe)")
    p.add_argument("--minus", action="append", metavar="KIND:REF", type=_kind_pair,
                   help="also print input KIND minus input REF, e.g. mdr_vnorm_all:mdr_vnorm (each input minus si, "
                        "and the per-video normalised inputs minus si_vnorm, are always printed)")
    a = ap.parse_args(argv)
    if a.cmd == "folds":
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(make_folds(Path(a.faces)), indent=1))
        print(f"-> {out}", file=sys.stderr)
    elif a.cmd == "run":
        run(a)
    else:
        report(a)


if __name__ == "__main__":
    main()
