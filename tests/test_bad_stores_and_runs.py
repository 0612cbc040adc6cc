"""Crafted and rotting inputs, and runs that collide: video ids that try to leave the store, two
trainings into one run folder, damaged checkpoints and chunks, SIGTERM, id collisions, label files
that are not what they claim, damaged stores under inspect, odd frame rates, messages that must
name the user's path, and CSV cells a spreadsheet would run (issue 20). Each test fails on 0.2.0."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli, face_frames, make_face_store, moving_blob_frames, write_video

from drkit import log
from drkit.checkpoint import load_checkpoint, save_checkpoint
from drkit.errors import DrkitError
from drkit.fsutil import run_lock
from drkit.store import id_problem, open_store, video_id_from_path

DRKIT = [sys.executable, "-m", "drkit.cli"]


@pytest.fixture
def warnings(monkeypatch) -> list[str]:
    seen: list[str] = []
    monkeypatch.setattr(log, "warn", seen.append)
    return seen


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> SHA-256), folders included as entries."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    """A 32-px face store of two blob videos and a tiny DR trained on it."""
    d = tmp_path_factory.mktemp("blobs")
    store = make_face_store(d / "faces.zarr", {f"b{i}.avi": moving_blob_frames(30, 32, seed=i) for i in range(2)})
    r = cli("train-dr", store, "-o", d / "dr", "--T", "2", "--stride", "1", "--size", "32", "--base", "4",
            "--depth", "2", "--epochs", "1")
    assert r.returncode == 0, r.stderr
    return d, store, d / "dr"


def _relist(store: Path, ids: dict[str, str]) -> None:
    """Rename listed videos in a store's root attributes (what a crafted store would hold)."""
    meta = json.loads((store / "zarr.json").read_text())
    v = meta["attributes"]["videos"]
    for old, new in ids.items():
        v[new] = v.pop(old)
    (store / "zarr.json").write_text(json.dumps(meta))


# ------------------------------------------------------------------------------- video ids

@pytest.mark.parametrize("bad", ["../../precious", "../victim", "/tmp/abs_victim", "a/b", "..", ".hidden",
                                 "_partial", "x\x00y", "é", "a" * 201, ""])
def test_unsafe_ids_are_refused(bad):
    assert id_problem(bad)


def test_ids_made_from_paths_are_safe_and_stable():
    names = ["a b.avi", "a?b.avi", "a_b.avi", "../../x.mp4", "clips/s01/a b.mp4", "_x.mp4", ".x.mp4",
             "é.mp4", "x" * 400 + ".mp4", "sub/b.avi"]
    ids = [video_id_from_path(n) for n in names]
    assert all(id_problem(v) is None for v in ids), ids
    assert len(set(ids)) == len(ids)
    assert ids[2] == "a_b.avi" and ids[-1] == "sub__b.avi"     # names that need no change keep them
    assert ids[0].startswith("a_b.avi-") and ids[1].startswith("a_b.avi-")
    assert [video_id_from_path(n) for n in names] == ids       # a function of the path alone


@pytest.mark.parametrize("bad", ["../../precious", "../victim", "/tmp/drkit_abs_victim"])
def test_a_store_with_a_traversal_id_touches_nothing_outside(blobs, tmp_path, bad):
    d, faces, dr = blobs
    work = tmp_path / "w"
    work.mkdir()
    store = work / "sub" / "faces.zarr"
    import shutil
    shutil.copytree(faces, store)
    (work / "precious").mkdir()
    (work / "precious" / "keep.txt").write_text("mine")
    (work / "sub" / "victim").mkdir()
    _relist(store, {"b0.avi": bad})
    before = tree_digest(work)
    abs_before = Path("/tmp/drkit_abs_victim").exists()
    out = work / "sub" / "out.zarr"
    for args in (["gen-dr", store, "-o", out, "--dr", dr], ["inspect", store],
                 ["train-dr", store, "-o", work / "sub" / "run", "--T", "1", "--stride", "1", "--size", "32",
                  "--base", "4", "--depth", "2", "--epochs", "1"],
                 ["rank-eval", dr, store]):
        r = cli(*args)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        msg = one_line(r.stderr)
        assert "not a safe name" in msg and str(store) in msg and repr(bad) in msg, msg
        assert "internal error" not in msg
    assert tree_digest(work) == before    # nothing written, deleted or created anywhere
    assert Path("/tmp/drkit_abs_victim").exists() == abs_before


