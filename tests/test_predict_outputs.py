"""What `drkit predict` hands a researcher (issue 19): OpenFace 2.2's CSV layout, per-video CSVs
named after the file, timestamps and confidence, values clipped to the label range, a plot per
video, an annotated video, DR pictures of chosen frames, and errors that name the next step."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REAL, cli, face_frames, write_video

from drkit.checkpoint import load_checkpoint, save_checkpoint
from drkit.fsutil import sha256_file


@pytest.fixture(scope="module")
def au_bundle(task_data, tmp_path_factory):
    """A bundle whose targets are named like OpenFace's AUs (the blob targets under AU names)."""
    d = tmp_path_factory.mktemp("au_bundle")
    text = task_data["labels"].read_text().splitlines()
    text[0] = text[0].replace("t1", "AU06").replace("t2", "AU12")
    (d / "labels.csv").write_text("\n".join(text) + "\n")
    r = cli("train-task", task_data["mdr"], "--labels", d / "labels.csv", "-o", d / "run", "--epochs", "1")
    assert r.returncode == 0, r.stderr
    return d / "run"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip")
    frames = face_frames(30, seed=7, blank=(5, 6))
    write_video(d / "talk.mp4", frames, fps=20)
    cv2.imwrite(str(d / "still.png"), frames[0])
    return d


def _openface_rows(path: Path) -> tuple[list[str], list[dict]]:
    with open(path) as f:
        rd = csv.DictReader(f, skipinitialspace=True)
        return list(rd.fieldnames), list(rd)


def test_openface_format_has_openfaces_columns_and_1_based_frames(au_bundle, clip, tmp_path):
    out = tmp_path / "of.csv"
    r = cli("predict", au_bundle, clip / "talk.mp4", "-o", out, "--format", "openface")
    assert r.returncode == 0, r.stderr
    header, rows = _openface_rows(out)
    assert header == ["frame", "face_id", "timestamp", "confidence", "success", "AU06_r", "AU12_r"]
    assert out.read_text().splitlines()[0] == "frame, face_id, timestamp, confidence, success, AU06_r, AU12_r"
    assert [int(x["frame"]) for x in rows] == list(range(1, 31))              # OpenFace counts from 1
    assert [float(x["timestamp"]) for x in rows] == pytest.approx([i / 20 for i in range(30)], abs=1e-3)
    assert {x["face_id"] for x in rows} == {"0"}
    no_face = [x for x in rows if x["success"] == "0"]
    assert [int(x["frame"]) for x in no_face] == [6, 7]                          # blank source frames 5, 6
    assert all(float(x["confidence"]) == 0 and float(x["AU06_r"]) == 0 for x in no_face)
    ok = [x for x in rows if x["success"] == "1"]
    assert all(0 < float(x["confidence"]) <= 1 and 0 <= float(x["AU12_r"]) <= 5 for x in ok)


@pytest.mark.skipif(not (REAL.parent / "faces_openface").is_dir(), reason="OpenFace outputs not found")
def test_openface_format_matches_a_real_openface_csv_header(au_bundle, clip, tmp_path):
    """Our first five columns are OpenFace 2.2's, in its order, with its separator."""
    real = next((REAL.parent / "faces_openface").glob("*.csv.gz"))
    with gzip.open(real, "rt") as f:
        theirs = f.readline().rstrip("\n").split(", ")
    out = tmp_path / "of.csv"
    assert cli("predict", au_bundle, clip / "still.png", "-o", out, "--format", "openface").returncode == 0
    ours = out.read_text().splitlines()[0].split(", ")
    assert ours[:5] == theirs[:5]
    assert all(c in theirs for c in ours[5:])        # AU06_r, AU12_r are OpenFace column names


def test_drkit_csv_has_timestamp_and_confidence_and_clips(au_bundle, clip, tmp_path):
    import torch

    from drkit.predictor import Predictor
    out = tmp_path / "p.csv"
    r = cli("predict", au_bundle, clip / "talk.mp4", "-o", out)
    assert r.returncode == 0 and "clipped to the AU label range 0..5" in r.stderr
    rows = list(csv.DictReader(open(out)))
    assert list(rows[0]) == ["input", "frame", "timestamp", "face_found", "confidence", "AU06", "AU12"]
    assert [float(x["timestamp"]) for x in rows] == pytest.approx([i / 20 for i in range(30)], abs=1e-3)
    p = Predictor.from_bundle(au_bundle, "cpu")
    with torch.no_grad():
        p.net.head[-1].bias.fill_(50.0)   # a network gone wild: outputs far above the range
    crops = np.zeros((2, p.crop_size, p.crop_size, 3), np.uint8)
    assert (p.predict_crops(crops)[0] == 5.0).all()
    p.clip = False
    assert (p.predict_crops(crops)[0] > 5.0).all()


