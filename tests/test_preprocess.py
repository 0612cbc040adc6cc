"""drkit preprocess and the face store: shapes, masking, bad input, resume, shards, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import zarr
from conftest import assert_same_store, cli, face_frames, real_videos, write_video

from drkit.errors import DrkitError, NothingProcessed
from drkit.faces import hull_mask
from drkit.stages.preprocess import PreprocessConfig, run
from drkit.store import StoreError, create_store, open_store

DRKIT = [sys.executable, "-m", "drkit.cli"]
_cli = cli


def test_store_contents(face_store):
    st = open_store(face_store, "faces")
    assert st.videos == ["a.avi", "c.mp4", "sub__b.avi"]
    assert st.params["crop_size"] == 96 and "size" not in st.params   # one name per size, on disk too
    for vid in st.videos:
        g = st.video(vid)
        n = g.attrs["n_frames"]
        fr, lm, idx = g["frames"], g["landmarks"][:], g["frame_index"][:]
        assert fr.shape == (n, 96, 96, 3) and fr.dtype == np.uint8
        assert lm.shape == (n, 68, 2) and lm.dtype == np.float32
        assert g["transform"].shape == (n, 2, 3) and g["confidence"].shape == (n,)
        assert np.all(np.diff(idx) > 0), "frame_index must be strictly increasing"
        assert lm.min() >= 0 and lm.max() <= 96, "landmarks must lie inside the crop"
        assert fr.metadata.dimension_names == ("frame", "y", "x", "channel")
        frames = fr[:]
        for k in (0, n // 2, n - 1):
            outside = hull_mask(lm[k], 96) == 0
            assert frames[k][outside].max() == 0, "pixels outside the landmark hull must be zero"
            assert frames[k][~outside].mean() > 20, "the face inside the hull must be kept"
        assert g.attrs["complete"] and g.attrs["crop_size"] == 96
        assert g.attrs["backend"] == "dlib" and "dlib" in g.attrs["backend_version"]
    assert st.video("sub__b.avi").attrs["fps"] == pytest.approx(50)
    assert st.video_info("a.avi")["n_frames"] == 40


def test_faceless_frames_are_dropped_and_recorded(face_store):
    g = open_store(face_store).video("c.mp4")
    idx = g["frame_index"][:].tolist()
    assert not {10, 11, 12} & set(idx), "blank frames have no face and must not be stored"
    assert set(range(10)) <= set(idx), "every frame before the blank ones has the face"
    assert len(idx) >= 31, f"at most 2 of the 33 face frames may be missed, stored {len(idx)}"
    assert g.attrs["n_source_frames"] == 36
    assert g["detected"][:][idx.index(13)], "the face must be re-detected after it was lost"


def test_landmarks_track_the_face(face_store):
    """Landmarks in source coordinates (via the stored transform) follow the moving face: the
    crop transform maps them back onto the points dlib finds by detecting from scratch."""
    from drkit.faces import make_backend
    be = make_backend("dlib")
    g = open_store(face_store).video("a.avi")
    frames = face_frames(40, seed=1)
    errs = []
    for k in (5, 17, 33):
        M = np.vstack([g["transform"][k], [0, 0, 1]])
        lm_src = cv2.transform(g["landmarks"][k][None].astype(np.float64), np.linalg.inv(M)[:2])[0]
        f = cv2.imdecode(cv2.imencode(".jpg", frames[k])[1], cv2.IMREAD_COLOR)
        det = max(be.detect(f), key=lambda d: d.area)
        ref = be.landmarks(f, det.box)
        iod = np.linalg.norm(ref[36] - ref[45])
        errs.append(np.linalg.norm(lm_src - ref, axis=1).mean() / iod)
    assert max(errs) < 0.1, errs


def test_bad_inputs_are_skipped_and_reported(tmp_path, videos):
    (tmp_path / "corrupt.mp4").write_bytes(os.urandom(5000))
    (tmp_path / "empty.avi").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a video")
    out = tmp_path / "s.zarr"
    s = run(PreprocessConfig(inputs=[str(tmp_path / "corrupt.mp4"), str(tmp_path / "empty.avi"),
                                     str(tmp_path / "notes.txt"), str(videos / "a.avi")],
                             out=str(out), crop_size=64))
    assert s.ok == ["a.avi"]
    assert set(map(lambda p: Path(p).name, s.failed)) == {"corrupt.mp4", "empty.avi", "notes.txt"}
    assert "not a video" in s.failed[str(tmp_path / "notes.txt")]
    st = open_store(out)
    assert st.videos == ["a.avi"] and len(st.failed) == 3
    assert st.root.attrs["runs"][-1]["failed"] == 3


def test_nothing_processed_exits_3(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 100)
    r = _cli("preprocess", tmp_path / "bad.mp4", "-o", tmp_path / "s.zarr")
    assert r.returncode == 3
    assert "error:" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(NothingProcessed):
        run(PreprocessConfig(inputs=[str(tmp_path / "bad.mp4")], out=str(tmp_path / "t.zarr")))


def test_image_folder_sequence(tmp_path):
    seq = tmp_path / "seq01"
    seq.mkdir()
    for i, f in enumerate(face_frames(12, seed=4)):
        cv2.imwrite(str(seq / f"img_{i + 1}.png"), f)   # natural order: img_2 before img_10
    s = run(PreprocessConfig(inputs=[str(seq)], out=str(tmp_path / "s.zarr"), crop_size=64, fps=30))
    g = open_store(tmp_path / "s.zarr").video("seq01")
    assert s.ok == ["seq01"] and g.attrs["fps"] == 30 and g.attrs["source_kind"] == "images"
    assert g["frame_index"][:].tolist() == list(range(1, 13))   # numbers from the file names


def test_rerun_skips_complete_and_settings_must_match(tmp_path, videos):
    out = tmp_path / "s.zarr"
    cfg = PreprocessConfig(inputs=[str(videos / "a.avi")], out=str(out), crop_size=64)
    assert run(cfg).ok == ["a.avi"]
    again = run(cfg)
    assert again.ok == [] and again.skipped == ["a.avi"]
    with pytest.raises(StoreError, match="size=64"):
        run(PreprocessConfig(inputs=[str(videos / "a.avi")], out=str(out), crop_size=128))


def test_kill_and_resume_equals_uninterrupted(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        write_video(src / f"v{i}.avi", face_frames(120, size=240, seed=10 + i))
    ref = tmp_path / "ref.zarr"
    run(PreprocessConfig(inputs=[str(src)], out=str(ref), crop_size=64))

    out = tmp_path / "killed.zarr"
    p = subprocess.Popen([*DRKIT, "-q", "preprocess", str(src), "-o", str(out), "--size", "64"])
    deadline = time.time() + 120
    while time.time() < deadline:   # kill -9 once one video is complete and another half-written
        p.send_signal(signal.SIGSTOP)   # freeze it, so the state checked is the state killed
        partial = [d for d in (out / "_partial").glob("v*") if d.is_dir()] if out.exists() else []
        if partial and any((out / f"v{i}.avi").exists() for i in range(4)):
            break
        p.send_signal(signal.SIGCONT)
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    st = open_store(out)
    assert 0 < len(st.videos) < 4, "the kill should land between the first and the last video"
    assert st.partial_leftovers(), "a half-written video must stay in scratch, not in the store"
    for v in st.videos:   # whatever is listed is complete
        assert st.video(v).attrs["complete"]
    r = _cli("preprocess", src, "-o", out, "--size", "64")
    assert r.returncode == 0, r.stderr
    assert "skipped" in r.stderr
    assert_same_store(ref, out)
    assert open_store(out).partial_leftovers() == []


def test_shards_fill_one_store(tmp_path, videos):
    out = tmp_path / "s.zarr"
    a = run(PreprocessConfig(inputs=[str(videos)], out=str(out), crop_size=64, shard="0/2"))
    b = run(PreprocessConfig(inputs=[str(videos)], out=str(out), crop_size=64, shard="1/2"))
    assert sorted(a.ok + b.ok) == ["a.avi", "c.mp4", "sub__b.avi"] and not set(a.ok) & set(b.ok)
    ref = tmp_path / "ref.zarr"
    run(PreprocessConfig(inputs=[str(videos)], out=str(ref), crop_size=64, workers=2))
    assert_same_store(ref, out)
    with pytest.raises(DrkitError, match="--shard"):
        run(PreprocessConfig(inputs=[str(videos)], out=str(out), shard="2/2"))


def test_store_validation_messages(tmp_path):
    with pytest.raises(StoreError, match="no such drkit store"):
        open_store(tmp_path / "nope.zarr")
    g = zarr.open_group(tmp_path / "plain.zarr", mode="w")
    with pytest.raises(StoreError, match="not a drkit store"):
        open_store(tmp_path / "plain.zarr")
    st = create_store(tmp_path / "x.zarr", "faces", {"size": 64})
    meta = json.loads((st.path / "zarr.json").read_text())
    meta["attributes"]["drkit"]["schema_version"] = 99
    (st.path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="schema version 99"):
        open_store(st.path)
    with pytest.raises(StoreError, match="expected a 'dr' store"):
        open_store(create_store(tmp_path / "y.zarr", "faces", {}).path, "dr")
    del g


def test_cli_basics(tmp_path, face_store, monkeypatch):
    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("drkit ")
    r = _cli("preprocess", tmp_path / "missing", "-o", tmp_path / "s.zarr")
    assert r.returncode == 1 and "no such file or folder" in r.stderr and "Traceback" not in r.stderr
    r = _cli("inspect", face_store)
    assert r.returncode == 0 and "a.avi" in r.stdout and "total" in r.stdout
    png = tmp_path / "f.png"
    r = _cli("inspect", face_store, "--video", "a.avi", "--frame", "3", "-o", png)
    assert r.returncode == 0 and cv2.imread(str(png)).shape == (192, 192, 3)
    r = _cli("inspect", face_store, "--video", "c.mp4", "--frame", "11", "-o", png)
    assert r.returncode == 1 and "has no face" in r.stderr
    monkeypatch.chdir(tmp_path)   # without -o the picture is <video>_frame<N>.png here
    r = _cli("inspect", face_store, "--video", "a.avi", "--frame", "3")
    assert r.returncode == 0 and cv2.imread("a.avi_frame3.png").shape == (192, 192, 3)
    r = _cli("inspect", face_store, "--video", "a.avi")
    assert r.returncode == 2 and "go with --frame" in r.stderr


def test_insightface_backend_names_missing_models(tmp_path):
    from drkit.faces import make_backend
    with pytest.raises(DrkitError, match="--model-root"):
        make_backend("insightface", None)
    (tmp_path / "models" / "buffalo_l").mkdir(parents=True)
    with pytest.raises(DrkitError, match="1k3d68.onnx"):
        make_backend("insightface", str(tmp_path))


@pytest.mark.realdata
def test_real_videos(tmp_path):
    vids = [v for v in real_videos() if v.suffix == ".mp4"][::12][:3]
    s = run(PreprocessConfig(inputs=[str(v) for v in vids], out=str(tmp_path / "r.zarr"), crop_size=112))
    st = open_store(tmp_path / "r.zarr")
    assert len(s.ok) == len(vids) and not s.failed
    for v in st.videos:
        info = st.video_info(v)
        assert info["n_frames"] >= 0.9 * info["n_source_frames"], (v, info)
        lm = st.video(v)["landmarks"][:]
        assert lm.min() >= 0 and lm.max() <= 112


def test_read_ahead_decoding_gives_the_same_store(tmp_path, videos, monkeypatch):
    """Frames decoded in a background thread (a core to spare) or inline (every core busy) must
    make the same store; the thread must really be used when a core is free."""
    import drkit.stages.preprocess as pp
    used = []

    real = pp.read_ahead

    def spy(gen, depth, enabled=True):
        used.append(enabled)
        return real(gen, depth, enabled)

    monkeypatch.setattr(pp, "read_ahead", spy)
    monkeypatch.setattr(pp, "available_cores", lambda: 1)
    run(PreprocessConfig(inputs=[str(videos)], out=str(tmp_path / "inline.zarr"), crop_size=64))
    assert used == [False] * 3
    monkeypatch.setattr(pp, "available_cores", lambda: 4)
    run(PreprocessConfig(inputs=[str(videos)], out=str(tmp_path / "ahead.zarr"), crop_size=64))
    assert used == [False] * 3 + [True] * 3
    assert_same_store(tmp_path / "inline.zarr", tmp_path / "ahead.zarr")


def test_read_ahead_passes_errors_and_stops_the_producer():
    from drkit.background import ReadAhead
    closed = []

    def gen(fail_at):
        try:
            for i in range(100):
                if i == fail_at:
                    raise ValueError("decoder broke")
                yield i
        finally:
            closed.append(fail_at)

    with ReadAhead(gen(5), depth=2) as ra:   # the error arrives after the items before it
        got = []
        with pytest.raises(ValueError, match="decoder broke"):
            for i in ra:
                got.append(i)
    assert got == [0, 1, 2, 3, 4]
    with ReadAhead(gen(None), depth=2) as ra:   # the consumer stops early: the producer is closed
        assert next(iter(ra)) == 0
    assert not ra.thread.is_alive() and closed == [5, None]
