"""`drkit predict` with frame decoding and face tracking in a background thread (the default)
writes exactly what the sequential loop writes: same rows, same batches, same values; errors of
an input (unreadable file) and of the producer thread (a bug) reach the caller as before."""

from __future__ import annotations

import shutil
import threading

import cv2
import pytest
from conftest import face_frames

from drkit.configs import PredictConfig
from drkit.predictor import Predictor
from drkit.stages import predict


@pytest.fixture(scope="module")
def inputs(videos, tmp_path_factory):
    """The three test videos (one with faceless frames), a still, and an unreadable 'video'."""
    d = tmp_path_factory.mktemp("pipe_inputs")
    shutil.copytree(videos, d / "v")
    cv2.imwrite(str(d / "v" / "b_still.png"), face_frames(1, seed=5)[0])
    (d / "v" / "broken.mp4").write_bytes(b"not a video")
    return d / "v"


def _run(task_bundle, inputs, out, **kw):
    cfg = {k: kw.pop(k) for k in list(kw) if k in ("per_video", "batch_size")}
    return predict.run(PredictConfig(model=task_bundle, inputs=[inputs], out=out, device="cpu", **cfg), **kw)


def _no_producer_left():
    return not any(t.name == "drkit-predict-frames" for t in threading.enumerate())


@pytest.mark.parametrize("batch_size", [7, 32])
def test_pipelined_csv_equals_sequential(task_bundle, inputs, tmp_path, batch_size):
    seq = _run(task_bundle, inputs, tmp_path / "seq.csv", batch_size=batch_size, pipeline=False)
    pip = _run(task_bundle, inputs, tmp_path / "pip.csv", batch_size=batch_size, pipeline=True)
    assert (tmp_path / "pip.csv").read_text() == (tmp_path / "seq.csv").read_text()
    assert {k: seq[k] for k in ("rows", "faces", "failed")} == {k: pip[k] for k in ("rows", "faces", "failed")}
    assert seq["rows"] == 40 + 30 + 36 + 1 and list(pip["failed"]) == [str(inputs / "broken.mp4")]
    t = pip["timings"]
    assert t["pipeline"] and not seq["timings"]["pipeline"]
    assert t["faces"] == pip["faces"] and t["decode"] > 0 and t["track"] > 0 and t["dr"] > 0 and t["task"] > 0
    assert _no_producer_left()


def test_pipelined_with_one_net_thread_equals_sequential(task_bundle, inputs, tmp_path):
    import torch
    before = torch.get_num_threads()
    _run(task_bundle, inputs, tmp_path / "seq.csv", pipeline=False)
    r = _run(task_bundle, inputs, tmp_path / "one.csv", pipeline=True, net_threads=1)
    assert r["timings"]["net_threads"] == 1 and torch.get_num_threads() == before   # restored
    assert (tmp_path / "one.csv").read_text() == (tmp_path / "seq.csv").read_text()


def test_pipelined_per_video_equals_sequential(task_bundle, inputs, tmp_path):
    seq = _run(task_bundle, inputs, tmp_path / "seq", per_video=True, batch_size=5, pipeline=False)
    pip = _run(task_bundle, inputs, tmp_path / "pip", per_video=True, batch_size=5, pipeline=True)
    names = sorted(p.name for p in (tmp_path / "seq").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "pip").iterdir())
    assert names == ["a.csv", "b_still.csv", "c.csv", "sub__b.csv"]   # broken.mp4: none
    for n in names:
        assert (tmp_path / "pip" / n).read_text() == (tmp_path / "seq" / n).read_text(), n
    assert seq["written"] == pip["written"] and seq["failed"] == pip["failed"]


def test_a_producer_error_reaches_the_caller_and_stops_the_thread(task_bundle, inputs, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = Predictor.find_face

    def find_face(self, bgr, tracker=None):
        calls["n"] += 1
        if calls["n"] == 12:
            raise RuntimeError("tracker bug")
        return real(self, bgr, tracker)

    monkeypatch.setattr(Predictor, "find_face", find_face)
    out = tmp_path / "p.csv"
    with pytest.raises(RuntimeError, match="tracker bug"):
        _run(task_bundle, inputs, out, pipeline=True)
    assert not out.exists() and _no_producer_left()
    assert [p.name for p in tmp_path.iterdir()] == []          # no temporary file left either


def test_consumer_error_stops_the_producer(task_bundle, inputs, tmp_path, monkeypatch):
    def boom(self, crops):
        raise RuntimeError("network bug")

    monkeypatch.setattr(Predictor, "predict_crops", boom)
    with pytest.raises(RuntimeError, match="network bug"):
        _run(task_bundle, inputs, tmp_path / "p.csv", pipeline=True, batch_size=4)
    assert _no_producer_left()