def test_per_video_csvs_are_named_after_the_file(au_bundle, clip, tmp_path):
    out = tmp_path / "csvs"
    r = cli("predict", au_bundle, clip, "-o", out, "--per-video", "--format", "openface")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["still.csv", "talk.csv"]
    header, rows = _openface_rows(out / "talk.csv")
    assert len(rows) == 30 and header[0] == "frame"


def test_plot_video_and_dr_pictures(au_bundle, clip, tmp_path):
    plots, vids, pics = tmp_path / "plots", tmp_path / "video", tmp_path / "dr"
    r = cli("predict", au_bundle, clip / "talk.mp4", clip / "still.png", "-o", tmp_path / "p.csv",
            "--plot", plots, "--video-out", vids, "--save-dr", pics, "--dr-frames", "0,10-12")
    assert r.returncode == 0, r.stderr
    assert [p.name for p in plots.iterdir()] == ["talk.png"]          # a plot per video, not per still
    png = cv2.imread(str(plots / "talk.png"))
    assert png is not None and png.shape[0] > 150
    assert [p.name for p in vids.iterdir()] == ["talk.mp4"]
    cap = cv2.VideoCapture(str(vids / "talk.mp4"))
    n, first = 0, None
    while True:
        ok, f = cap.read()
        if not ok:
            break
        first = f if first is None else first
        n += 1
    assert n == 30 and first.shape[1] > 2 * first.shape[0]            # frame, DR maps, AU bars side by side
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(20, abs=0.1)
    names = sorted(p.name for p in pics.iterdir())
    assert names == ["still.png", "talk_000000.png", "talk_000010.png", "talk_000011.png", "talk_000012.png"]
    assert not list(tmp_path.rglob(".*.tmp*"))


def test_dr_frames_must_be_numbers(au_bundle, clip, tmp_path):
    r = cli("predict", au_bundle, clip / "still.png", "-o", tmp_path / "p.csv", "--save-dr", tmp_path / "d",
            "--dr-frames", "1,x")
    assert r.returncode == 2 and "--dr-frames" in r.stderr


def test_predict_on_a_dr_model_names_the_next_step(task_data, clip, tmp_path):
    r = cli("predict", task_data["drs"][0], clip / "still.png", "-o", tmp_path / "p.csv")
    assert r.returncode == 1
    msg = " ".join(r.stderr.split())
    assert "this is a DR model" in msg and "pretrained:au" in msg and "drkit train-task" in msg
    assert "expected a 'task' checkpoint" not in msg


def test_a_bundle_trained_on_synthetic_faces_says_so(au_bundle, clip, tmp_path):
    b = load_checkpoint(au_bundle)
    assert b.config.train["data"]["synthetic"] is False and b.config.train["data"]["people"] >= 1
    b.config.train["data"]["synthetic"] = True
    save_checkpoint(b, tmp_path / "synth.pt")
    r = cli("predict", tmp_path / "synth.pt", clip / "still.png", "-o", tmp_path / "p.csv")
    assert r.returncode == 0 and "trained on synthetic faces only" in " ".join(r.stderr.split())


VNORM = {"dr": dict(input_kind="mdr", dr_norm="video"), "image": dict(input_kind="si", image_norm="video"),
         "both": dict(input_kind="mdr", dr_norm="video", image_norm="video")}


def _vnorm_bundle(task_data, tmp_path_factory, kind):
    from drkit.configs import TrainTaskConfig
    from drkit.stages import train_task
    out = tmp_path_factory.mktemp(f"vnorm_{kind}") / "run"
    train_task.run(TrainTaskConfig(input=[task_data["mdr"]], out=out, labels=task_data["labels"], epochs=2,
                                   device="cpu", **VNORM[kind]))
    return out


@pytest.fixture(scope="module")
def vnorm_bundle(task_data, tmp_path_factory):
    """A bundle trained with --dr-norm video (each DR channel minus its mean over the video)."""
    return _vnorm_bundle(task_data, tmp_path_factory, "dr")


