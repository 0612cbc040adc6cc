"""Nothing lost under concurrency and kills: concurrent runs into one store, shard races on a new
store, kill -9 with workers, damaged videos found and redone, outputs never replaced by partial
ones. Each final store is compared, array by array, with one uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import assert_same_store, cli, face_frames, write_video

from drkit.configs import GenDRConfig, PreprocessConfig
from drkit.stages import gen_dr, preprocess
from drkit.store import StoreError, open_store

DRKIT = [sys.executable, "-m", "drkit.cli", "-q"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Five small face videos and the store one uninterrupted run makes of them."""
    d = tmp_path_factory.mktemp("clips")
    src = d / "in"
    src.mkdir()
    for i in range(5):
        write_video(src / f"v{i}.avi", face_frames(48, size=160, seed=20 + i))
    ref = d / "ref.zarr"
    preprocess.run(PreprocessConfig(inputs=[src], out=ref, crop_size=64))
    return src, ref


def _spawn(*args) -> subprocess.Popen:
    return subprocess.Popen([*DRKIT, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _children(pid: int) -> set[int]:
    """Live descendants of ``pid`` (Linux /proc)."""
    out, frontier = set(), {pid}
    while frontier:
        nxt = set()
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[1]) in frontier and fields[0] != "Z":
                nxt.add(int(p.name))
        out |= nxt
        frontier = nxt
    return out


def test_concurrent_runs_into_one_store_equal_one_run(clips, tmp_path):
    """Three `drkit preprocess` runs of the same inputs into the same store at the same time
    (a job launched twice): all succeed, the store equals one uninterrupted run."""
    src, ref = clips
    out = tmp_path / "s.zarr"
    procs = [_spawn("preprocess", src, "-o", out, "--size", "64") for _ in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert_same_store(ref, out)
    st = open_store(out)
    assert st.partial_leftovers() == []
    runs = st.root.attrs["runs"]
    assert len(runs) == 3 and sum(r["ok"] for r in runs) == 5, runs   # each video written once


def test_shards_starting_together_on_a_new_store(clips, tmp_path):
    src, ref = clips
    out = tmp_path / "new.zarr"
    procs = [_spawn("preprocess", src, "-o", out, "--size", "64", "--shard", f"{i}/3") for i in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert_same_store(ref, out)
    assert (out / "_partial" / "lock").exists()


def test_kill_9_with_workers_leaves_no_orphans_and_resumes(clips, tmp_path):
    src, ref = clips
    out = tmp_path / "k.zarr"
    p = subprocess.Popen([*DRKIT, "preprocess", src, "-o", out, "--size", "64", "--workers", "2"])
    deadline = time.time() + 120
    kids: set[int] = set()
    while time.time() < deadline:   # kill -9 once a video is complete and workers are busy
        kids |= _children(p.pid)
        if out.exists() and any((out / f"v{i}.avi").exists() for i in range(5)):
            break
        time.sleep(0.02)
    kids |= _children(p.pid)
    assert kids, "the run should have started worker processes"
    p.send_signal(signal.SIGKILL)
    p.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f"/proc/{k}").exists() and
                                         "Z" not in Path(f"/proc/{k}/stat").read_text().split(")")[-1][:3]
                                         for k in kids):
        time.sleep(0.1)
    alive = [k for k in kids if Path(f"/proc/{k}").exists()
             and "Z" not in Path(f"/proc/{k}/stat").read_text().split(")")[-1][:3]]
    assert not alive, f"workers outlived the killed run: {alive}"
    r = cli("preprocess", src, "-o", out, "--size", "64")
    assert r.returncode == 0, r.stderr
    assert_same_store(ref, out)
    assert open_store(out).partial_leftovers() == []


def test_damaged_video_is_refused_then_repaired(clips, task_data, tmp_path):
    src, ref = clips
    out = tmp_path / "d.zarr"
    shutil.copytree(ref, out)
    chunk = next(p for p in sorted((out / "v2.avi" / "frames" / "c").iterdir()))
    shutil.rmtree(chunk)                                     # a partly deleted video
    with pytest.raises(StoreError, match=r"v2\.avi: damaged \(array 'frames' misses chunk 0"):
        open_store(out).video("v2.avi")
    r = cli("rank-eval", task_data["drs"][0], out, "--T", "2", "--stride", "1")   # never black frames
    assert r.returncode == 1 and "v2.avi: damaged" in r.stderr
    r = cli("inspect", out, "--video", "v2.avi", "--frame", "3", "-o", tmp_path / "f.png")
    assert r.returncode == 1 and "damaged" in r.stderr and "preprocess" in r.stderr
    s = preprocess.run(PreprocessConfig(inputs=[src], out=out, crop_size=64))
    assert s.repaired == ["v2.avi"] and s.ok == ["v2.avi"] and len(s.skipped) == 4
    assert_same_store(ref, out)
    # an array shorter than the video is damage too
    arr = zarr.open_array(out / "v3.avi" / "landmarks", mode="r+")
    arr.resize((arr.shape[0] - 1, 68, 2))
    with pytest.raises(StoreError, match=r"v3\.avi: damaged \(array 'landmarks' has"):
        open_store(out).video("v3.avi")
    assert preprocess.run(PreprocessConfig(inputs=[src], out=out, crop_size=64)).repaired == ["v3.avi"]
    assert_same_store(ref, out)


def test_every_store_writer_repairs_a_video_renamed_but_not_listed(task_data, tmp_path):
    """A run killed between moving a finished video into place and listing it: the next run of
    the same stage lists it (preprocess did; gen-dr now does too) instead of losing it."""
    out = tmp_path / "m.zarr"
    gen_dr.run(GenDRConfig(store=task_data["faces"], out=out, dr=[task_data["drs"][0]]))
    meta = json.loads((out / "zarr.json").read_text())
    del meta["attributes"]["videos"]["p4.avi"]               # the kill landed before the listing
    (out / "zarr.json").write_text(json.dumps(meta))
    assert "p4.avi" not in open_store(out).videos
    r = gen_dr.run(GenDRConfig(store=task_data["faces"], out=out, dr=[task_data["drs"][0]]))
    assert r["videos"] == 0                                  # nothing rewritten, only listed
    assert "p4.avi" in open_store(out).videos and len(open_store(out).videos) == 8


def test_concurrent_gen_dr_runs(task_data, tmp_path):
    out = tmp_path / "c.zarr"
    procs = [_spawn("gen-dr", task_data["faces"], "-o", out, "--dr", task_data["drs"][0]) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    ref = tmp_path / "ref.zarr"
    gen_dr.run(GenDRConfig(store=task_data["faces"], out=ref, dr=[task_data["drs"][0]]))
    assert_same_store(ref, out)


def test_failed_predict_keeps_the_existing_output(tmp_path, task_data):
    from drkit.configs import TrainTaskConfig
    from drkit.stages import train_task
    model = tmp_path / "model"
    train_task.run(TrainTaskConfig(input=[task_data["mdr"]], out=model, labels=task_data["labels"], epochs=1))
    csv = tmp_path / "pred.csv"
    csv.write_text("input,frame,face_found,t1,t2\nold.png,0,1,1.0,2.0\n")
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 64)
    r = cli("predict", model, tmp_path / "broken.mp4", "-o", csv)
    assert r.returncode == 3
    assert csv.read_text() == "input,frame,face_found,t1,t2\nold.png,0,1,1.0,2.0\n"
    assert not list(tmp_path.glob(".pred.csv.tmp*"))
    r = cli("predict", model, tmp_path / "broken.mp4", "-o", tmp_path)   # -o a folder
    assert r.returncode == 1 and "is a folder" in r.stderr


def test_unwritable_output_is_a_clear_error(tmp_path, clips):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    src, _ = clips
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        r = cli("preprocess", src / "v0.avi", "-o", ro / "s.zarr")
        assert r.returncode == 1 and "Permission denied" in r.stderr and "internal error" not in r.stderr
    finally:
        ro.chmod(0o700)


def test_an_os_error_is_one_line_not_an_internal_error(tmp_path, clips):
    """A file where the store's folder should be, and an output inside a file."""
    src, _ = clips
    (tmp_path / "file").write_text("x")
    r = cli("preprocess", src / "v0.avi", "-o", tmp_path / "file" / "s.zarr")
    assert r.returncode == 1 and "internal error" not in r.stderr and "file" in r.stderr
    np.testing.assert_equal(r.stderr.strip().count("\n"), 0)
