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

from drkit.errors import UsageError
from drkit.labels import read_labels
from drkit.metrics import icc31
from drkit.stages import preprocess, synth
from drkit.store import open_store
from drkit.synthesis.appearance import IdentityParams, apply_appearance
from drkit.synthesis.render import FaceRig

FERA = ["AU06", "AU10", "AU12", "AU14", "AU17"]


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    synth.run(synth.SynthConfig(out=str(d / "s"), n=8, seconds=4, identities=4, seed=3))
    preprocess.run(preprocess.PreprocessConfig(inputs=[str(d / "s" / "videos")], out=str(d / "faces.zarr"), crop_size=64))
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


@pytest.fixture(scope="module")
def astronaut128():
    """The astronaut framed at 128 px with its neutral landmarks (what synth animates)."""
    import skimage.data

    from drkit.faces import make_backend
    from drkit.synthesis.identities import identity_from_image
    img = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    return identity_from_image(img, "astronaut", 128, make_backend("dlib"))


def _disc(lm: np.ndarray, centres, radius: float) -> np.ndarray:
    """Mask of the pixels within ``radius`` IOD of any of ``centres`` (image points)."""
    iod = np.linalg.norm(lm[36:42].mean(0) - lm[42:48].mean(0))
    ys, xs = np.mgrid[:128, :128]
    return np.any([np.hypot(xs - c[0], ys - c[1]) < radius * iod for c in centres], axis=0)


def test_appearance_marks_each_au_where_it_belongs(astronaut128):
    """Same face, same landmarks, one AU at 0 vs 4: the pixels change in that AU's region (brows
    for AU04, forehead for AU01, outer eye corners for AU06, beside the nose and mouth for AU12,
    chin for AU17) and not in a far one; nothing changes outside the face; with no AU the frame
    is returned unchanged."""
    img, lm = astronaut128.image, astronaut128.landmarks
    iod = np.linalg.norm(lm[36:42].mean(0) - lm[42:48].mean(0))
    up = np.array([0, -iod])
    brows = (lm[21] + lm[22]) / 2
    cases = {   # AU: (its region's centres, a far region's centre)
        "AU04": ([brows + 0.05 * up], lm[57]),
        "AU01": ([brows + 0.3 * up], lm[57]),
        "AU06": ([lm[36] - [0.17 * iod, 0], lm[45] + [0.17 * iod, 0]], lm[57]),
        "AU12": ([(lm[31] + lm[48]) / 2 - [0.15 * iod, 0], (lm[35] + lm[54]) / 2 + [0.15 * iod, 0]], brows),
        "AU17": ([0.4 * lm[57] + 0.6 * lm[8]], brows),
    }
    np.testing.assert_array_equal(apply_appearance(img, lm, {}, IdentityParams(), lm), img)
    for au, (near, far) in cases.items():
        a = apply_appearance(img, lm, {au: 0.0}, IdentityParams(), lm).astype(float)
        b = apply_appearance(img, lm, {au: 4.0}, IdentityParams(), lm).astype(float)
        d = np.abs(b - a).mean(2)
        inside, outside = d[_disc(lm, near, 0.15)].mean(), d[_disc(lm, [far], 0.25)].mean()
        assert inside > 2.5 and inside > 10 * outside, (au, inside, outside)
        assert d[~_disc(lm, [lm.mean(0)], 2.2)].max() == 0, au         # the background stays as it was


def test_open_mouth_shows_teeth_over_a_dark_cavity(astronaut128):
    """AU25 + AU26 at 4, rendered with and without appearance (same warp): inside the inner lips
    the pixels change a lot (teeth, cavity), on the forehead not at all; the band under the upper
    lip (teeth) is much lighter than the middle of the opening (cavity)."""
    au = {"AU25": 4.0, "AU26": 4.0}
    with_, lm = FaceRig(astronaut128).face(au)
    without, _ = FaceRig(astronaut128, appearance=False).face(au)
    iod = np.linalg.norm(lm[36:42].mean(0) - lm[42:48].mean(0))
    inner = np.zeros((128, 128), np.uint8)
    cv2.fillPoly(inner, [np.round(lm[60:68]).astype(np.int32)], 1)
    inner = cv2.erode(inner, np.ones((3, 3), np.uint8)).astype(bool)
    d = np.abs(with_.astype(float) - without.astype(float)).mean(2)
    forehead = _disc(lm, [(lm[21] + lm[22]) / 2 - [0, 0.3 * iod]], 0.25)
    assert inner.sum() > 20 and d[inner].mean() > 25 and d[forehead].max() == 0, (d[inner].mean(), d[forehead].max())
    luma = cv2.cvtColor(with_, cv2.COLOR_BGR2GRAY).astype(float)
    teeth = luma[_disc(lm, [lm[62] + [0, 0.07 * iod]], 0.04)].mean()
    cavity = luma[_disc(lm, [(lm[62] + lm[66]) / 2 + [0, 0.05 * iod]], 0.04)].mean()
    assert teeth > cavity + 60, (teeth, cavity)