@pytest.mark.parametrize("kind", ["dr", "image", "both"])
def test_per_video_norm_predictor_gives_what_eval_task_scores(task_data, tmp_path_factory, kind):
    """A bundle trained with --dr-norm video (DRs) / --image-norm video (image) answers for a
    video's crops what eval-task scores on its DR store (there, the stored video's mean); a wrong
    mean gives other answers."""
    bundle = _vnorm_bundle(task_data, tmp_path_factory, kind)
    from drkit.labels import read_labels
    from drkit.predictor import Predictor
    from drkit.store import open_store
    from drkit.tasks import Batcher, labelled_frames, predict_samples
    p = Predictor.from_bundle(bundle, device="cpu")
    assert p.video_norm and p.n_image == 3
    c = p.config
    crops = open_store(task_data["faces"]).video("p2.avi")["frames"][:]
    y, m = p.predict_crops(crops)                                    # every crop of the video: its mean
    s = labelled_frames([open_store(task_data["mdr"])], read_labels(task_data["labels"], c.targets), {"person2"})
    want = predict_samples(p.net, Batcher(s, c.channels, np.array(c.norm_mean), np.array(c.norm_std),
                                          dr_norm=c.dr_norm, image_norm=c.image_norm), "cpu", c.value_range)
    assert len(want) == len(y) == 48
    np.testing.assert_allclose(y, want, atol=2e-2)                   # gen-dr stores the MDR as float16
    mean = p.video_mean(m)
    np.testing.assert_allclose(p.values_of(m[:5], mean), y[:5], atol=1e-5)   # a part of the video, its mean
    wrong = p.values_of(m[:5], np.zeros_like(mean))
    assert np.abs(wrong - y[:5]).max() > 0.05
    with pytest.raises(Exception, match="video_mean has shape"):
        p.values_of(m[:5], mean[:3])
    if importlib.util.find_spec("onnxruntime"):
        ort = Predictor.from_bundle(bundle, device="cpu", engine="onnxruntime")
        np.testing.assert_allclose(ort.predict_crops(crops)[0], y, atol=1e-4)


def test_predict_with_a_per_video_dr_norm_bundle_uses_each_inputs_own_mean(vnorm_bundle, clip, tmp_path):
    """drkit predict holds an input's MDRs until it ends: the answers do not depend on the batch
    size, and a frame's answer depends on the rest of its input (its mean DR)."""
    rows = {}
    for bs in (4, 64):
        out = tmp_path / f"b{bs}.csv"
        r = cli("predict", vnorm_bundle, clip / "talk.mp4", "-o", out, "--batch-size", bs)
        assert r.returncode == 0, r.stderr
        with open(out) as f:
            rows[bs] = list(csv.DictReader(f))
    assert len(rows[4]) == 30
    v4 = np.array([[float(x["t1"]), float(x["t2"])] for x in rows[4] if x["face_found"] == "1"])
    v64 = np.array([[float(x["t1"]), float(x["t2"])] for x in rows[64] if x["face_found"] == "1"])
    assert len(v4) == 28
    np.testing.assert_allclose(v4, v64, atol=1e-5)
    short = tmp_path / "short.mp4"
    write_video(short, face_frames(30, seed=7, blank=(5, 6))[:12], fps=20)
    assert cli("predict", vnorm_bundle, short, "-o", tmp_path / "s.csv").returncode == 0
    with open(tmp_path / "s.csv") as f:
        vs = np.array([[float(x["t1"]), float(x["t2"])] for x in csv.DictReader(f) if x["face_found"] == "1"])
    assert len(vs) == 10 and np.abs(vs - v4[:10]).max() > 1e-3       # another input, another mean
    r = cli("predict", vnorm_bundle, clip / "still.png", "-o", tmp_path / "p.csv")
    assert r.returncode == 0 and "still image" in " ".join(r.stderr.split())


