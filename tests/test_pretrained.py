"""Shipped DR models: by name wherever a DR checkpoint is accepted, verified by checksum."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REAL, cli, real_videos

from drkit import pretrained
from drkit.checkpoint import load_checkpoint
from drkit.errors import DrkitError
from drkit.stages import gen_dr, train_task
from drkit.store import open_store


@pytest.fixture
def fake_install(task_data, tmp_path, monkeypatch):
    """A pretrained folder holding the test DR checkpoint as ``T2`` (its manifest, its hash)."""
    d = tmp_path / "pretrained"
    d.mkdir()
    shutil.copy(Path(task_data["drs"][1]) / "best.pt", d / "T2.pt")
    man = {"models": {"T2": {"file": "T2.pt", "sha256": hashlib.sha256((d / "T2.pt").read_bytes()).hexdigest(),
                             "T": 2, "stride": 1, "net_size": 32, "held_out": {"dr": 80.0, "identity": 70.0}}}}
    (d / "MANIFEST.json").write_text(json.dumps(man))
    monkeypatch.setattr(pretrained, "HERE", d)
    pretrained.manifest.cache_clear()
    pretrained._verified.cache_clear()
    yield d
    pretrained.manifest.cache_clear()
    pretrained._verified.cache_clear()


def test_pretrained_name_works_in_gen_dr_train_task_and_rank_eval(fake_install, task_data, tmp_path):
    ck = load_checkpoint("pretrained:T2", "dr")
    assert ck.config.T == 2 and ck.path == fake_install / "T2.pt"
    out = tmp_path / "mdr.zarr"
    gen_dr.run(gen_dr.GenDRConfig(store=task_data["faces"], out=out, dr=[Path("pretrained:T2")]))
    ref = open_store(out).typed_params.checkpoints[0]
    assert ref.path == "pretrained:T2"          # recorded by name: the store does not depend on the install path
    # the store equals one made from the same file given by path (same DR, same maps)
    by_path = tmp_path / "by_path.zarr"
    gen_dr.run(gen_dr.GenDRConfig(store=task_data["faces"], out=by_path, dr=[fake_install / "T2.pt"]))
    v = open_store(out).videos[0]
    np.testing.assert_array_equal(open_store(out).video(v)["mdr"][:], open_store(by_path).video(v)["mdr"][:])
    run = tmp_path / "task"
    train_task.run(train_task.TrainTaskConfig(input=[out], out=run, labels=task_data["labels"], epochs=1,
                                              val_share=0.25))
    assert len(load_checkpoint(run / "best.pt", "task").dr_nets) == 1
    js = tmp_path / "r.json"
    r = cli("rank-eval", "pretrained:T2", task_data["faces"], "--json", js)
    assert r.returncode == 0, r.stderr
    assert {x["method"] for x in json.loads(js.read_text())} == {"dr", "identity"}
    r = cli("models")
    assert r.returncode == 0 and "pretrained:T2" in r.stdout and "80.0 /" in r.stdout


def test_pretrained_refuses_unknown_names_and_altered_files(fake_install, task_data, tmp_path):
    with pytest.raises(DrkitError, match=r"pretrained:T7: no such pretrained model \(known: pretrained:T2\)"):
        load_checkpoint("pretrained:T7", "dr")
    data = bytearray((fake_install / "T2.pt").read_bytes())
    data[-100] ^= 0xFF                          # one flipped byte
    (fake_install / "T2.pt").write_bytes(bytes(data))
    with pytest.raises(DrkitError, match="install is damaged or altered: reinstall drkit"):
        load_checkpoint("pretrained:T2", "dr")
    r = cli("gen-dr", task_data["faces"], "-o", tmp_path / "x.zarr", "--dr", "pretrained:T2")
    assert r.returncode == 1 and "damaged or altered" in r.stderr and not (tmp_path / "x.zarr").exists()


def test_task_bundle_refuses_a_dr_checkpoint_changed_after_gen_dr(task_data, tmp_path):
    dr = tmp_path / "dr.pt"
    shutil.copy(Path(task_data["drs"][0]) / "best.pt", dr)
    out = tmp_path / "mdr.zarr"
    gen_dr.run(gen_dr.GenDRConfig(store=task_data["faces"], out=out, dr=[dr]))
    shutil.copy(Path(task_data["drs"][1]) / "best.pt", dr)       # another network at the same path
    with pytest.raises(DrkitError, match="changed since"):
        train_task.run(train_task.TrainTaskConfig(input=[out], out=tmp_path / "t", labels=task_data["labels"],
                                                  epochs=1, val_share=0.25))


# ------------------------------------------------------------------ the models drkit ships

SHIPPED = {"T3": (3, 2), "T5": (5, 2), "T9": (9, 4), "T3-slim": (3, 2), "T5-slim": (5, 2), "T9-slim": (9, 4)}


def test_shipped_models_are_in_the_package_and_match_their_manifest():
    man = pretrained.manifest()
    assert {m.name for m in pretrained.models("dr")} == set(SHIPPED) | {"ms-slim"}
    for name, (T, S) in SHIPPED.items():
        m = man["models"][name]
        ck = load_checkpoint(f"pretrained:{name}", "dr")        # verifies the SHA-256
        assert (ck.config.T, ck.config.stride, ck.config.net_size) == (T, S, m["net_size"])
        assert ck.optimizer is None and ck.path.stat().st_size < 4 << 20
        h = m["held_out"]
        assert h["dr"] >= h["identity"] + (3 if T == 5 else 1), h     # the bar, as measured
        if name.endswith("-slim"):   # half the width, a third of the compute, the accuracy kept
            wide = man["models"][name[:-len("-slim")]]
            assert m["model"]["kwargs"]["base"] * 2 == wide["model"]["kwargs"]["base"]
            assert h["dr"] >= wide["held_out"]["dr"] - 1.0, (name, h, wide["held_out"])
    assert not set(man["held_out_people"]) & {p for p in _people_of(man["train_clips"])}


def test_shipped_multi_scale_dr_is_one_network_with_its_leave_one_source_out_figures():
    """pretrained:ms-slim: one network whose heads give the T5S2, T3S2 and T9S4 DRs in that
    order, held-out figures per head from the leave-one-source-out protocol (7 folds), each
    beating identity; `drkit models` shows a row per head."""
    m = pretrained.info("pretrained:ms-slim")
    ck = load_checkpoint("pretrained:ms-slim", "dr")                # verifies the SHA-256
    assert ck.config.windows == [(5, 2), (3, 2), (9, 4)] == m.windows
    assert ck.optimizer is None and ck.path.stat().st_size < 4 << 20
    assert m.trained_on and "every person" in m.trained_on
    for T, S in m.windows:
        h = m.held_out_of(T, S)
        assert h["folds"] == 7 and h["dr"] >= h["identity"] + 3, (T, S, h)
    r = cli("models")
    assert r.returncode == 0
    rows = [line for line in r.stdout.splitlines() if "9, 4" in line]
    assert len(rows) == 3   # T9, T9-slim and ms-slim's third head
    man = pretrained.manifest()
    assert {"T5", "T5-slim"} <= set(man["models"])                   # the old names stay


def _people_of(clips: list[str]) -> set[str]:
    import csv
    if not (REAL / "manifest.csv").is_file():
        return set()
    rows = {r["path"]: r["person"] for r in csv.DictReader(open(REAL / "manifest.csv"))}
    return {rows[c] for c in clips if c in rows}


@pytest.mark.realdata
def test_shipped_t5_ranks_held_out_people_better_than_identity(tmp_path):
    """Two clips of people the shipped models never saw: DR ranks their frames better than the
    identity baseline (the full held-out check is in MANIFEST.json / examples/pretrained)."""
    real_videos()
    split = Path(__file__).resolve().parents[1] / "examples" / "real_faces" / "person_split.py"
    subprocess.run([sys.executable, str(split), str(REAL), "-o", str(tmp_path)], check=True)
    test_clips = (tmp_path / "test.txt").read_text().split()[:3]
    store = tmp_path / "test.zarr"
    # at the crop size the models were trained from (112, resized to 64 on the fly): 64 px crops
    # warped directly look different (aliasing) and the DR's margin over identity shrinks
    assert cli("-q", "preprocess", *test_clips, "-o", store, "--size", "112").returncode == 0
    js = tmp_path / "r.json"
    assert cli("rank-eval", "pretrained:T5", store, "--T", "5", "--stride", "2", "--json", js).returncode == 0
    acc = {r["method"]: r["accuracy"] for r in json.loads(js.read_text())}
    assert acc["dr"] > acc["identity"] + 0.02, acc


def test_shipped_au_models_say_what_they_are_and_meet_the_bar():
    """pretrained:au (MDR) and pretrained:au-si (SI): task bundles verified by SHA-256, every AU
    OpenFace 2.2 reports, marked non-commercial, distilled (not human-coded), and their recorded
    held-out agreement meets issue 19's bar (mean ICC of AU06/10/12/14/17 >= 0.6, MDR >= SI)."""
    from drkit.predictor import load_bundle
    au = {m.name: m for m in pretrained.models("task")}
    assert set(au) == {"au", "au-si"}
    aus = ["AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12", "AU14", "AU15",
           "AU17", "AU20", "AU23", "AU25", "AU26", "AU45"]
    for name, m in au.items():
        b = load_bundle(f"pretrained:{name}")                 # verifies the SHA-256
        assert b.config.targets == aus == m.targets and b.config.input_kind == m.input
        assert b.config.value_range and all(r == [0.0, 5.0] for r in b.config.value_range)
        assert "non-commercial" in m.licence and "not from human FACS coding" in m.description
        assert b.path.stat().st_size < 2 << 20 and b.optimizer is None
        h = m.held_out
        assert set(h["per_target"]) == set(aus) and h["people"] >= 15 and h["seeds"] >= 1
    assert au["au"].input == "mdr" and au["au-si"].input == "si"
    assert au["au"].held_out["icc5"] >= 0.6, au["au"].held_out
    assert au["au"].held_out["icc5"] >= au["au-si"].held_out["icc5"]