def test_id_collisions_are_stable_and_reported(tmp_path, warnings):
    src = tmp_path / "in"
    src.mkdir()
    for i, name in enumerate(["a b.avi", "a?b.avi", "a_b.avi"]):
        write_video(src / name, face_frames(6, size=120, seed=i))
    store = tmp_path / "s.zarr"
    r = cli("preprocess", src, "-o", store, "--size", "64")
    assert r.returncode == 0, r.stderr
    st = open_store(store)
    by_source = {Path(st.video_info(v)["source"]).name: v for v in st.videos}
    assert by_source["a_b.avi"] == "a_b.avi" and len(set(by_source.values())) == 3
    # the file a_b.avi alone: it is the video a_b.avi, already done (not a lookalike's)
    r = cli("preprocess", src / "a_b.avi", "-o", store, "--size", "64")
    assert r.returncode == 0 and "1 skipped" in one_line(r.stderr), r.stderr
    # another file of that name, given directly, would take its id: reported, nothing replaced
    other = tmp_path / "other"
    other.mkdir()
    write_video(other / "a_b.avi", face_frames(6, size=120, seed=9))
    before = tree_digest(store / "a_b.avi")
    r = cli("preprocess", other / "a_b.avi", "-o", store, "--size", "64", "--overwrite")
    assert r.returncode == 3, r.stderr
    assert "already taken" in one_line(r.stderr) and str(src / "a_b.avi") in one_line(r.stderr)
    assert tree_digest(store / "a_b.avi") == before
    # two inputs with one id in one run: a warning naming both
    from drkit.sources import discover
    warnings.clear()
    srcs = discover([src / "a_b.avi", other / "a_b.avi"])
    assert [s.id for s in srcs] == ["a_b.avi", "a_b.avi-2"]
    assert len(warnings) == 1 and "already" in warnings[0] and "a_b.avi" in warnings[0]


# ------------------------------------------------------------------------------- run folder lock