def test_a_still_is_taken_relative_to_the_training_videos_mean(vnorm_bundle, task_data, clip, tmp_path):
    """A per-video norm bundle carries the mean over its training videos of each video's mean MDR
    (population_mean); a still image, which has no video, is taken relative to it (its own mean
    would zero its DRs). A bundle from before 0.3.0 has none: the still's own mean, with a warning."""
    import dataclasses
    from drkit.checkpoint import load_checkpoint, save_checkpoint
    from drkit.predictor import Predictor
    from drkit.store import open_store
    from drkit.tasks import Batcher, labelled_frames, population_mean
    from drkit.labels import read_labels
    st = open_store(task_data["mdr"])
    s = labelled_frames([st], read_labels(task_data["labels"], ["t1", "t2"]))
    b = Batcher(s, [0, 3], np.zeros(2), np.ones(2), dr_norm="video")
    by_hand = np.mean([st.video(v)["mdr"][:].astype(np.float64).mean(0) for v in sorted(set(s.videos))], 0)
    np.testing.assert_allclose(population_mean(b), by_hand, rtol=1e-5, atol=1e-6)

    ck = load_checkpoint(vnorm_bundle, "task")
    assert ck.population_mean is not None and tuple(ck.population_mean.shape) == st.video(st.videos[0])["mdr"].shape[1:]
    p = Predictor.from_bundle(vnorm_bundle, device="cpu")
    pred = p.predict_image(cv2.imread(str(clip / "still.png")))
    np.testing.assert_allclose(pred.values, p.values_of(pred.mdr[None], ck.population_mean.numpy())[0], atol=1e-6)
    own = p.values_of(pred.mdr[None], pred.mdr)[0]
    assert np.abs(own - pred.values).max() > 1e-3
    r = cli("predict", vnorm_bundle, clip / "still.png", "-o", tmp_path / "a.csv")
    assert r.returncode == 0 and "training videos' mean" in " ".join(r.stderr.split())
    with open(tmp_path / "a.csv") as f:
        row = next(csv.DictReader(f))
    np.testing.assert_allclose([float(row["t1"]), float(row["t2"])], pred.values, atol=6e-5)   # 4 decimals

    old = tmp_path / "old.pt"   # as made before 0.3.0
    save_checkpoint(dataclasses.replace(ck, population_mean=None), old)
    r = cli("predict", old, clip / "still.png", "-o", tmp_path / "b.csv")
    assert r.returncode == 0 and "carries no training mean" in " ".join(r.stderr.split())
    with open(tmp_path / "b.csv") as f:
        row = next(csv.DictReader(f))
    np.testing.assert_allclose([float(row["t1"]), float(row["t2"])], own, atol=6e-5)


def test_a_long_input_waits_on_disk_not_in_memory(vnorm_bundle, clip, tmp_path, monkeypatch):
    """With a per-video norm an input's maps, crops and frames wait for its end: past the memory
    budget they go to a temporary file, and every output (CSV, DR pictures, annotated video) is
    the same as when all of it fits in memory."""
    from drkit.configs import PredictConfig
    from drkit.stages import predict
    spilled = []
    real_put = predict.Spill.put

    def put(self, a):   # what is kept in memory never exceeds the budget
        out = real_put(self, a)
        assert self.held <= self.budget
        spilled.append(self.spilled)
        return out

    monkeypatch.setattr(predict.Spill, "put", put)
    outs = {}
    for budget in (1 << 30, 100_000):   # all in memory; about two crops' and frames' worth
        monkeypatch.setattr(predict, "HOLD_BYTES", budget)
        d = tmp_path / str(budget)
        predict.run(PredictConfig(model=vnorm_bundle, inputs=[clip / "talk.mp4"], out=d / "p.csv",
                                device="cpu", batch_size=4, save_dr=d / "pics",
                                dr_frames="0,10-12", video_out=d / "vids"))
        outs[budget] = {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}
        assert (max(spilled) > 1_000_000) == (budget < 1 << 30)   # 28 faces' maps, crops and frames
        spilled.clear()
    assert sorted(outs[1 << 30]) == sorted(outs[100_000]) and len(outs[100_000]) == 6   # csv, 4 pictures, mp4
    for k in outs[100_000]:
        if k.suffix == ".mp4":   # the same frames, encoded again
            a, b = (_video_frames(tmp_path / str(x) / k) for x in (1 << 30, 100_000))
            assert len(a) == 30 and np.array_equal(a, b)
        else:
            assert outs[1 << 30][k] == outs[100_000][k], k


def _video_frames(path: Path) -> np.ndarray:
    cap, out = cv2.VideoCapture(str(path)), []
    while (f := cap.read())[0]:
        out.append(f[1])
    return np.stack(out)