def test_morphology_shapes_faces_not_labels(astronaut128, tmp_path):
    """Two people with the same photo and all-zero labels: identical faces without morphology,
    faces that differ around the mouth with it (their resting offsets). In a synth run the
    labels are the same with and without --morphology, the frames are not, synth.json records
    each person's resting offsets, and a run is reproducible for its seed."""
    def mouth_gap(morphology):
        a, lm = FaceRig(astronaut128, synth.person_params(3, 0, morphology)).face({})
        b, _ = FaceRig(astronaut128, synth.person_params(3, 1, morphology)).face({})
        lm0 = astronaut128.landmarks
        region = _disc(lm0, [lm0[48], lm0[54], lm0[57], lm0[51]], 0.2)
        return np.abs(a.astype(float) - b.astype(float)).mean(2)[region].mean()
    assert mouth_gap(0.0) == 0 and mouth_gap(2.0) > 3, (mouth_gap(0.0), mouth_gap(2.0))

    runs = {}
    for name, m in (("m0", 0.0), ("m2", 2.0), ("m2_again", 2.0)):
        synth.run(synth.SynthConfig(out=tmp_path / name, n=2, seconds=1, identities=2, frame_size=128, seed=3, morphology=m))
        runs[name] = tmp_path / name
    labels = {k: (d / "labels.csv").read_bytes() for k, d in runs.items()}
    assert labels["m0"] == labels["m2"] == labels["m2_again"]
    meta = {k: json.loads((d / "synth.json").read_text()) for k, d in runs.items()}
    assert meta["m2"]["morphology"] == 2.0 and meta["m2"]["appearance"] is True
    rest = [p["rest"] for p in meta["m2"]["identity_params"].values()]
    assert len(rest) == 2 and all(0 < v <= 2.0 for r in rest for v in r.values()) and all(rest)
    assert all(p["rest"] == {} for p in meta["m0"]["identity_params"].values())
    assert meta["m2"]["identity_params"] == meta["m2_again"]["identity_params"]
    lms = {k: np.load(d / "landmarks" / "synth_001.npy") for k, d in runs.items()}
    np.testing.assert_array_equal(lms["m2"], lms["m2_again"])
    assert np.abs(lms["m2"] - lms["m0"]).max() > 0.5                 # the resting face moves landmarks
    for v in ("synth_000.avi", "synth_001.avi"):
        assert (runs["m2"] / "videos" / v).read_bytes() == (runs["m2_again"] / "videos" / v).read_bytes()
        assert (runs["m2"] / "videos" / v).read_bytes() != (runs["m0"] / "videos" / v).read_bytes()
    with pytest.raises(UsageError):
        synth.run(synth.SynthConfig(out=tmp_path / "bad", morphology=6.0))


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


@pytest.mark.slow   # ~3.5 min: .ci/run runs it after the default suite (python -m pytest -m slow -k demo)
def test_demo_quick_runs_exactly_what_it_prints(tmp_path):
    out = tmp_path / "d"
    r = cli("demo", "--quick", "-o", out)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((out / "summary.json").read_text())
    for name, f in s["files"].items():
        assert Path(f).is_file(), name
        if f.endswith(".png"):
            assert Path(f).stat().st_size > 1000 and cv2.imread(f) is not None, name
        elif f.endswith(".csv"):   # the real face's predictions: a header and a row per frame
            assert len(Path(f).read_text().splitlines()) == s["real_face"]["frames"] + 1, name
        elif f.endswith(".mp4"):   # the annotated video: every frame of the clip
            assert int(cv2.VideoCapture(f).get(cv2.CAP_PROP_FRAME_COUNT)) == s["real_face"]["frames"], name
        else:
            assert json.loads(Path(f).read_text()), name
    assert s["dr"] == "pretrained:T5"
    v = s["rank_accuracy"]["T5S2"]
    assert 0.5 < v["dr"] / 100 <= 1 and 0.5 < v["identity"] / 100 <= 1
    printed = [shlex.split(line[len("$ drkit "):]) for line in r.stderr.splitlines() if line.startswith("$ drkit ")]
    from drkit import pretrained
    real = ["predict", "predict"] if "au" in pretrained.names() else []   # the shipped clip through pretrained:au
    assert [a[0] for a in printed] == (real + ["synth", "preprocess", "preprocess", "rank-eval", "gen-dr", "gen-dr"]
                                       + ["train-task", "eval-task"] * 4 + ["predict"] * 3)
    printed = printed[len(real):]
    assert "--identities" in printed[0] and all("--seed" in a for a in printed if a[0] in ("synth", "train-task"))
    # the summary's scores are those of the printed eval-task commands, over two seeds per input
    for kind in ("si", "mdr"):
        runs = [json.loads((out / f"eval_au_{kind}_s{k}.json").read_text())["icc"] for k in (0, 1)]
        assert s["au_icc"][kind]["runs"] == [round(x, 3) for x in runs]
    # the showcase: every AU predicted on a held-out still, beside its true value
    sc = s["showcase"]
    assert sc["face_found"] == "1" and set(sc["au"]) == {"AU06", "AU10", "AU12", "AU14", "AU17"}
    assert sc["max_abs_error"] == round(max(abs(p - t) for p, t in sc["au"].values()), 2)
    # the better input reaches a useful held-out ICC, and the showcase is close (issue 10's bar)
    best = max(s["au_icc"][k]["mean"] for k in ("si", "mdr"))
    assert best >= 0.6, s["au_icc"]
    assert sc["max_abs_error"] <= 1.5, sc
    assert s["better_input"] in ("si", "mdr", "tie")
    if real:   # the real face: every OpenFace AU over the clip, and the files it names
        assert len(s["real_face"]["au"]) == 17 and s["real_face"]["faces"] > 0.9 * s["real_face"]["frames"]
    # re-running a printed command by hand gives an identical result
    for argv in (printed[3], printed[9]):       # rank-eval of the shipped DR, eval-task of a model
        js = Path(argv[argv.index("--json") + 1])
        before = js.read_text()
        js.unlink()
        assert cli(*argv).returncode == 0
        assert json.loads(js.read_text()) == json.loads(before), argv[0]