def _hold_lock(folder: Path) -> subprocess.Popen:
    code = ("import sys, time; from drkit.fsutil import run_lock\n"
            f"with run_lock({str(folder)!r}):\n    print('held', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


@pytest.mark.parametrize("stage", ["train-dr", "train-task"])
def test_a_second_run_into_a_held_folder_refuses_at_once(blobs, task_data, tmp_path, stage):
    d, store, _ = blobs
    run = tmp_path / "run"
    args = (["train-dr", store, "-o", run, "--T", "1", "--stride", "1", "--size", "32", "--base", "4",
             "--depth", "2", "--epochs", "1"] if stage == "train-dr" else
            ["train-task", task_data["mdr"], "--labels", task_data["labels"], "-o", run, "--epochs", "1"])
    holder = _hold_lock(run)
    try:
        t0 = time.time()
        r = cli(*args)
        assert time.time() - t0 < 20
        assert r.returncode == 1
        msg = one_line(r.stderr)
        assert "another run is writing into this folder" in msg and str(run) in msg
        assert f"process {holder.pid}" in msg
        assert not (run / "last.pt").exists() and not (run / "metrics.jsonl").exists()
    finally:
        holder.send_signal(signal.SIGKILL)   # a killed run: its lock goes with it
        holder.wait()
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_two_trainings_started_together_into_one_folder(blobs, tmp_path):
    d, store, _ = blobs
    run = tmp_path / "run"
    base = [*DRKIT, "-q", "train-dr", str(store), "-o", str(run), "--T", "1", "--stride", "1", "--size",
            "32", "--base", "4", "--depth", "2", "--epochs", "3"]
    ps = [subprocess.Popen([*base, "--seed", str(s)], stderr=subprocess.PIPE, text=True) for s in (0, 5)]
    res = [(p.wait(), p.stderr.read()) for p in ps]
    codes = sorted(c for c, _ in res)
    assert codes == [0, 1], res
    loser = next(e for c, e in res if c == 1)
    assert "another run is writing into this folder" in one_line(loser) or "holds a run already" in loser
    winner_seed = [0, 5][[c for c, _ in res].index(0)]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["config"]["train"]["seed"] == winner_seed
    assert load_checkpoint(run / "last.pt").config.train["seed"] == winner_seed
    assert load_checkpoint(run / "best.pt").config.train["seed"] == winner_seed
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3


def test_run_lock_is_reentrant_and_refuses_a_file(tmp_path):
    with run_lock(tmp_path / "r"):
        with run_lock(tmp_path / "r"):
            pass
    (tmp_path / "f").write_text("x")
    with pytest.raises(DrkitError, match="is a file"):
        with run_lock(tmp_path / "f"):
            pass


# ------------------------------------------------------------------------------- rot

def _flip_bytes(path: Path, offsets, mask: int = 0xFF) -> None:
    b = bytearray(path.read_bytes())
    for o in offsets:
        b[o] ^= mask
    path.write_bytes(bytes(b))


def test_a_checkpoint_whose_crc_fails_is_refused(blobs, tmp_path):
    d, store, dr = blobs
    p = tmp_path / "best.pt"
    p.write_bytes((dr / "best.pt").read_bytes())
    import zipfile
    with zipfile.ZipFile(p) as z:   # a byte inside the first weight tensor's data
        info = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size > 64)
    raw = p.read_bytes()
    h = info.header_offset            # the local header gives the data's offset (torch pads the extra field)
    off = h + 30 + int.from_bytes(raw[h + 26:h + 28], "little") + int.from_bytes(raw[h + 28:h + 30], "little") + 8
    _flip_bytes(p, [off], 0x40)
    with pytest.raises(DrkitError, match="damaged checkpoint file .*CRC"):
        load_checkpoint(p)
    r = cli("gen-dr", store, "-o", tmp_path / "o.zarr", "--dr", p)
    assert r.returncode == 1 and "damaged checkpoint" in r.stderr and not (tmp_path / "o.zarr" / "b0.avi").exists()


def test_non_finite_weights_are_refused_by_every_reader(blobs, task_bundle, task_data, tmp_path):
    d, store, dr = blobs
    ck = load_checkpoint(dr)
    k = next(k for k, v in ck.state_dict.items() if v.is_floating_point() and v.numel() > 1)
    ck.state_dict[k] = ck.state_dict[k].clone()
    ck.state_dict[k].view(-1)[0] = float("nan")
    bad = tmp_path / "nan.pt"
    save_checkpoint(ck, bad)
    for args in (["gen-dr", store, "-o", tmp_path / "o.zarr", "--dr", bad], ["rank-eval", bad, store]):
        r = cli(*args)
        assert r.returncode == 1, r.stdout
        assert f"weight {k} holds NaN" in one_line(r.stderr) and str(bad) in one_line(r.stderr)
    assert not (tmp_path / "o.zarr").exists()
    b = load_checkpoint(task_bundle)
    bias = [k for k in b.state_dict if k.endswith("bias")][-1]
    b.state_dict[bias] = torch.full_like(b.state_dict[bias], float("nan"))
    nb = tmp_path / "nan_bundle.pt"
    save_checkpoint(b, nb)
    img = tmp_path / "x.png"
    import cv2
    cv2.imwrite(str(img), np.zeros((32, 32, 3), np.uint8))
    r = cli("predict", nb, img, "-o", tmp_path / "p.csv")
    assert r.returncode == 1 and f"weight {bias} holds NaN" in one_line(r.stderr)
    assert not (tmp_path / "p.csv").exists()


def _frames_chunk(store: Path, vid: str) -> Path:
    return next(p for p in sorted((store / vid / "frames" / "c").rglob("*")) if p.is_file())


