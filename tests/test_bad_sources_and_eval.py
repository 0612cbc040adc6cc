"""Bad inputs and awkward evaluation grids: (T, stride) cells without a full window, face stores
of different crop sizes used together, implausible container frame rates, unreadable images in
a frame folder, and the same video reached twice."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import assert_same_store, cli, face_frames, make_face_store, moving_blob_frames, write_video

from drkit import log, ranking
from drkit.errors import UsageError
from drkit.sources import FrameReader, Source, discover, plausible_fps
from drkit.stages import rank_eval
from drkit.store import open_store
from drkit.windows import window_tensor


@pytest.fixture
def warnings(monkeypatch) -> list[str]:
    """Every message given to drkit.log.warn during the test."""
    seen: list[str] = []
    monkeypatch.setattr(log, "warn", seen.append)
    return seen


def one_line(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------
# rank-eval / train-dr: (T, stride) cells with no full window

@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """Two 24-frame blob videos (32 px) and a tiny DR trained on them for one epoch."""
    d = tmp_path_factory.mktemp("short")
    store = make_face_store(d / "short.zarr", {f"s{i}": moving_blob_frames(24, 32, seed=i) for i in range(2)})
    r = cli("train-dr", store, "-o", d / "run", "--T", "2", "--stride", "1", "--size", "32",
            "--base", "4", "--depth", "2", "--epochs", "1")
    assert r.returncode == 0, r.stderr
    return store, d / "run"


@pytest.mark.parametrize("T,stride,empty", [
    ("2,30", "1", [(30, 1)]),                       # 61 frames needed
    ("2", "1,20", [(2, 20)]),                       # 81 frames needed
    ("2,3,30", "1,20", [(2, 20), (3, 20), (30, 1), (30, 20)]),
])
def test_rank_eval_reports_and_leaves_out_cells_without_windows(short_run, tmp_path, T, stride, empty):
    store, run = short_run
    js = tmp_path / "r.json"
    r = cli("rank-eval", run, store, "--T", T, "--stride", stride, "--baselines", "identity",
            "--json", js, "--plot", tmp_path / "grid.png")
    assert r.returncode == 0, r.stderr
    err = one_line(r.stderr)
    assert "no full window at" in err and "2T*stride+1" in err and "left out" in err
    for t, s in empty:
        assert f"T={t} stride {s} ({2 * t * s + 1} frames)" in err
    recs = json.loads(js.read_text())
    asked = {(int(t), int(s)) for t in T.split(",") for s in stride.split(",")}
    assert {(x["T"], x["stride"]) for x in recs} == asked - set(empty)
    assert {x["method"] for x in recs} == {"dr", "identity"}
    for x in recs:
        assert x["pairs"] > 0 and 0 <= x["accuracy"] <= 1 and x["windows"] > 0
    assert (tmp_path / "grid.png").is_file()
    _, rows = rank_eval.table_rows(recs)
    assert {(int(a), int(b)) for a, b, *_ in rows} == asked - set(empty)


def test_rank_eval_with_no_window_anywhere_still_fails(short_run):
    store, run = short_run
    r = cli("rank-eval", run, store, "--T", "30", "--stride", "1,2", "--baselines", "identity")
    assert r.returncode == 1 and "no full window" in r.stderr


def test_table_shows_dash_for_a_missing_method():
    recs = [{"method": "dr", "T": 2, "stride": 1, "accuracy": 0.9},
            {"method": "identity", "T": 2, "stride": 1, "accuracy": 0.7},
            {"method": "dr", "T": 3, "stride": 1, "accuracy": 0.8}]
    header, rows = rank_eval.table_rows(recs)
    assert header == ["T", "S", "dr", "identity", "dr - identity"]
    assert rows == [["2", "1", "90.0", "70.0", "+20.0"], ["3", "1", "80.0", "-", "-"]]


def test_empty_tally_summary_is_nan_not_a_crash():
    s = ranking.Tally().summary()
    assert s["pairs"] == 0 and math.isnan(s["accuracy"]) and s["videos"] == {}
    assert s["past"]["pairs"] == s["future"]["pairs"] == 0 and math.isnan(s["future"]["accuracy"])


def test_train_dr_with_validation_stores_without_a_window(tmp_path):
    train = make_face_store(tmp_path / "train.zarr", {f"t{i}": moving_blob_frames(20, 32, seed=i) for i in range(2)})
    val = make_face_store(tmp_path / "val.zarr", {"v0": moving_blob_frames(4, 32, seed=9)})
    r = cli("train-dr", train, "-o", tmp_path / "run", "--val", val, "--T", "2", "--stride", "1",
            "--size", "32", "--base", "4", "--depth", "2", "--epochs", "2")
    assert r.returncode == 0, r.stderr
    err = one_line(r.stderr)
    assert f"{val}: no full window at T=2, stride 1" in err and "2T*stride+1 = 5 frames" in err
    assert err.count("no full window") == 1                       # once, not every epoch
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(math.isnan(x["val_acc"]) for x in lines)
    assert (tmp_path / "run" / "best.pt").is_file() and (tmp_path / "run" / "last.pt").is_file()


# ---------------------------------------------------------------------------------------------
# face stores of different crop sizes together

@pytest.fixture(scope="module")
def mixed_stores(tmp_path_factory):
    """The same kind of clip cropped at 64 px in one store and at 96 px in another."""
    d = tmp_path_factory.mktemp("mixed")
    small = make_face_store(d / "s64.zarr", {f"a{i}": moving_blob_frames(20, 64, noise=0.05, seed=i, speed=2)
                                             for i in range(2)})
    big = make_face_store(d / "s96.zarr", {f"b{i}": moving_blob_frames(20, 96, noise=0.05, seed=10 + i, speed=3)
                                           for i in range(2)})
    return small, big


def test_window_tensor_resizes_each_window_before_stacking():
    w64 = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    w96 = np.random.default_rng(1).integers(0, 256, (5, 96, 96, 3), dtype=np.uint8)
    x = window_tensor([w64, w96, w64], 32)
    assert x.shape == (3, 5, 3, 32, 32)
    torch.testing.assert_close(x[0], window_tensor([w64], 32)[0])
    torch.testing.assert_close(x[1], window_tensor([w96], 32)[0])
    torch.testing.assert_close(x[2], x[0])
    assert window_tensor([w96], 96).shape == (1, 5, 3, 96, 96)
    with pytest.raises(ValueError, match="size"):
        window_tensor([w64, w96])


def test_train_dr_and_rank_eval_on_mixed_crop_sizes(mixed_stores, tmp_path):
    small, big = mixed_stores
    run = tmp_path / "run"
    r = cli("train-dr", small, big, "-o", run, "--T", "2", "--stride", "1", "--size", "32",
            "--base", "4", "--depth", "2", "--epochs", "1", "--batch-size", "8")
    assert r.returncode == 0, r.stderr
    js = tmp_path / "r.json"
    r = cli("rank-eval", run, small, big, "--baselines", "identity,di", "--json", js)
    assert r.returncode == 0, r.stderr
    recs = {x["method"]: x for x in json.loads(js.read_text())}
    assert set(recs) == {"dr", "identity", "di"}
    for x in recs.values():
        assert set(x["videos"]) == {"a0", "a1", "b0", "b1"} and x["windows"] == 4 * 16
        assert 0 <= x["accuracy"] <= 1 and x["pairs"] == 4 * 16 * 6
    assert recs["identity"]["accuracy"] > 0.7          # little noise: the still image ranks well
    # mixed evaluation gives each video what it gets evaluated alone at the same size
    for st in (small, big):
        alone = rank_eval.run(rank_eval.RankEvalConfig(ckpt=None, stores=[st], T=[2], stride=[1],
                                                       baselines=["identity"], net_size=32))[0]
        for v, a in alone["videos"].items():
            assert recs["identity"]["videos"][v] == pytest.approx(a)


def test_rank_eval_baselines_without_size_refuses_mixed_crop_sizes(mixed_stores):
    small, big = mixed_stores
    cfg = {"ckpt": None, "stores": [small, big], "T": [2], "stride": [1], "baselines": ["identity"]}
    with pytest.raises(UsageError, match=r"stores have crop sizes 64 and 96 .*give --net-size") as e:
        rank_eval.run(rank_eval.RankEvalConfig(**cfg))
    assert e.value.exit_code == 2 and str(small) in str(e.value) and str(big) in str(e.value)
    recs = rank_eval.run(rank_eval.RankEvalConfig(**cfg, net_size=48))
    assert recs[0]["pairs"] == 4 * 16 * 6 and recs[0]["accuracy"] > 0.7
    # one crop size: no --size needed (frames are used as stored)
    assert rank_eval.run(rank_eval.RankEvalConfig(**{**cfg, "stores": [big]}))[0]["pairs"] == 2 * 16 * 6


# ---------------------------------------------------------------------------------------------
# implausible container frame rates

@pytest.mark.parametrize("reported,used", [
    (1e6, None), (2000.0, None), (1000.5, None), (0.999, None), (0.001, None), (-25.0, None),
    (float("nan"), None), (float("inf"), None), (0.0, None), (None, None),
    (1.0, 1.0), (14.25, 14.25), (25.0, 25.0), (1000.0, 1000.0), (999.0, 999.0), (4.0, 4.0), (120.0, 120.0),
])
def test_plausible_fps(warnings, reported, used):
    fps = plausible_fps(reported, 25.0, Path("clip.mp4"))
    if used is not None:   # kept; outside 5..120 fps with a warning naming the rate and the stride it gives
        assert fps == used
        if 5 <= used <= 120:
            assert warnings == []
        else:
            assert len(warnings) == 1 and f"reports {used:g} fps, unusual" in warnings[0] and "kept" in warnings[0]
            assert f"every {max(1, round(2 * used / 25))} source frames" in warnings[0]
        return
    assert fps == 25.0 and len(warnings) == 1
    w = warnings[0]
    assert w.startswith("clip.mp4: the container reports") and "using 25 fps (--fps)" in w
    if reported:
        assert f"{reported:g} fps" in w
    else:
        assert "no frame rate" in w


@pytest.mark.parametrize("fps", [2000.0, 0.5])
def test_video_with_implausible_fps_uses_default(tmp_path, fps, warnings):
    path = write_video(tmp_path / "odd.mp4", face_frames(4, size=96), fps=fps)
    reported = cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FPS)
    if 1 <= reported <= 1000:
        pytest.skip(f"this OpenCV stores {fps} fps as {reported}")
    reader = FrameReader(Source("odd.mp4", path, "video"), default_fps=30.0)
    assert reader.meta.fps == 30.0 and len(list(reader)) == 4
    assert len(warnings) == 1 and str(path) in warnings[0] and f"{reported:g} fps" in warnings[0]


def test_one_decoding_thread_gives_the_same_frames(tmp_path, monkeypatch):
    """Workers that fill every core decode on one FFmpeg thread: the same frames and timestamps as
    FFmpeg's default threads, and preprocess asks for it exactly when no core is spare."""
    path = write_video(tmp_path / "v.mp4", face_frames(12, size=96))
    src = Source("v.mp4", path, "video")
    default, one = list(FrameReader(src).timed()), list(FrameReader(src, decode_threads=1).timed())
    assert len(default) == len(one) == 12
    for (i, t, f), (j, u, g) in zip(default, one):
        assert i == j and t == u and np.array_equal(f, g)

    import drkit.stages.preprocess as pp
    asked = []

    class Spy(FrameReader):
        def __init__(self, src, fps, decode_threads=0):
            asked.append(decode_threads)
            super().__init__(src, fps, decode_threads)

    monkeypatch.setattr(pp, "FrameReader", Spy)
    for cores, want in ((2, 0), (1, 1)):
        monkeypatch.setattr(pp, "available_cores", lambda: cores)
        pp.run(pp.PreprocessConfig(inputs=[str(path)], out=str(tmp_path / f"s{cores}.zarr"), crop_size=64))
        assert asked[-1] == want
    assert_same_store(tmp_path / "s2.zarr", tmp_path / "s1.zarr")