def test_a_per_video_norm_bundle_exports_with_the_video_mean_as_an_input(vnorm_bundle, task_data, tmp_path):
    """drkit export of a --dr-norm video bundle: model.onnx takes the crops and the video's mean
    MDR, task.onnx the kept MDRs and the mean, population_mean.npy answers stills; the two-pass
    recipe of model.json gives what drkit's predictor gives for the whole video and for a still."""
    ort = pytest.importorskip("onnxruntime")
    from drkit.predictor import Predictor
    from drkit.store import open_store
    out = tmp_path / "x"
    r = cli("export", vnorm_bundle, "-o", out)
    assert r.returncode == 0, r.stderr
    meta = json.loads((out / "model.json").read_text())
    p = Predictor.from_bundle(vnorm_bundle, device="cpu", channels_last=False)
    C, M = len(p.config.store_channels), p.config.map_size
    vn = meta["video_norm"]
    assert [i["name"] for i in meta["inputs"]] == ["crops", "video_mean"] and meta["inputs"][1]["shape"] == [C, M, M]
    assert vn["dr"] == "video" and vn["channels"] == list(range(3, C))   # the DR channels, not the image
    assert vn["task_graph"]["sha256"] == sha256_file(out / "task.onnx")
    assert max(vn["task_graph"]["verified"]["max_abs_diff"].values()) < 1e-4
    pop = np.load(out / vn["population_mean"]["file"])
    np.testing.assert_array_equal(pop, p.still_mean)
    crops = open_store(task_data["faces"]).video("p2.avi")["frames"][:]
    model = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    task = ort.InferenceSession(str(out / "task.onnx"), providers=["CPUExecutionProvider"])
    # a video: pass 1 keeps the MDRs, their mean, pass 2 the values
    mdr = np.concatenate([model.run(["mdr"], {"crops": crops[i:i + 16], "video_mean": pop})[0]
                          for i in range(0, len(crops), 16)])
    mean = mdr.mean(0, dtype=np.float64).astype(np.float32)
    values = task.run(["values"], {"mdr": mdr, "video_mean": mean})[0]
    want, m = p.predict_crops(crops)
    np.testing.assert_allclose(mdr, m, atol=1e-5)
    np.testing.assert_allclose(values, want, atol=1e-4)
    # a still: the population mean
    still = model.run(["values"], {"crops": crops[:1], "video_mean": pop})[0]
    np.testing.assert_allclose(still, p.predict_crops(crops[:1], video_mean=p.still_mean)[0], atol=1e-4)
    assert np.abs(still - want[:1]).max() > 1e-3     # the mean matters: not the video's answer


def test_a_per_video_norm_bundle_exports_unchecked_without_onnxruntime(vnorm_bundle, tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "onnxruntime", None)   # `import onnxruntime` raises ImportError
    r = cli("export", vnorm_bundle, "-o", tmp_path / "x")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "x" / "model.json").read_text())
    assert meta["verified"] is None and meta["video_norm"]["task_graph"]["verified"] is None
    assert sorted(q.name for q in (tmp_path / "x").iterdir()) == [
        "model.json", "model.onnx", "population_mean.npy", "task.onnx"]


def test_a_bundle_without_video_norm_exports_one_graph_of_one_input(task_bundle, tmp_path):
    pytest.importorskip("onnxruntime")
    r = cli("export", task_bundle, "-o", tmp_path / "x")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "x" / "model.json").read_text())
    assert meta["video_norm"] is None and [i["name"] for i in meta["inputs"]] == ["crops"]
    assert sorted(q.name for q in (tmp_path / "x").iterdir()) == ["model.json", "model.onnx"]


def test_training_data_recognises_synth_output(tmp_path):
    from types import SimpleNamespace

    from drkit.stages.train_task import training_data
    synth = tmp_path / "s"
    (synth / "videos").mkdir(parents=True)
    (synth / "synth.json").write_text("{}")
    st = SimpleNamespace(video_info=lambda v: {"source": str(synth / "videos" / v)})
    s = SimpleNamespace(stores={"a.avi": st, "b.avi": st}, __len__=lambda: 2)
    labels = SimpleNamespace(person={"a.avi": "p", "b.avi": "q"}, path=tmp_path / "l.csv")

    class S(SimpleNamespace):
        def __len__(self):
            return 10
    d = training_data(S(stores=s.stores), labels)
    assert d["synthetic"] is True and d["people"] == 2 and d["frames"] == 10
    st2 = SimpleNamespace(video_info=lambda v: {"source": str(tmp_path / "real" / v)})
    assert training_data(S(stores={"a.avi": st, "c.avi": st2}), labels)["synthetic"] is False


def test_inspect_draws_a_dr_store_frame(task_data, tmp_path):
    out = tmp_path / "f.png"
    st = task_data["mdr"]
    r = cli("inspect", st, "--video", "p0.avi", "--frame", "3", "-o", out)
    assert r.returncode == 0, r.stderr
    img = cv2.imread(str(out))
    assert img.shape[1] == 192 + 2 * (192 + 64)       # the crop and two labelled DR maps with colour bars
    r = cli("inspect", st, "--frame", "3", "-o", out)   # several videos: which one?
    assert r.returncode == 1 and "pick one with --video" in r.stderr
    meta = json.loads((st / "zarr.json").read_text())
    assert "p0.avi" in meta["attributes"]["videos"]