def test_a_rotten_frames_chunk_is_caught_by_readers(tmp_path, blobs):
    d, _, dr = blobs
    store = make_face_store(tmp_path / "f.zarr", {f"r{i}.avi": moving_blob_frames(30, 32, seed=i) for i in range(2)})
    _flip_bytes(_frames_chunk(store, "r1.avi"), range(40, 60))   # 20 bytes of compressed pixels
    for args in (["rank-eval", dr, store], ["gen-dr", store, "-o", tmp_path / "o.zarr", "--dr", dr],
                 ["train-dr", store, "-o", tmp_path / "run", "--T", "1", "--stride", "1", "--size", "32",
                  "--base", "4", "--depth", "2", "--epochs", "1"]):
        r = cli(*args)
        assert r.returncode == 1, (args, r.stdout)
        msg = one_line(r.stderr)
        assert "r1.avi" in msg and "'frames'" in msg and "checksum" in msg, msg
    assert cli("inspect", store).returncode == 0          # the quick look sees whole files
    r = cli("inspect", store, "--verify")
    assert r.returncode == 1 and "r1.avi" in r.stdout and "fails its checksum" in one_line(r.stdout)


def test_a_writer_redoes_a_rotten_video_instead_of_calling_it_done(tmp_path, blobs, clips_store):
    d, store, dr = blobs
    ref = tmp_path / "ref.zarr"
    assert cli("gen-dr", store, "-o", ref, "--dr", dr).returncode == 0
    out = tmp_path / "mdr.zarr"
    import shutil
    shutil.copytree(ref, out)
    _flip_bytes(next(p for p in sorted((out / "b0.avi" / "mdr" / "c").rglob("*")) if p.is_file()), range(40, 45))
    r = cli("gen-dr", store, "-o", out, "--dr", dr)
    assert r.returncode == 0, r.stderr
    assert "b0.avi: damaged" in one_line(r.stderr) and "checksum" in one_line(r.stderr)
    a, b = open_store(ref), open_store(out)
    for v in a.videos:
        np.testing.assert_array_equal(a.video(v)["mdr"][:], b.video(v)["mdr"][:])
    # preprocess likewise: a rerun redoes the rotten video ("repaired"), never "already done"
    src, faces = clips_store
    mine = tmp_path / "faces.zarr"
    shutil.copytree(faces, mine)
    _flip_bytes(_frames_chunk(mine, "v0.avi"), range(40, 60))
    r = cli("preprocess", src, "-o", mine, "--size", "64")
    assert r.returncode == 0 and "1 repaired" in one_line(r.stderr), r.stderr
    from conftest import assert_same_store
    assert_same_store(faces, mine)


@pytest.fixture(scope="module")
def clips_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    src = d / "in"
    src.mkdir()
    for i in range(2):
        write_video(src / f"v{i}.avi", face_frames(20, size=120, seed=50 + i))
    faces = d / "faces.zarr"
    assert cli("preprocess", src, "-o", faces, "--size", "64").returncode == 0
    return src, faces


def test_stores_without_checksums_still_open(tmp_path):
    """Stores of 0.2.0 were written without the crc32c codec: they open, read and verify as before."""
    import zarr
    store = make_face_store(tmp_path / "f.zarr", {"v.avi": moving_blob_frames(20, 32, seed=1)})
    g = zarr.open_group(store / "v.avi", mode="r+")
    frames = g["frames"][:]
    del g["frames"]
    a = g.create_array("frames", shape=frames.shape, chunks=(8, 32, 32, 3), dtype="uint8",
                       dimension_names=["frame", "y", "x", "channel"], fill_value=0,
                       config={"write_empty_chunks": True})
    a[:] = frames
    assert "crc32c" not in (store / "v.avi" / "frames" / "zarr.json").read_text()
    st = open_store(store)
    np.testing.assert_array_equal(st.video("v.avi")["frames"][:], frames)
    assert cli("inspect", store, "--verify").returncode == 0


# ------------------------------------------------------------------------------- SIGTERM