def test_preprocess_stores_default_fps_for_implausible_container_fps(tmp_path):
    path = write_video(tmp_path / "fast.mp4", face_frames(8, size=120), fps=2000)
    if cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FPS) != 2000:
        pytest.skip("this OpenCV does not store 2000 fps")
    r = cli("preprocess", path, "-o", tmp_path / "f.zarr", "--size", "64")
    assert r.returncode == 0, r.stderr
    assert f"{path}: the container reports an implausible frame rate of 2000 fps" in one_line(r.stderr)
    assert "using 25 fps" in one_line(r.stderr)
    st = open_store(tmp_path / "f.zarr")
    assert st.videos == ["fast.mp4"] and st.video_info("fast.mp4")["fps"] == 25.0


# ---------------------------------------------------------------------------------------------
# unreadable images in a frame folder

@pytest.mark.parametrize("bad", [[3], [0], [2, 5]])
def test_unreadable_images_are_dropped_with_one_warning(tmp_path, bad):
    d = tmp_path / "seq"
    d.mkdir()
    for i, f in enumerate(face_frames(8, size=120)):
        p = d / f"frame_{i:04d}.png"
        if i in bad:
            p.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
        else:
            cv2.imwrite(str(p), f)
    r = cli("preprocess", d, "-o", tmp_path / "f.zarr", "--size", "64")
    assert r.returncode == 0, r.stderr
    err = one_line(r.stderr)
    assert err.count("unreadable image") == 1
    assert f"{d}: {len(bad)} unreadable image(s) skipped" in err and f"first: frame_{bad[0]:04d}.png" in err
    st = open_store(tmp_path / "f.zarr")
    assert st.videos == ["seq"]
    np.testing.assert_array_equal(st.video("seq")["frame_index"][:], [i for i in range(8) if i not in bad])


