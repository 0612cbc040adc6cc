"""Synthetic facial-action videos and the demo."""

from __future__ import annotations

import csv
import json
import shlex
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import cli

from drkit.labels import read_labels
from drkit.metrics import icc31
from drkit.stages import preprocess, synth
from drkit.store import open_store

FERA = ["AU06", "AU10", "AU12", "AU14", "AU17"]


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    synth.run(synth.SynthConfig(out=str(d / "s"), n=8, seconds=4, identities=4, seed=3))
    preprocess.run(preprocess.PreprocessConfig(inputs=[str(d / "s" / "videos")], out=str(d / "faces.zarr"), size=64))
    return d


def test_synth_outputs_and_determinism(synth_set, tmp_path):
    s = synth_set / "s"
    rows = list(csv.DictReader(open(s / "labels.csv")))
    assert list(rows[0]) == ["video", "frame", "person", "AU01", "AU02", "AU04", "AU06", "AU10", "AU12",
                             "AU14", "AU17", "AU25", "AU26", "valence", "arousal"]
    assert len(rows) == 8 * 100 and len({r["person"] for r in rows}) == 4
    au = np.array([[float(r[a]) for a in FERA] for r in rows])
    assert au.min() >= 0 and au.max() <= 5 and (au.max(0) > 1).all(), "every AU must occur"
    va = np.array([[float(r["valence"]), float(r["arousal"])] for r in rows])
    assert np.abs(va).max() <= 1 and va.std(0).min() > 0.05
    assert np.load(s / "landmarks" / "synth_000.npy").shape == (100, 68, 2)
    again = tmp_path / "again"
    synth.run(synth.SynthConfig(out=str(again), n=2, seconds=4, identities=4, seed=3))
    np.testing.assert_array_equal(np.load(again / "landmarks" / "synth_001.npy"), np.load(s / "landmarks" / "synth_001.npy"))
    assert (again / "labels.csv").read_text().splitlines()[:150] == (s / "labels.csv").read_text().splitlines()[:150]


def test_detector_finds_synthetic_faces_and_their_landmarks(synth_set):
    st = open_store(synth_set / "faces.zarr")
    found = sum(st.video_info(v)["n_frames"] for v in st.videos)
    total = sum(st.video_info(v)["n_source_frames"] for v in st.videos)
    assert found >= 0.95 * total, (found, total)
    # preprocess landmarks (mapped back to the video) agree with the exact ones
    errs = []
    for v in st.videos:
        g = st.video(v)
        M, lm, idx = g["transform"][:], g["landmarks"][:], g["frame_index"][:]
        src = np.einsum("nij,npj->npi", np.linalg.inv(M[:, :, :2].astype(np.float64)), lm - M[:, None, :, 2])
        true = np.load(synth_set / "s" / "landmarks" / v.replace(".avi", ".npy"))[idx]
        iod = np.linalg.norm(true[:, 36] - true[:, 45], axis=1)
        errs.append(np.linalg.norm(src - true, axis=2).mean(1) / iod)
    assert np.median(np.concatenate(errs)) < 0.08


def test_au_labels_are_recoverable_on_held_out_identities(synth_set):
    """A linear model on the masked crops (plus their mirror images), trained on three
    identities, scores the fourth; leave-one-identity-out over all four."""
    from sklearn.linear_model import Ridge
    st = open_store(synth_set / "faces.zarr")
    L = read_labels(synth_set / "s" / "labels.csv", FERA)
    X, Y, P = [], [], []
    for v in st.videos:
        g = st.video(v)
        X.append(g["frames"][:].astype(np.float32) / 255)
        Y.append(L.lookup(v, g["frame_index"][:]))
        P += [L.person[v]] * len(X[-1])
    X, Y, P = np.concatenate(X), np.concatenate(Y), np.array(P)
    folds = []
    for held in sorted(set(P)):
        te = P == held
        Xtr = np.concatenate([X[~te], X[~te][:, :, ::-1]]).reshape(2 * (~te).sum(), -1)
        m = Ridge(alpha=3.0).fit(Xtr, np.concatenate([Y[~te], Y[~te]]))
        folds.append(icc31(m.predict(X[te].reshape(te.sum(), -1)), Y[te]))
    folds = np.array(folds)
    assert folds.mean() > 0.6, folds.round(2)
    assert (folds.mean(0) > 0.35).all(), folds.round(2)     # every AU, not just the easy ones


def test_demo_quick_runs_exactly_what_it_prints(tmp_path):
    out = tmp_path / "d"
    r = cli("demo", "--quick", "-o", out)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((out / "summary.json").read_text())
    for name, f in s["files"].items():
        assert Path(f).is_file() and Path(f).stat().st_size > 1000, name
        if f.endswith(".png"):
            assert cv2.imread(f) is not None, name
    assert s["predict"]["face_found"] == "1" and float(s["predict"]["AU12"][0]) == float(s["predict"]["AU12"][0])
    for k, v in s["rank_accuracy"].items():
        assert 0.5 < v["dr"] / 100 <= 1 and 0.5 < v["identity"] / 100 <= 1
    printed = [shlex.split(line[len("$ drkit "):]) for line in r.stderr.splitlines() if line.startswith("$ drkit ")]
    assert [a[0] for a in printed] == ["synth", "preprocess", "preprocess", "train-dr", "train-dr", "rank-eval",
                                       "rank-eval", "rank-eval", "gen-dr", "gen-dr", "train-task", "eval-task",
                                       "train-task", "eval-task", "predict"]
    assert "--identities" in printed[0] and all("--seed" in a for a in printed if a[0] in ("synth", "train-dr"))
    # the summary's scores are those of the printed eval-task commands
    for kind in ("si", "mdr"):
        assert s["au_icc"][kind] == round(json.loads((out / f"eval_au_{kind}.json").read_text())["icc"], 3)
    # re-running a printed command by hand gives an identical result
    for argv in (printed[6], printed[13]):      # rank-eval of DR T=3, eval-task of the MDR model
        js = Path(argv[argv.index("--json") + 1])
        before = js.read_text()
        js.unlink()
        assert cli(*argv).returncode == 0
        assert json.loads(js.read_text()) == json.loads(before), argv[0]
