"""Bad label files and unstable training: every bad input stops with one clear line (or warns),
a run whose loss turns non-finite stops keeping its last good checkpoint, and a run resumed in
the middle of an epoch writes the same metrics as one never interrupted."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from conftest import cli, make_face_store

from drkit import log
from drkit.checkpoint import Checkpoint, load_checkpoint
from drkit.contracts import DRConfig, ModelSpec
from drkit.errors import DrkitError
from drkit.labels import read_labels
from drkit.nets import create_model
from drkit.store import open_store
from drkit.tasks import TASK_RANGE, labelled_frames, out_of_range
from drkit.train import LoopConfig, fit, whole_batches


@pytest.fixture
def warnings(monkeypatch):
    got: list[str] = []
    monkeypatch.setattr(log, "warn", got.append)
    return got


# ------------------------------------------------------------------ the label corpus

H = "video,frame,person,t1,t2\n"

# name -> (file bytes, expected): ("error", regex) | ("ok", {(video, frame): [t1, t2]}, warning regex or None)
CORPUS = {
    "inf": (H + "v,0,p,1,2\nv,1,p,inf,2\n",
            ("error", r"l\.csv:3: column t1: 'inf' is not a finite number; leave the cell empty")),
    "-inf": (H + "v,0,p,1,2\nv,1,p,1,-inf\n",
             ("error", r"l\.csv:3: column t2: '-inf' is not a finite number")),
    "Infinity": (H + "v,0,p,-Infinity,2\n", ("error", r"l\.csv:2: column t1: '-Infinity' is not a finite")),
    "beyond float32": (H + "v,0,p,1e39,2\n", ("error", r"l\.csv:2: column t1: '1e39' is too large")),
    "nan is missing": (H + "v,0,p,nan,2\nv,1,p,NaN,\nv,2,p,-nan,NA\n",
                       ("ok", {("v", 0): [None, 2], ("v", 1): [None, None], ("v", 2): [None, None]}, None)),
    "utf-8 BOM (Excel)": ("\ufeff" + H.replace("\n", "\r\n") + "v,0,p,1,2\r\n",
                          ("ok", {("v", 0): [1, 2]}, None)),
    "utf-8 non-ascii id": (H + "vidéo,0,p,1,2\n", ("ok", {("vidéo", 0): [1, 2]}, None)),
    "latin-1": ((H + "v,0,p,1,2\nvidéo,1,p,1,2\n").encode("latin-1"),
                ("error", r"l\.csv:3: not UTF-8 text \(byte 0xe9\); save it as UTF-8 CSV")),
    "duplicate rows": (H + "v,0,p,1,1\nv,1,p,2,2\nw,0,q,0,0\nv,0,p,3,3\nv,1,p,4,4\n",
                       ("ok", {("v", 0): [3, 3], ("v", 1): [4, 4], ("w", 0): [0, 0]},
                        (r"l\.csv: 2 duplicate \(video, frame\) row\(s\), the last of each is used; "
                         r"first: lines 2 and 5 \(v frame 0\)"))),
    "fractional frame": (H + "v,0,p,1,2\nv,12.5,p,1,2\n",
                         ("error", r"l\.csv:3: frame '12.5' is not an integer; frame numbers are source frame")),
    "integral float frame": (H + "v,12.0,p,1,2\nv,1e1,p,3,4\n",
                             ("ok", {("v", 12): [1, 2], ("v", 10): [3, 4]}, None)),
    "inf frame": (H + "v,inf,p,1,2\n", ("error", r"l\.csv:2: frame 'inf' is not an integer")),
    "word frame": (H + "v,first,p,1,2\n", ("error", r"l\.csv:2: frame 'first' is not an integer")),
    "header only": ("video,frame,person\nv,0,p\n",
                    ("error", (r"l\.csv: has no target columns after video,frame\[,person\] "
                               r"\(header: video,frame,person\)"))),
    "header only, no rows": ("video,frame\n", ("error", r"l\.csv: has no target columns after video,frame")),
    "NUL byte": (H + "v,0,p,1\x00,2\n", ("error", r"l\.csv:2: t1='1\\x00' is not a number")),
    "huge field": (H + "v,0,p," + "1" * 200_000 + ",2\n",
                   ("error", r"l\.csv:2: not a readable CSV row \(field larger than field limit")),
}


@pytest.mark.parametrize("name", list(CORPUS))
def test_label_corpus(name, tmp_path, warnings):
    content, expect = CORPUS[name]
    f = tmp_path / "l.csv"
    f.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    if expect[0] == "error":
        with pytest.raises(DrkitError, match=expect[1]) as e:
            read_labels(f)
        assert "\n" not in str(e.value)
        assert not warnings
        return
    _, values, warn = expect
    L = read_labels(f)
    assert L.targets == ["t1", "t2"] and L.path == f
    got = {(v, fr): [None if math.isnan(x) else x for x in y.tolist()]
           for v, frames in L.frames.items() for fr, y in frames.items()}
    assert got == values
    if warn is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and re.search(warn, warnings[0]), warnings


def test_sentinel_inf_is_missing_not_an_error(tmp_path):
    f = tmp_path / "l.csv"
    f.write_text(H + "v,0,p,inf,9\n")
    L = read_labels(f, missing=(9, math.inf))
    assert np.isnan(L.frames["v"][0]).all()


# ------------------------------------------------------------------ labels that match nothing

@pytest.fixture
def tiny_store(tmp_path):
    frames = np.full((4, 16, 16, 3), 7, np.uint8)   # all-zero chunks are not stored
    path = make_face_store(tmp_path / "faces.zarr", {"a.avi": frames, "b.avi": frames})
    return open_store(path)


def _labels(tmp_path, body: str):
    f = tmp_path / "labels.csv"
    f.write_text(H + body)
    return read_labels(f)


def test_no_known_videos_names_both_id_styles(tmp_path, tiny_store):
    L = _labels(tmp_path, "x_a,0,p,1,1\nx_b,1,q,1,1\nx_c,1,q,1,1\n")
    with pytest.raises(DrkitError, match=r"^none of the 3 video ids in labels\.csv is in .*faces\.zarr \(label ids "
                                         r"look like 'x_a', 'x_b', store ids like 'a\.avi', 'b\.avi'\); see "
                                         r"`drkit inspect .*faces\.zarr`$"):
        labelled_frames([tiny_store], L)


def test_videos_match_but_no_frame_numbers(tmp_path, tiny_store):
    L = _labels(tmp_path, "a.avi,100,p,1,1\nb.avi,101,q,1,1\n")
    with pytest.raises(DrkitError, match=r"^2 video\(s\) of labels\.csv are in .*faces\.zarr but none of their "
                                         r"frame numbers is; frame numbers are source frame indices"):
        labelled_frames([tiny_store], L)


def test_frames_match_but_every_label_missing_and_people(tmp_path, tiny_store):
    L = _labels(tmp_path, "a.avi,0,p,,\nb.avi,1,q,nan,\n")
    with pytest.raises(DrkitError, match=r"every label of the matching frames of labels\.csv .* is missing"):
        labelled_frames([tiny_store], L)
    L = _labels(tmp_path, "a.avi,0,p,1,1\nb.avi,1,q,1,1\n")
    assert len(labelled_frames([tiny_store], L)) == 2
    assert len(labelled_frames([tiny_store], L, {"q"})) == 1
    with pytest.raises(DrkitError, match=r"none of the 2 videos of labels\.csv in .* belongs to the people "
                                         r"asked for \(zed\)"):
        labelled_frames([tiny_store], L, {"zed"})


# ------------------------------------------------------------------ train-task

def test_cli_train_task_bad_labels_one_line(task_data, tmp_path):
    src = task_data["labels"].read_text().splitlines()
    bad = tmp_path / "labels.csv"
    bad.write_text("\n".join(src[:5] + [src[5].rsplit(",", 1)[0] + ",inf"] + src[6:]) + "\n")
    r = cli("train-task", task_data["mdr"], "--labels", bad, "-o", tmp_path / "run", "--epochs", "1")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "internal error" not in r.stderr, r.stderr
    assert lines[0].startswith("error:") and "labels.csv:6: column t2: 'inf' is not a finite number" in lines[0]
    assert not (tmp_path / "run" / "best.pt").exists()
    # ids that are not the store's: the real cause, not "check the frame numbers"
    wrong = tmp_path / "wrong" / "labels.csv"
    wrong.parent.mkdir()
    wrong.write_text("\n".join([src[0]] + [ln.replace("p", "clip_p", 1) for ln in src[1:]]) + "\n")
    r = cli("train-task", task_data["mdr"], "--labels", wrong, "-o", tmp_path / "run2", "--epochs", "1")
    assert r.returncode == 1 and "internal error" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "none of the 8 video ids in labels.csv is in" in last and "store ids like 'p0.avi'" in last, last


def test_train_task_warns_labels_outside_the_task_range(task_data, tmp_path, warnings):
    from drkit.stages import train_task
    L = read_labels(task_data["labels"])
    y = np.stack([v for fr in L.frames.values() for v in fr.values()])
    lo, hi = TASK_RANGE["affect"]
    want = {t: int(((y[:, j] < lo) | (y[:, j] > hi)).sum()) for j, t in enumerate(L.targets)}
    assert all(want.values())
    train_task.run(train_task.TrainTaskConfig(
        input=[str(task_data["mdr"])], out=str(tmp_path / "run"), labels=str(task_data["labels"]),
        task="affect", input_kind="si", epochs=1, width=4, batch_size=128))
    rng = [w for w in warnings if "range" in w]
    assert rng == [(f"{task_data['labels']}: {sum(want.values())} label value(s) outside the --task affect "
                    f"range -1..1 (t1: {want['t1']}, t2: {want['t2']}); check --task and the label scale")]
    assert out_of_range("au", L.targets, y) == {}      # the same labels fit AU intensities (0..5)
    assert out_of_range("au", ["a", "b"], np.array([[6, np.nan], [-0.5, 5]], np.float32)) == {"a": 2}


# ------------------------------------------------------------------ the loop: non-finite loss, resume

N_BATCHES = 5


def _template() -> Checkpoint:
    return Checkpoint(kind="dr", model=ModelSpec("small_cnn", {"in_ch": 1, "n_out": 1, "width": 2}),
                      config=DRConfig(T=1, stride=1, net_size=16), state_dict={})


def _model():
    torch.manual_seed(0)
    return create_model("small_cnn", in_ch=1, n_out=1, width=2)


def _batches(epoch: int, start: int):
    for b in range(start, N_BATCHES):
        g = torch.Generator().manual_seed(1000 * epoch + b)
        x = torch.rand(4, 1, 16, 16, generator=g)
        yield x, x.mean((1, 2, 3))[:, None] * 3


def _step(nan_at=None, bad_grad_at=None, kill_at=None):
    n = {"step": 0}

    def step(model, batch, device):
        n["step"] += 1
        if n["step"] == kill_at:
            raise KeyboardInterrupt
        x, y = batch
        pred = model(x)
        loss = torch.nn.functional.mse_loss(pred, y)
        if n["step"] == nan_at:
            loss = loss * float("nan")
        if n["step"] == bad_grad_at:     # a finite loss whose gradient is NaN
            loss = loss + torch.sqrt(sum(p.sum() for p in model.parameters()) * 0)
        return loss, {"acc": float((pred > y).float().mean())}
    return step


def _fit(out, step, epochs=2, resume=False, save_every_s=0.0):
    return fit(_model(), LoopConfig(out=out, epochs=epochs, device="cpu", resume=resume,
                                    save_every_s=save_every_s),
               _template(), whole_batches(_batches), N_BATCHES, step, None, monitor="loss", mode="min")


def _finite(path) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in load_checkpoint(path).state_dict.values())


@pytest.mark.parametrize("nan_at, kept", [(3, "last.pt"), (N_BATCHES + 2, "last.pt, best.pt")])
def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, nan_at, kept):
    out = tmp_path / "run"
    epoch, batch = divmod(nan_at - 1, N_BATCHES)
    with pytest.raises(DrkitError, match=rf"^{out}: the training loss became nan at epoch {epoch + 1}, batch "
                                         rf"{batch + 1}; stopped and kept the last good checkpoint \({kept}\); "
                                         r"check the labels for extreme values or lower --lr$"):
        _fit(out, _step(nan_at=nan_at))
    ck = load_checkpoint(out / "last.pt")
    assert _finite(out / "last.pt") and ck.train_state["global_step"] == nan_at - 1
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()] \
        if (out / "metrics.jsonl").exists() else []
    assert len(recs) == epoch                   # only whole good epochs are recorded
    if epoch:
        assert _finite(out / "best.pt") and math.isfinite(recs[0]["best"])
    else:
        assert not (out / "best.pt").exists()


@pytest.mark.parametrize("save_every_s", [0.0, 1e9])
def test_nonfinite_weights_are_never_saved(tmp_path, save_every_s):
    out = tmp_path / "run"
    with pytest.raises(DrkitError, match=r"(weights became non-finite \(NaN/inf\) by epoch 1, batch 3|"
                                         r"loss became nan at epoch 1, batch 4); stopped and "):
        _fit(out, _step(bad_grad_at=3), save_every_s=save_every_s)
    if save_every_s:
        assert not (out / "last.pt").exists()
    else:
        assert _finite(out / "last.pt") and load_checkpoint(out / "last.pt").train_state["global_step"] == 2


def _records(out):
    keep = ("epoch", "step", "train_loss", "train_acc", "best")
    return [{k: r[k] for k in keep} for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


@pytest.mark.parametrize("kill_at", [3, N_BATCHES + 2, N_BATCHES])
def test_mid_epoch_resume_writes_the_same_records(tmp_path, kill_at):
    full, part = tmp_path / "full", tmp_path / "part"
    _fit(full, _step())
    with pytest.raises(KeyboardInterrupt):
        _fit(part, _step(kill_at=kill_at))
    st = load_checkpoint(part / "last.pt").train_state
    assert st["global_step"] == kill_at - 1
    _fit(part, _step(), resume=True)
    assert _records(part) == _records(full)          # exactly equal floats
    assert len(_records(full)) == 2
    for r in map(json.loads, (part / "metrics.jsonl").read_text().splitlines()):
        assert r["batches_per_s"] > 0 and 0 <= r["data_wait_share"] <= 1
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(part / "last.pt")
    for k in a.state_dict:
        torch.testing.assert_close(a.state_dict[k], b.state_dict[k], rtol=0, atol=0)
    assert b.train_state["finished"] and b.train_state["ep_seen"] == 0 and b.train_state["ep_sums"] == {}


def test_train_task_refuses_dr_stores_of_different_map_sizes(task_data, tmp_path):
    from drkit.configs import GenDRConfig, TrainTaskConfig
    from drkit.stages import gen_dr, train_task
    small = tmp_path / "small.zarr"
    gen_dr.run(GenDRConfig(store=task_data["faces"], out=small, dr=task_data["drs"], map_size=16))
    with pytest.raises(DrkitError, match=r"maps of 16 px.*gen-dr --map-size 32"):
        train_task.run(TrainTaskConfig(input=[task_data["mdr"]], val=[small], out=tmp_path / "r",
                                       labels=task_data["labels"], epochs=1))