def test_image_folder_with_no_readable_image_fails(tmp_path):
    d = tmp_path / "seq"
    d.mkdir()
    for i in range(3):
        (d / f"{i}.jpg").write_bytes(b"junk")
    with pytest.raises(Exception, match="cannot read any image"):
        FrameReader(Source("seq", d, "images"))


# ---------------------------------------------------------------------------------------------
# the same video reached twice

def _same_file_twice(d: Path):
    (d / "a.avi").write_bytes(b"x")
    return [d / "a.avi", d / "a.avi"], ["a.avi"], (d / "a.avi", d / "a.avi")


def _folder_and_file_in_it(d: Path):
    (d / "v").mkdir()
    (d / "v" / "a.avi").write_bytes(b"x")
    (d / "v" / "b.avi").write_bytes(b"y")
    return [d / "v", d / "v" / "a.avi"], ["a.avi", "b.avi"], (d / "v" / "a.avi", d / "v" / "a.avi")


def _folder_symlink(d: Path):
    (d / "v" / "real").mkdir(parents=True)
    (d / "v" / "real" / "a.avi").write_bytes(b"x")
    (d / "v" / "real" / "f").mkdir()
    cv2.imwrite(str(d / "v" / "real" / "f" / "0.png"), np.zeros((8, 8, 3), np.uint8))
    os.symlink("real", d / "v" / "link")
    os.symlink("real/f", d / "v" / "flink")
    # "flink" and "link" sort before "real": they are found first and keep their ids
    return [d / "v"], ["flink", "link__a.avi"], (d / "v" / "link" / "a.avi", d / "v" / "real" / "a.avi")