@pytest.mark.parametrize("delay", [0.0, 0.7])
def test_sigterm_is_like_ctrl_c_and_a_rerun_completes(tmp_path, delay):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):   # long enough that the run is still writing when the signal comes, however fast tracking gets
        write_video(src / f"v{i}.avi", face_frames(400, size=200, seed=40 + i))
    ref = tmp_path / "ref.zarr"
    assert cli("preprocess", src, "-o", ref, "--size", "64").returncode == 0
    out = tmp_path / "t.zarr"
    p = subprocess.Popen([*DRKIT, "preprocess", str(src), "-o", str(out), "--size", "64"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:     # once a video is being written
        part = out / "_partial"
        if part.is_dir() and any(q.is_dir() for q in part.iterdir()):
            break
        time.sleep(0.01)
    time.sleep(delay)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert lines[-1].startswith("terminated (SIGTERM): temporary files removed; rerun the same command")
    assert open_store(out).partial_leftovers() == []
    assert not list(out.rglob(".*.tmp*"))
    r = cli("preprocess", src, "-o", out, "--size", "64")
    assert r.returncode == 0, r.stderr
    from conftest import assert_same_store
    assert_same_store(ref, out)


def test_predict_rerun_removes_a_killed_runs_temporary_csv(task_bundle, tmp_path):
    import cv2
    img = tmp_path / "x.png"
    cv2.imwrite(str(img), np.zeros((32, 32, 3), np.uint8))
    out = tmp_path / "keep.csv"
    stale = tmp_path / ".keep.csv.tmp99999999"   # no such process
    stale.write_text("half a CSV")
    live = tmp_path / f".keep.csv.tmp{os.getppid()}"
    live.write_text("a live process's")
    r = cli("predict", task_bundle, img, "-o", out)
    assert r.returncode == 0, r.stderr
    assert not stale.exists() and live.exists() and out.is_file()


# ------------------------------------------------------------------------------- labels

def _labels(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "l.csv"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text,msg", [
    ("video,frame,person,AU06,AU06\nv,0,p,1,2\n", "names 'AU06' more than once"),
    ("video,frame,AU06\nv,-1,1\n", "frame '-1' is negative"),
    ("video,frame,AU06\nv,-30,1\n", "frame '-30' is negative"),
    ("video,frame,AU06\nv,1e23,1\n", "frame '1e23' is beyond any video"),
])
def test_bad_label_rows_are_refused(tmp_path, text, msg):
    from drkit.labels import read_labels
    with pytest.raises(DrkitError, match=msg):
        read_labels(_labels(tmp_path, text))


def test_labels_that_are_not_files(tmp_path):
    from drkit.labels import read_labels
    with pytest.raises(DrkitError, match="is a folder"):
        read_labels(tmp_path)
    with pytest.raises(DrkitError, match="not a regular file"):
        read_labels("/dev/zero")


def test_labels_past_the_end_of_a_video_are_reported(tmp_path, warnings):
    from drkit.labels import read_labels
    from drkit.tasks import labelled_frames
    store = make_face_store(tmp_path / "s.zarr", {"v": moving_blob_frames(10, 32)})
    lab = read_labels(_labels(tmp_path, "video,frame,AU06\n" + "".join(f"v,{i},1\n" for i in range(1, 13))))
    s = labelled_frames([open_store(store)], lab)
    assert len(s) == 9
    assert len(warnings) == 1 and "3 label row(s) name frames past the end" in warnings[0] and "12" in warnings[0]


# ------------------------------------------------------------------------------- inspect

def test_inspect_reports_damaged_videos(tmp_path):
    store = make_face_store(tmp_path / "s.zarr", {f"v{i}": moving_blob_frames(20, 32, seed=i) for i in range(3)})
    (store / "v0" / "frames" / "zarr.json").unlink()
    next(p for p in sorted((store / "v1" / "frames" / "c").rglob("*")) if p.is_file()).unlink()
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["videos"]["v2"]["n_frames"] = 10 ** 12
    (store / "zarr.json").write_text(json.dumps(meta))
    r = cli("inspect", store)
    assert r.returncode == 1
    out = one_line(r.stdout)
    assert "array 'frames' is missing" in out and "misses chunk" in out and "arrays hold 20" in out
    assert "0 of 3 ok" in out and "500000000" not in out
    assert "3 damaged video(s)" in one_line(r.stderr)


# ------------------------------------------------------------------------------- frame rates

def test_unusual_fps_is_warned_at_preprocess_and_named_by_train_dr(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write_video(src / "fast.avi", face_frames(30, size=120), fps=999)
    store = tmp_path / "s.zarr"
    r = cli("preprocess", src, "-o", store, "--size", "64")
    assert r.returncode == 0
    assert "reports 999 fps, unusual for face video" in one_line(r.stderr)
    r = cli("train-dr", store, "-o", tmp_path / "run", "--T", "5", "--stride", "2", "--size", "64",
            "--base", "4", "--epochs", "1")
    assert r.returncode == 1
    msg = one_line(r.stderr)
    assert "999 fps" in msg and "every 80th source frame" in msg and "longest video has 30 frames" in msg


# ------------------------------------------------------------------------------- messages

def test_errors_name_the_users_path_not_a_temporary_file(blobs, tmp_path):
    d, store, dr = blobs
    target = tmp_path / ("r" * 250 + ".json")   # its temporary name is too long for the file system
    r = cli("rank-eval", dr, store, "--json", target)
    assert r.returncode == 1
    msg = one_line(r.stderr)
    assert str(target) in msg and ".tmp" not in msg


def test_a_full_disk_at_a_checkpoint_save_keeps_the_old_file(blobs, tmp_path, monkeypatch):
    d, store, dr = blobs
    p = tmp_path / "last.pt"
    ck = load_checkpoint(dr)
    save_checkpoint(ck, p)
    before = p.read_bytes()

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1234 vs 1200")
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DrkitError) as e:
        save_checkpoint(ck, p)
    assert str(p) in str(e.value) and "could not write the checkpoint" in str(e.value)
    assert "MB free" in str(e.value) and "intact" in str(e.value)
    assert p.read_bytes() == before and not list(tmp_path.glob(".last.pt.tmp*"))


def test_output_paths_that_are_files_or_blocked(blobs, tmp_path):
    d, store, dr = blobs
    f = tmp_path / "file"
    f.write_text("x")
    r = cli("train-dr", store, "-o", f, "--T", "1", "--stride", "1", "--size", "32", "--epochs", "1")
    assert r.returncode == 1 and "is a file; -o takes the run folder" in one_line(r.stderr)
    out = tmp_path / "o.zarr"
    out.mkdir()
    (out / "_partial").write_text("in the way")
    r = cli("gen-dr", store, "-o", out, "--dr", dr)
    assert r.returncode == 1
    msg = one_line(r.stderr)
    assert "_partial: is a file" in msg and "File exists" not in msg


def test_a_plain_pickle_checkpoint_is_one_line(blobs, tmp_path):
    import pickle
    d, store, _ = blobs
    p = tmp_path / "plain.pt"
    p.write_bytes(pickle.dumps({"state_dict": {}}))
    r = subprocess.run([*DRKIT, "rank-eval", str(p), str(store)], capture_output=True, text=True)
    assert r.returncode == 1
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "not a drkit checkpoint" in lines[0], r.stderr


def test_same_video_in_two_stores_is_one_clear_line(blobs, tmp_path):
    d, store, dr = blobs
    import shutil
    other = tmp_path / "copy.zarr"
    shutil.copytree(store, other)
    r = cli("rank-eval", dr, store, other)
    assert r.returncode == 1
    msg = one_line(r.stderr)
    assert "is in both" in msg and "internal error" not in msg


def test_predict_output_cannot_run_as_a_spreadsheet_formula(task_bundle, tmp_path, monkeypatch):
    import csv

    import cv2
    names = ["=cmd|calc.png", "+1.png", "@x.png", "-2.png", "ok.png"]
    for name in names:
        cv2.imwrite(str(tmp_path / name), np.zeros((32, 32, 3), np.uint8))
    monkeypatch.chdir(tmp_path)
    assert cli("predict", task_bundle, "-o", "p.csv", "--", *names).returncode == 0
    cells = [r[0] for r in list(csv.reader(open("p.csv")))[1:]]
    assert cells == ["'=cmd|calc.png", "'+1.png", "'@x.png", "'-2.png", "ok.png"]
