"""On-disk contracts: typed records round-trip, files written by drkit 0.1.0 keep opening and
give the same results, damaged or future files are refused with a message naming the file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import cli

from drkit.checkpoint import Checkpoint, load_checkpoint
from drkit.contracts import (
    CHECKPOINT_FORMAT_VERSION,
    DRStoreParams,
    FaceStoreParams,
    chunk_frames,
    dr_arrays,
    face_arrays,
)
from drkit.errors import DrkitError
from drkit.predictor import Predictor
from drkit.stages import train_task
from drkit.store import open_store
from drkit.tasks import evaluate_bundle


def as_written_by_0_1_0(ck: Checkpoint) -> dict:
    """The dict drkit 0.1.0 saved for this checkpoint (format version 1): one flat config with
    a bare ``size``, DR networks of a bundle flat too."""
    d = {"format": "drkit.checkpoint", "format_version": 1, "drkit_version": "0.1.0", "kind": ck.kind,
         "model": ck.model.to_dict(), "state_dict": ck.state_dict, "train_state": ck.train_state}
    if ck.kind == "dr":
        c = ck.config
        d["config"] = {"T": c.T, "stride": c.stride, "size": c.net_size, **c.train, "input": c.input,
                       "ref_fps": c.ref_fps, "score": c.score}
    else:
        c = ck.config.to_dict()
        c["size"] = c.pop("map_size")
        d["config"] = c
        d["dr_nets"] = [{"model": n.model.to_dict(), "state_dict": n.state_dict, "size": n.config.net_size,
                         "T": n.config.T, "stride": n.config.stride} for n in ck.dr_nets]
    return d


@pytest.fixture(scope="module")
def bundle(task_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("fmt") / "run"
    train_task.run(train_task.TrainTaskConfig(input=[task_data["mdr"]], out=out, labels=task_data["labels"],
                                              input_kind="mdr", epochs=1))
    return out / "best.pt"


def test_dr_checkpoint_of_0_1_0_opens_and_ranks_the_same(task_data, tmp_path):
    new = load_checkpoint(task_data["drs"][1], "dr")
    assert new.config.net_size == 32 and new.config.T == 2 and new.config.objective == "rank"
    old_path = tmp_path / "old.pt"
    torch.save(as_written_by_0_1_0(new), old_path)
    old = load_checkpoint(old_path, "dr")
    assert old.config.to_dict() == new.config.to_dict()      # migrated to the same record
    assert old.model == new.model
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(old.build_model()(x), new.build_model()(x), rtol=0, atol=0)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert cli("rank-eval", old_path, task_data["faces"], "--json", a).returncode == 0
    assert cli("rank-eval", task_data["drs"][1], task_data["faces"], "--json", b).returncode == 0
    assert json.loads(a.read_text()) == json.loads(b.read_text())


def test_task_bundle_of_0_1_0_predicts_the_same(task_data, bundle, tmp_path):
    new = load_checkpoint(bundle, "task")
    old_path = tmp_path / "old_bundle.pt"
    torch.save(as_written_by_0_1_0(new), old_path)
    old = load_checkpoint(old_path, "task")
    assert old.config.map_size == new.config.map_size == 32
    assert old.config.preprocess.crop_size == 32
    assert [n.config.net_size for n in old.dr_nets] == [32, 32]
    crops = (np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3))).astype(np.uint8)
    y_old, m_old = Predictor(old).predict_crops(crops)
    y_new, m_new = Predictor(new).predict_crops(crops)
    np.testing.assert_array_equal(y_old, y_new)
    np.testing.assert_array_equal(m_old, m_new)
    e_old = evaluate_bundle(old, [task_data["mdr"]], task_data["labels"])
    e_new = evaluate_bundle(new, [task_data["mdr"]], task_data["labels"])
    assert e_old == e_new and e_new["frames"] == 8 * 48


def test_predictor_equals_gen_dr_input_and_the_bundle(task_data, bundle):
    """The MDR the predictor computes for a stored crop is what gen-dr stored (float16)."""
    p = Predictor.from_bundle(bundle.parent, device="cpu")
    faces, mdr = open_store(task_data["faces"]), open_store(task_data["mdr"])
    crops = faces.video("p2.avi")["frames"][:6]
    _, m = p.predict_crops(crops)
    np.testing.assert_allclose(m, mdr.video("p2.avi")["mdr"][:6].astype(np.float32), atol=2e-3, rtol=2e-3)


def test_checkpoint_round_trip_and_refusals(task_data, bundle, tmp_path):
    ck = load_checkpoint(bundle, "task")
    d = ck.to_dict()
    assert d["format_version"] == CHECKPOINT_FORMAT_VERSION and "map_size" in d["config"]
    again = Checkpoint.from_dict(d)
    assert again.config == ck.config and again.model == ck.model and len(again.dr_nets) == 2
    with pytest.raises(DrkitError, match="expected a 'dr' checkpoint"):
        load_checkpoint(bundle, "dr")
    future = dict(d, format_version=99)
    torch.save(future, tmp_path / "future.pt")
    with pytest.raises(DrkitError, match=r"future\.pt: checkpoint format version 99.*upgrade drkit"):
        load_checkpoint(tmp_path / "future.pt")
    broken = dict(d)
    broken["config"] = {k: v for k, v in d["config"].items() if k != "targets"}
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(DrkitError, match=r"broken\.pt: config: missing targets"):
        load_checkpoint(tmp_path / "broken.pt")
    wrong = dict(d, state_dict={"x": torch.zeros(1)})
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(DrkitError, match=r"wrong\.pt: weights do not fit model 'small_cnn'"):
        load_checkpoint(tmp_path / "wrong.pt").build_model()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(DrkitError, match=r"junk\.pt: not a drkit checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def test_store_params_typed_views(task_data):
    faces, mdr = open_store(task_data["faces"]), open_store(task_data["mdr"])
    fp = faces.typed_params
    assert isinstance(fp, FaceStoreParams) and fp.crop_size == 32 and fp.to_dict()["crop_size"] == 32
    dp = mdr.typed_params
    assert isinstance(dp, DRStoreParams) and dp.map_size == 32 and len(dp.channels) == 9
    assert [c.T for c in dp.checkpoints] == [1, 2] and dp.face_params.crop_size == 32
    assert dp.to_dict() == mdr.params                     # the JSON on disk, key for key
    # what 0.1.0 wrote for a DR store's params parses to the same record
    old = {"size": 32, "channels": dp.channels, "image": True, "source_store": dp.source_store,
           "source_params": {"size": 32, "align": True}, "checkpoints": [
               {"sha256_16": c.sha256_16, "T": c.T, "stride": c.stride, "size": c.net_size, "model": c.model,
                "path": c.path} for c in dp.checkpoints]}
    assert DRStoreParams.from_dict(old).checkpoints == dp.checkpoints
    with pytest.raises(DrkitError, match="missing channels"):
        DRStoreParams.from_dict({k: v for k, v in old.items() if k != "channels"}, "x.zarr")


def test_a_schema_1_store_with_size_keys_still_opens_and_grows(tmp_path):
    """Stores of drkit 0.1-0.2 (schema 1) name their sides 'size'; they open, read as typed
    records, and a later run adds to them with the same crop size or is refused naming it."""
    import json

    from drkit.configs import PreprocessConfig
    from drkit.store import StoreError, create_store
    cfg = PreprocessConfig(inputs=["x"], out=str(tmp_path / "old.zarr"), crop_size=64)
    create_store(cfg.out, "faces", cfg.store_params())
    zj = tmp_path / "old.zarr" / "zarr.json"
    meta = json.loads(zj.read_text())
    d = meta["attributes"]["drkit"]
    d["schema_version"] = 1
    d["params"]["size"] = d["params"].pop("crop_size")
    zj.write_text(json.dumps(meta))
    st = open_store(tmp_path / "old.zarr", "faces")
    assert st.typed_params.crop_size == 64 and st.params["size"] == 64
    assert create_store(cfg.out, "faces", cfg.store_params()).path == st.path     # same settings: reopened
    with pytest.raises(StoreError, match="crop_size=64 .asked 96"):
        create_store(cfg.out, "faces", PreprocessConfig(inputs=["x"], out=cfg.out, crop_size=96).store_params())


def test_one_chunk_rule_for_every_image_array():
    assert face_arrays(224)["frames"].chunk_frames == chunk_frames(224 * 224 * 3) == 14
    assert face_arrays(112)["frames"].chunk_frames == 56
    assert face_arrays(32)["frames"].chunk_frames == 64          # capped
    assert dr_arrays(9, 224)["mdr"].chunk_frames == chunk_frames(2 * 9 * 224 * 224) == 8   # floor
    assert dr_arrays(6, 80)["mdr"].chunk_frames == 27
    assert face_arrays(64)["landmarks"].chunk_frames == 1024


def test_video_writer_writes_each_chunk_once(tmp_path, monkeypatch):
    """Images are written a chunk at a time; the small per-frame arrays (landmarks, ...) once per
    chunk of their own, not rewritten with every chunk of images (that made preprocess slower
    the longer the video)."""
    from drkit.configs import PreprocessConfig
    from drkit.contracts import face_arrays
    from drkit.store import VideoWriter, create_store, open_store
    cfg = PreprocessConfig(inputs=["x"], out=str(tmp_path / "s.zarr"), crop_size=64)
    create_store(cfg.out, "faces", cfg.store_params())
    specs = face_arrays(64)
    writes: list[tuple[str, int, int]] = []
    real = VideoWriter._write
    monkeypatch.setattr(VideoWriter, "_write", lambda self, k, start, rows: (
        writes.append((k, start, len(rows))), real(self, k, start, rows))[-1])
    n, rng = 150, np.random.default_rng(0)
    frames = rng.integers(0, 255, (n, 64, 64, 3), np.uint8)
    with VideoWriter(cfg.out, "v", specs, "faces") as w:
        for i in range(0, n, 16):
            m = min(16, n - i)
            w.append(frames=frames[i:i + m], landmarks=np.full((m, 68, 2), i, np.float32),
                     frame_index=np.arange(i, i + m), confidence=np.ones(m), detected=np.ones(m, bool),
                     transform=np.zeros((m, 2, 3), np.float32))
        w.commit({"source": "x", "fps": 25.0, "n_source_frames": n})
    c = specs["frames"].chunk_frames
    assert [x for x in writes if x[0] == "frames"] == [("frames", s, min(c, n - s)) for s in range(0, n, c)]
    assert [x for x in writes if x[0] == "landmarks"] == [("landmarks", 0, n)]
    g = open_store(cfg.out).video("v")
    assert np.array_equal(g["frames"][:], frames) and np.array_equal(g["frame_index"][:], np.arange(n))


def test_predict_tracks_as_the_training_store_was_tracked(bundle):
    """A bundle's FaceTracker takes the landmark reuse and the re-detection region of its face
    store's params: 0 (a fit on every frame) and the whole frame, as before 0.3.0, for bundles
    whose params predate the settings."""
    ck = load_checkpoint(bundle, "task")
    d = ck.config.preprocess.to_dict()
    for k in ("reuse_mad", "max_reuse", "redetect_region"):
        d.pop(k)
    ck.config.preprocess = type(ck.config.preprocess).from_dict(d)
    p = Predictor(ck)
    assert p.tracker().reuse_mad == 0.0 and not p.tracker().redetect_region
    p.redetect_region = True   # predict --redetect-region
    assert p.tracker().redetect_region
    p.reuse_mad = 3.0     # predict --reuse-mad 3: reuse for a bundle whose store had none
    from drkit.configs import MAX_REUSE
    assert (p.tracker().reuse_mad, p.tracker().max_reuse) == (3.0, MAX_REUSE)
    ck.config.preprocess.reuse_mad, ck.config.preprocess.max_reuse = 3.0, 4
    ck.config.preprocess.redetect_region = True
    tr = Predictor(ck).tracker()
    assert (tr.reuse_mad, tr.max_reuse, tr.redetect_region) == (3.0, 4, True)


@pytest.mark.parametrize("kind, setting, off, on", [
    ("dr", "init", None, "runs/t5/best.pt"), ("dr", "shift", 0.0, 0.05),
    ("task", "dropout", None, 0.3), ("task", "dr_norm", "none", "video"),
    ("task", "image_norm", "none", "video"), ("task", "dr_dropout", 0.0, 0.3)])
def test_a_later_setting_is_recorded_only_when_used(kind, setting, off, on):
    """A run that leaves a later-added setting off keeps the record (and so the resume check) that
    runs made before the setting existed have; one that uses it records it."""
    from drkit.configs import TrainDRConfig, TrainTaskConfig, recorded_settings
    make = ((lambda **kw: TrainDRConfig(stores=["a.zarr"], out="o", **kw)) if kind == "dr"
            else (lambda **kw: TrainTaskConfig(input=["a.zarr"], out="o", labels="l.csv", **kw)))
    assert setting not in recorded_settings(make(**{setting: off}), ())
    rec = recorded_settings(make(**{setting: on}), ())
    assert str(rec[setting]) == str(on if setting != "init" else make(init=on).init)
    assert "seed" in rec and "out" not in recorded_settings(make(), ("out",))