def _file_symlink(d: Path):
    (d / "a.avi").write_bytes(b"x")
    os.symlink("a.avi", d / "b.avi")
    return [d], ["a.avi"], (d / "a.avi", d / "b.avi")


@pytest.mark.parametrize("case", [_same_file_twice, _folder_and_file_in_it, _folder_symlink, _file_symlink])
def test_discover_takes_each_real_file_once(tmp_path, warnings, case):
    inputs, ids, (first, second) = case(tmp_path)
    srcs = discover(inputs)
    assert [s.id for s in srcs] == ids
    assert len({s.path.resolve() for s in srcs}) == len(srcs)
    w = [x for x in warnings if "processed once" in x]
    assert w and any(x.startswith(f"{second}: same") and f" {first} " in x for x in w)


def test_preprocess_processes_a_video_given_twice_once(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    path = write_video(d / "a.mp4", face_frames(6, size=120))
    r = cli("preprocess", d, path, "-o", tmp_path / "f.zarr", "--size", "64")
    assert r.returncode == 0, r.stderr
    assert f"{path}: same file as {path} (already taken as 'a.mp4'); processed once" in one_line(r.stderr)
    assert "1 source(s)" in r.stderr
    st = open_store(tmp_path / "f.zarr")
    assert st.videos == ["a.mp4"] and st.video("a.mp4")["frame_index"].shape == (6,)
