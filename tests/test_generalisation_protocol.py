"""examples/generalisation/protocol.py report: the numbers its tables and comparisons give."""

import importlib.util
import json
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "gen_protocol", Path(__file__).resolve().parents[1] / "examples" / "generalisation" / "protocol.py")
protocol = importlib.util.module_from_spec(spec)
spec.loader.exec_module(protocol)

FOLDS = {"loso": {"A": {"train": ["p2"], "test": ["p1"]}, "B": {"train": ["p1"], "test": ["p2"]}}}


def work(tmp_path, name, recs, folds=FOLDS):
    w = tmp_path / name
    w.mkdir()
    (w / "folds.json").write_text(json.dumps(folds))
    (w / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return w


def rank(fold, seed, T, S, dr):
    return {"fold": fold, "seed": seed, "what": f"rank_T{T}S{S}", "T": T, "stride": S, "dr": dr, "test_people": 3}


def base(fold, T, S, idn, svm):
    return {"fold": fold, "seed": -1, "what": f"baselines_T{T}S{S}", "T": T, "stride": S, "identity": idn,
            "ranksvm": svm, "test_people": 3}


def test_a_lever_is_compared_fold_by_fold_and_seed_by_seed(tmp_path, capsys):
    recipe = work(tmp_path, "recipe", [base("A", 9, 4, 0.60, 0.80), base("B", 9, 4, 0.70, 0.90),
                                       rank("A", 0, 9, 4, 0.70), rank("A", 1, 9, 4, 0.72), rank("B", 0, 9, 4, 0.80)])
    # the lever: fold A seeds 0, 1 and 2 (seed 2 has no recipe run to pair with), fold B seeds 0 and 1 (1 unpaired)
    lever = work(tmp_path, "lever", [rank("A", 0, 9, 4, 0.71), rank("A", 1, 9, 4, 0.75), rank("A", 2, 9, 4, 0.99),
                                     rank("B", 0, 9, 4, 0.78), rank("B", 1, 9, 4, 0.80)])
    protocol.main(["report", str(lever), "--baselines-from", str(recipe), "--against", str(recipe)])
    out = capsys.readouterr().out
    # A: mean of +1 and +3 = +2 points; B: -2 points -> mean over folds 0.00, sd 2.00, ahead in 1
    assert "T9S4: this run − " + str(recipe) + " over 2 folds: +0.00 ± 2.00 points (ahead in 1; A +2.0, B -2.0)" in out
    # the lever's own table borrows the recipe's baselines: A (71+75+99)/3 = 81.7 (sd 12.4) beside 60.0 / 80.0
    assert "| A | 3 | - | - | 81.7 ± 12.4 / 60.0 / 80.0 |" in out
    # mean over folds (81.67 + 79.0) / 2 = 80.3, sd 1.3; over the seeds both folds have (0, 1): seed 0
    # (71 + 78) / 2 = 74.5, seed 1 (75 + 80) / 2 = 77.5 -> sd 1.5; baselines (60 + 70) / 2, (80 + 90) / 2
    mean = next(x for x in out.splitlines() if x.startswith("| **mean over folds**"))
    assert mean.endswith("| **80.3** (folds ± 1.3, seeds ± 1.5 over 2) / 65.0 / 85.0 |")


def test_a_table_without_baselines_still_shows_its_dr_and_says_what_it_averages(tmp_path, capsys):
    w = work(tmp_path, "w", [base("A", 5, 2, 0.70, 0.80), rank("A", 0, 5, 2, 0.85), rank("B", 0, 5, 2, 0.75)])
    protocol.main(["report", str(w)])
    out = capsys.readouterr().out
    assert "| B | 3 | - | 75.0 ± 0.0 / - / - | - |" in out
    assert "**80.0** (folds ± 5.0, seeds ± 0.0 over 1) / 70.0 / 80.0 (DR over 2 folds, baselines over 1: not the same folds)" in out


def test_baselines_from_a_work_folder_of_other_folds_or_other_test_people_are_refused(tmp_path):
    a = work(tmp_path, "a", [rank("A", 0, 5, 2, 0.85)])
    b = work(tmp_path, "b", [base("A", 5, 2, 0.7, 0.8)], folds={"loso": {"A": {"train": ["p9"], "test": ["p1"]}}})
    with pytest.raises(SystemExit, match="folds.json differs"):
        protocol.main(["report", str(a), "--baselines-from", str(b)])
    c = work(tmp_path, "c", [{**base("A", 5, 2, 0.7, 0.8), "test_people": 2}])
    with pytest.raises(SystemExit, match="different stores"):
        protocol.main(["report", str(a), "--baselines-from", str(c)])


def test_own_baselines_win_over_borrowed_ones_and_only_this_runs_folds_borrow(tmp_path, capsys):
    a = work(tmp_path, "a", [rank("A", 0, 5, 2, 0.85), base("A", 5, 2, 0.70, 0.80)])
    b = work(tmp_path, "b", [base("A", 5, 2, 0.10, 0.20), base("B", 5, 2, 0.50, 0.60)])
    protocol.main(["report", str(a), "--baselines-from", str(b)])
    out = capsys.readouterr().out
    assert "| A | 3 | - | 85.0 ± 0.0 / 70.0 / 80.0 | - |" in out and "| B |" not in out


def test_a_malformed_input_pair_is_refused_by_name(capsys):
    for bad in ("mdr_vnorm", "mdr_vnorm:si:si", "mdr_vnorm:nope"):
        with pytest.raises(SystemExit):
            protocol.main(["report", "w", "--minus", bad])
        assert "give two inputs as KIND:REF" in capsys.readouterr().err


def au(fold, seed, kind, icc5, icc):
    return {"fold": fold, "seed": seed, "what": f"au_{kind}", "icc5": icc5, "icc": icc}


def test_inputs_are_compared_by_fold_then_over_folds_and_against_the_normalised_image(tmp_path, capsys):
    w = work(tmp_path, "w", [au("A", 0, "si", 0.50, 0.30), au("A", 1, "si", 0.40, 0.30), au("B", 0, "si", 0.60, 0.20),
                             au("A", 0, "mdr_vnorm", 0.60, 0.40), au("A", 1, "mdr_vnorm", 0.60, 0.40),
                             au("B", 0, "mdr_vnorm", 0.50, 0.30), au("A", 0, "si_vnorm", 0.55, 0.45),
                             au("B", 0, "si_vnorm", 0.40, 0.30), au("A", 2, "mdr_vnorm", 0.90, 0.90)])  # no si seed 2
    protocol.main(["report", str(w), "--minus", "si_vnorm:si"])
    out = capsys.readouterr().out
    # pairs: A0 +0.10, A1 +0.20, B0 -0.10 -> mean +0.067; folds: A +0.15, B -0.10 -> +0.025, sd 0.125
    assert "mdr_vnorm − si over 3 (fold, seed): 5 AUs +0.067 ± 0.125 (ahead in 2)" in out
    assert "5 AUs +0.025 ± 0.125 over folds (ahead in 1); all 17 AUs +0.100 ± 0.000 (ahead in 2)" in out
    # the control, always printed for a normalised input: A0 +0.05 / -0.05, B0 +0.10 / 0.00
    assert "mdr_vnorm − si_vnorm over 2 (fold, seed): 5 AUs +0.075 ± 0.025 (ahead in 2); all 17 AUs -0.025" in out
    assert out.count("si_vnorm − si over 2 (fold, seed)") == 1   # printed by default; asking again adds no copy


def test_only_a_requested_difference_with_no_results_is_reported_missing(tmp_path, capsys):
    # si and mdr_vnorm only: the automatic mdr_vnorm − si_vnorm has no control to read, and says nothing
    w = work(tmp_path, "w", [au("A", 0, "si", 0.50, 0.30), au("A", 0, "mdr_vnorm", 0.60, 0.40)])
    protocol.main(["report", str(w)])
    out, err = capsys.readouterr()
    assert "mdr_vnorm − si over 1 (fold, seed)" in out and "si_vnorm" not in out + err
    protocol.main(["report", str(w), "--minus", "mdr_vnorm:si_vnorm"])
    assert "(--minus mdr_vnorm:si_vnorm: no results for si_vnorm)" in capsys.readouterr().err


def test_run_resumes_and_drop_mdr_deletes_only_a_finished_pairs_generated_stores(tmp_path, monkeypatch):
    """`run` with the stages replaced by recorders: every step once, nothing again on a rerun, and
    --drop-mdr removes WORK/FOLD/sSEED/mdr (and nothing else) once the pair's inputs are recorded."""
    from types import SimpleNamespace

    from drkit.stages import eval_task, gen_dr, rank_eval, train_dr, train_task
    calls = []

    def fake_train_dr(cfg):
        calls.append("train_dr")
        cfg.out.mkdir(parents=True, exist_ok=True)
        (cfg.out / "best.pt").write_bytes(b"x")

    def fake_gen_dr(cfg):
        calls.append("gen_dr")
        cfg.out.mkdir(parents=True)

    monkeypatch.setattr(train_dr, "run", fake_train_dr)
    monkeypatch.setattr(rank_eval, "run", lambda cfg: calls.append("rank") or [{"accuracy": 0.8, "windows": 5}])
    monkeypatch.setattr(gen_dr, "run", fake_gen_dr)
    monkeypatch.setattr(train_task, "run", lambda cfg: calls.append("train_task"))
    monkeypatch.setattr(eval_task, "run", lambda cfg: calls.append("eval") or SimpleNamespace(
        to_dict=lambda: {f"icc/{a}": 0.5 for a in protocol.AUS5}))
    people = ["a1", "a2", "b1", "b2", "b3", "c1"]
    persons = tmp_path / "persons"
    for p in people:
        (persons / f"{p}.zarr").mkdir(parents=True)
    labels = tmp_path / "labels.csv"
    labels.write_text("person,video,frame,AU06\n" + "".join(f"{p},v,0,1\n" for p in people))
    folds = {"repo_of": {"a1": "A", "a2": "A", "b1": "B", "b2": "B", "b3": "B", "c1": "C"},
             "loso": {"C": {"train": people[:5], "test": ["c1"]}}}
    w = work(tmp_path, "w", [], folds)
    args = ["run", str(w), "--persons", str(persons), "--labels", str(labels), "--folds", "C", "--seeds", "0",
            "--no-baselines", "--inputs", "si,mdr", "--drop-mdr"]
    protocol.main(args)
    assert calls.count("train_dr") == 1 and calls.count("rank") == 3 and calls.count("gen_dr") == 6
    assert calls.count("train_task") == 2 and calls.count("eval") == 2
    recs = [json.loads(x) for x in (w / "results.jsonl").read_text().splitlines()]
    assert sorted(r["what"] for r in recs) == ["au_mdr", "au_si", "rank_T3S2", "rank_T5S2", "rank_T9S4"]
    assert not (w / "C" / "s0" / "mdr").exists()
    assert (w / "C" / "s0" / "dr" / "best.pt").is_file() and all((persons / f"{p}.zarr").is_dir() for p in people)
    calls.clear()
    protocol.main(args)       # everything is recorded: nothing runs, nothing is regenerated
    assert calls == []
    (w / "C" / "s0" / "mdr").mkdir()     # a leftover of a run without --drop-mdr
    protocol.main(args)
    assert calls == [] and not (w / "C" / "s0" / "mdr").exists()
    protocol.main([x for x in args if x != "--drop-mdr"] + ["--inputs", "si,mdr,si_vnorm"])   # a new input
    assert calls.count("gen_dr") == 6 and calls.count("train_task") == 1 and "train_dr" not in calls
    assert (w / "C" / "s0" / "mdr").is_dir()


def test_run_refuses_a_fold_name_that_leaves_the_work_folder(tmp_path):
    """Fold names become WORK/FOLD, under which run deletes (--drop-mdr, train-dr --overwrite): a
    crafted folds.json cannot point them elsewhere, and an unknown --folds name is one clear line."""
    outside = tmp_path / "precious" / "s0" / "mdr"
    outside.mkdir(parents=True)
    w = work(tmp_path, "w", [], {"repo_of": {}, "loso": {"../precious": {"train": [], "test": []}}})
    (tmp_path / "persons").mkdir()
    (tmp_path / "labels.csv").write_text("person,video,frame,AU06\n")
    args = ["run", str(w), "--persons", str(tmp_path / "persons"), "--labels", str(tmp_path / "labels.csv"),
            "--seeds", "0", "--no-baselines", "--inputs", "si", "--drop-mdr"]
    with pytest.raises(SystemExit, match="not a plain folder name"):
        protocol.main(args + ["--folds", "../precious"])
    with pytest.raises(SystemExit, match="is not a fold of"):
        protocol.main(args + ["--folds", "nosuch"])
    assert outside.is_dir()