def test_shipped_au_models_track_fast_unless_told(task_bundle):
    """pretrained:au and au-si predict with the fast tracking their manifest entries record
    (landmark reuse, region re-detection: measured on their held-out people), although their
    training stores fitted every frame; predict's options still choose, and a user's own bundle
    tracks as its store was tracked."""
    from drkit.predictor import Predictor
    for name in ("au", "au-si"):
        p = Predictor.from_bundle(f"pretrained:{name}", device="cpu")
        assert p.config.preprocess.reuse_mad == 0 and not p.config.preprocess.redetect_region
        tr = p.tracker()
        assert (tr.reuse_mad, tr.max_reuse, tr.redetect_region) == (4.0, 6, True)
        assert "ICC" in pretrained.info(f"pretrained:{name}").tracking["held_out"]
        p.reuse_mad, p.redetect_region = 0.0, False     # predict --reuse-mad 0 --redetect-frame
        tr = p.tracker()
        assert (tr.reuse_mad, tr.redetect_region) == (0.0, False)
    own = Predictor.from_bundle(task_bundle, device="cpu")
    pp = own.config.preprocess
    assert own.default_tracking == {}
    assert (own.tracker().reuse_mad, own.tracker().redetect_region) == (pp.reuse_mad, pp.redetect_region)


def test_predict_tracks_shipped_bundles_as_their_manifest_says(tmp_path, monkeypatch):
    """`drkit predict pretrained:au` (the stage, not only Predictor.from_bundle) uses the
    manifest's tracking; --reuse-mad / --redetect-frame still override it."""
    from conftest import face_frames, write_video
    from drkit.configs import PredictConfig
    from drkit.predictor import Predictor
    from drkit.stages import predict
    seen = []
    orig = Predictor.tracker

    def spy(self, *a, **k):
        t = orig(self, *a, **k)
        seen.append((t.reuse_mad, t.redetect_region))
        return t

    monkeypatch.setattr(Predictor, "tracker", spy)
    clip = write_video(tmp_path / "v.mp4", face_frames(4, size=160))
    predict.run(PredictConfig(model="pretrained:au", inputs=[clip], out=tmp_path / "a.csv", device="cpu"))
    assert seen[-1] == (4.0, True)
    predict.run(PredictConfig(model="pretrained:au", inputs=[clip], out=tmp_path / "b.csv", device="cpu",
                              reuse_mad=0.0, redetect_region=False))
    assert seen[-1] == (0.0, False)
