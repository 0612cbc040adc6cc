"""HG-HMR (train-task --arch hg_hmr, drkit/hourglass.py): target heatmaps, decoding, flips,
landmarks in DR stores, learning, resume, predict and eval-task with an hg_hmr bundle."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
import torch
from conftest import cli

from drkit.batching import batch_generator, random_flip
from drkit.checkpoint import load_checkpoint
from drkit.contracts import face_arrays
from drkit.errors import DrkitError
from drkit.hourglass import (
    AU_CENTRES,
    HourglassHMR,
    au_centres,
    canonical_au,
    decode,
    heatmap_loss,
    heatmap_side,
    target_heatmaps,
)
from drkit.labels import write_labels
from drkit.nets import create_model
from drkit.stages import gen_dr, train_task
from drkit.store import VideoWriter, create_store, open_store, video_problem

CROP, MAP = 48, 32          # face-store crops, DR-store maps (gen-dr resizes, landmarks scale)


def template68() -> np.ndarray:
    """A crude frontal iBUG-68 layout in a unit face box (x right, y down), mirror-symmetric."""
    p = np.zeros((68, 2))
    th = np.pi * np.arange(17) / 16
    p[:17] = np.c_[0.5 - 0.45 * np.cos(th), 0.35 + 0.6 * np.sin(th)]               # jaw
    p[17:22] = np.c_[np.linspace(0.15, 0.42, 5), np.full(5, 0.25)]                   # brows
    p[22:27] = np.c_[np.linspace(0.58, 0.85, 5), np.full(5, 0.25)]
    p[27:31] = np.c_[np.full(4, 0.5), np.linspace(0.33, 0.55, 4)]                    # nose
    p[31:36] = np.c_[np.linspace(0.42, 0.58, 5), np.full(5, 0.6)]
    a = np.pi * np.array([1, 0.75, 0.25, 0, -0.25, -0.75])
    for c, sl in ((0.3, slice(36, 42)), (0.7, slice(42, 48))):                       # eyes
        p[sl] = np.c_[c + 0.07 * np.cos(a), 0.37 - 0.03 * np.sin(a)]
    a = np.pi * (1 - np.arange(12) / 6)                                             # lips 48-59
    p[48:60] = np.c_[0.5 + 0.15 * np.cos(a), 0.75 - 0.06 * np.sin(a)]
    a = np.pi * (1 - np.arange(8) / 4)                                              # 60-67
    p[60:68] = np.c_[0.5 + 0.1 * np.cos(a), 0.75 - 0.025 * np.sin(a)]
    return p


def au_faces(path, people: int = 6, n: int = 40, seed: int = 0):
    """A face store written directly (crops of CROP px with real landmark positions) and a label
    CSV: each person has a face box of their own (size, place) that moves a little per frame; the
    image shows a bright blob at the lip corners (landmarks 48, 54) of brightness 0.1 * AU12 and
    one at the inner brows (21, 22) of brightness 0.1 * AU01, so both AUs are known functions of
    the image, unchanged by a mirror image. AU01 is missing (empty) in every third frame."""
    rng = np.random.default_rng(seed)
    tpl = template68()
    yy, xx = np.mgrid[:CROP, :CROP].astype(np.float32)
    create_store(path, "faces", {"size": CROP, "align": True})
    rows = []
    for p in range(people):
        vid = f"p{p}.avi"
        scale, off = rng.uniform(34, 42), rng.uniform(2, 8, 2)
        bg, skin = rng.uniform(0.05, 0.2, 3), rng.uniform(0.35, 0.55, 3)
        frames, lms = [], []
        for i in range(n):
            lm = tpl * scale + off + rng.normal(0, 1.0, 2)
            au12, au01 = rng.uniform(0, 5, 2)
            img = np.ones((CROP, CROP, 3), np.float32) * bg
            c, r = lm[27:31].mean(0), scale * np.array([0.45, 0.55])
            face = ((xx - c[0]) / r[0]) ** 2 + ((yy - c[1] - 0.1 * scale) / r[1]) ** 2 < 1
            img[face] = skin
            for idx, amp in (((48, 54), 0.1 * au12), ((21, 22), 0.1 * au01)):
                for j in idx:
                    img += amp * np.exp(-((xx - lm[j, 0]) ** 2 + (yy - lm[j, 1]) ** 2) / (2 * 1.5 ** 2))[..., None]
            img += rng.normal(0, 0.02, img.shape)
            frames.append((255 * np.clip(img, 0, 1)).astype(np.uint8))
            lms.append(lm)
            rows.append({"video": vid, "frame": i, "person": f"person{p}", "AU12": round(au12, 3),
                         "AU01": None if i % 3 == 0 else round(au01, 3)})
        with VideoWriter(path, vid, face_arrays(CROP), "faces") as w:
            w.append(frames=np.stack(frames), landmarks=np.stack(lms).astype(np.float32),
                     frame_index=np.arange(n), confidence=np.ones(n), detected=np.ones(n, bool),
                     transform=np.zeros((n, 2, 3)))
            w.commit({"source": vid, "fps": 25.0, "n_source_frames": n})
    labels = path.parent / "au_labels.csv"
    write_labels(labels, rows, ["AU12", "AU01"])
    return path, labels


@pytest.fixture(scope="module")
def hg_data(task_data, tmp_path_factory):
    """Face store + labels, and a DR store (image + the T=2 DR of task_data: MDR, 6 channels at
    MAP px) made by gen-dr."""
    d = tmp_path_factory.mktemp("hg")
    faces, labels = au_faces(d / "faces.zarr")
    mdr = d / "mdr.zarr"
    gen_dr.run(gen_dr.GenDRConfig(store=faces, out=mdr, dr=[task_data["drs"][1]]))
    return {"dir": d, "faces": faces, "labels": labels, "mdr": mdr}


def hg_cfg(data, out, **kw):
    base = dict(input=[data["mdr"]], out=out, labels=data["labels"], task="au", input_kind="mdr",
                arch="hg_hmr", val_people=["person0", "person1"], epochs=1, batch_size=16)
    return train_task.TrainTaskConfig(**{**base, **kw})


# ------------------------------------------------------------------ heatmaps by hand

def test_target_heatmap_of_known_intensity_decodes_back():
    lm = torch.from_numpy(template68() * 28 + 2).float()[None].repeat(3, 1, 1)
    lm[1] += torch.tensor([0.37, -0.81])             # centres between heatmap pixels
    y = torch.tensor([[3.7, 0.0, 5.0], [1.25, 2.5, float("nan")], [0.4, 4.9, 2.0]])
    cen = au_centres(["AU12", "AU6", "au17"])
    t = target_heatmaps(lm, y, cen, 32, heatmap_side(32), sigma=0.06)
    assert t.shape == (3, 3, 8, 8)
    torch.testing.assert_close(decode(t), torch.nan_to_num(y, nan=0.0))
    # the same through the network's decoding: a head that outputs the target reproduces y
    net = HourglassHMR(in_ch=3, n_out=3, width=8, centres=cen)
    net.heatmaps = lambda x: [t]
    torch.testing.assert_close(net(torch.zeros(3, 3, 32, 32)), torch.nan_to_num(y, nan=0.0))


def test_targets_are_gaussians_at_the_au_landmarks():
    M, side, sigma = 64, heatmap_side(64), 0.1
    lm = torch.from_numpy(template68() * 56 + 4).float()[None]
    y = torch.tensor([[2.0, 3.0, 1.0]])
    t = target_heatmaps(lm, y, au_centres(["AU12", "AU17", "AU01"]), M, side, sigma)[0]
    s = sigma * side
    grid = torch.arange(side, dtype=torch.float32)

    def gauss(p):                         # unnormalised Gaussian at map point p, in heatmap pixels
        u = (p + 0.5) * side / M - 0.5
        return torch.exp(-((grid[None] - u[0]) ** 2 + (grid[:, None] - u[1]) ** 2) / (2 * s * s))

    def peak(hm):
        i = int(hm.argmax())
        return i % hm.shape[1], i // hm.shape[1]        # x, y

    # AU12: two Gaussians, at the lip corners 48 and 54, each with its peak scaled to 2
    g48, g54 = gauss(lm[0, 48]), gauss(lm[0, 54])
    expect = 2.0 * torch.maximum(g48 / g48.max(), g54 / g54.max())
    torch.testing.assert_close(t[0], expect)
    left, right = t[0][:, : side // 2], t[0][:, side // 2:]
    assert left.max() == pytest.approx(2.0) and right.max() == pytest.approx(2.0)
    for j, half, dx in ((48, left, 0), (54, right, side // 2)):
        px, py = peak(half)
        u = (lm[0, j] + 0.5) * side / M - 0.5
        assert abs(px + dx - float(u[0])) <= 0.5 and abs(py - float(u[1])) <= 0.5
    # AU17: one Gaussian at the midpoint of chin (8) and lower lip (57)
    g = gauss(lm[0, [8, 57]].mean(0))
    torch.testing.assert_close(t[1], 3.0 * g / g.max())
    # AU01 on the inner brows 21 and 22: the peaks are above the lip corners' (smaller y)
    assert peak(t[2])[1] < peak(t[0])[1]
    # intensity 0 draws nothing
    assert target_heatmaps(lm, torch.zeros(1, 3), au_centres(["AU12", "AU17", "AU01"]), M, side).abs().max() == 0


def test_au_table_names_and_refusals():
    assert canonical_au("AU6") == canonical_au("au06") == canonical_au("AU06") == "AU06"
    assert canonical_au("valence") is None
    assert set(AU_CENTRES) >= {"AU06", "AU10", "AU12", "AU14", "AU17", "AU01", "AU02", "AU04", "AU25", "AU26"}
    for cs in AU_CENTRES.values():
        assert all(0 <= i < 68 for c in cs for i in c)
    with pytest.raises(DrkitError, match="no AU -> landmark entry for t1.*known: AU01"):
        au_centres(["AU12", "t1"])


def test_flip_keeps_image_and_targets_aligned():
    """train-task builds targets from the unflipped landmarks, then mirrors image and targets
    with the same random choice: the flipped target equals the target of the flipped face."""
    M = 32
    side = heatmap_side(M)
    rng = np.random.default_rng(3)
    lm = torch.from_numpy(template68()[None] * 24 + rng.uniform(1, 7, (8, 1, 2))).float()
    y = torch.from_numpy(rng.uniform(0, 5, (8, 2))).float()
    cen = au_centres(["AU12", "AU06"])
    yy, xx = torch.meshgrid(torch.arange(M).float(), torch.arange(M).float(), indexing="ij")
    x = torch.stack([torch.exp(-((xx - p[48, 0]) ** 2 + (yy - p[48, 1]) ** 2) / 4) for p in lm])[:, None]
    t = target_heatmaps(lm, y, cen, M, side)
    x2, t2 = x.clone(), t.clone()
    random_flip(x2, batch_generator(0, 1, 2))
    random_flip(t2, batch_generator(0, 1, 2))
    flipped = (x2 != x).flatten(1).any(1)
    assert 0 < int(flipped.sum()) < 8
    assert torch.equal(flipped, (t2 != t).flatten(1).any(1))
    mirrored = lm.clone()
    mirrored[:, :, 0] = M - 1 - mirrored[:, :, 0]          # the mirror image's landmarks (x)
    t_mirror = target_heatmaps(mirrored, y, cen, M, side)
    torch.testing.assert_close(t2[flipped], t_mirror[flipped], atol=1e-5, rtol=0)
    # the image blob (at landmark 48) and the target peak flip to the same side
    for i in np.flatnonzero(flipped.numpy()):
        img_x = int(x2[i, 0].amax(0).argmax())
        assert (img_x < M / 2) == (float(mirrored[i, 48, 0]) < M / 2)


def test_heatmap_loss_masks_missing_labels():
    torch.manual_seed(0)
    pred = torch.rand(4, 2, 8, 8, requires_grad=True)
    target = torch.rand(4, 2, 8, 8)
    y = torch.tensor([[1.0, float("nan")], [2.0, 3.0], [float("nan"), float("nan")], [0.0, 1.0]])
    loss = heatmap_loss([pred], target, y)
    m = ~torch.isnan(y)
    assert loss.item() == pytest.approx(((pred.detach() - target) ** 2).mean((-2, -1))[m].mean().item())
    loss.backward()
    assert (pred.grad[~m] == 0).all() and (pred.grad[m] != 0).any()
    t2 = target.clone()
    t2[~m] = 99.0                       # whatever is drawn for a missing label does not count
    with torch.no_grad():
        assert heatmap_loss([pred], t2, y).item() == pytest.approx(loss.item())
        assert heatmap_loss([pred], target, torch.full((4, 2), float("nan"))).item() == 0.0
        two = heatmap_loss([pred, pred], target, y)            # stacks add up
        assert two.item() == pytest.approx(2 * loss.item())


def test_network_shapes_and_registry():
    for M, stacks in ((32, 1), (33, 2), (112, 1)):
        m = create_model("hg_hmr", in_ch=6, n_out=5, width=8, stacks=stacks, centres=au_centres(["AU01"] * 5))
        hms = m.heatmaps(torch.rand(2, 6, M, M))
        assert len(hms) == stacks and hms[-1].shape == (2, 5, heatmap_side(M), heatmap_side(M))
        out = m(torch.rand(2, 6, M, M))
        assert out.shape == (2, 5) and (out >= 0).all()
        assert m.eval()(torch.rand(1, 6, M, M)).shape == (1, 5)    # one image (predict)
    assert heatmap_side(112) == 28 and heatmap_side(224) == 56


# ------------------------------------------------------------------ DR store landmarks

def test_gen_dr_writes_landmarks_scaled_to_map_size(hg_data):
    faces, mdr = open_store(hg_data["faces"], "faces"), open_store(hg_data["mdr"], "dr")
    assert mdr.params["map_size"] == MAP
    for v in faces.videos:
        lm = mdr.video(v)["landmarks"]
        assert lm.shape == (40, 68, 2) and lm.dtype == np.float32
        expect = (faces.video(v)["landmarks"][:] + 0.5) * MAP / CROP - 0.5
        np.testing.assert_allclose(lm[:], expect, rtol=0, atol=1e-5)


def test_old_dr_store_without_landmarks_reads_and_hg_hmr_says_how_to_fix(hg_data, tmp_path):
    import shutil
    old = tmp_path / "old.zarr"
    shutil.copytree(hg_data["mdr"], old)
    for v in open_store(old).videos:
        shutil.rmtree(old / v / "landmarks")       # what gen-dr wrote before landmarks
    st = open_store(old, "dr")
    assert all(video_problem(old, v, "dr") is None for v in st.videos)
    assert st.video("p0.avi")["mdr"].shape[0] == 40
    # other architectures train on it as before
    r = train_task.run(hg_cfg(hg_data, tmp_path / "small", input=[old], arch="small", width=4))
    assert np.isfinite(r["val"]["icc"])
    with pytest.raises(DrkitError, match="gen-dr .*--overwrite"):
        train_task.run(hg_cfg({**hg_data, "mdr": old}, tmp_path / "hg"))
    # a damaged landmarks array (wrong length) is found like any other damage
    shutil.copytree(hg_data["mdr"] / "p1.avi" / "landmarks", old / "p1.avi" / "landmarks")
    meta = json.loads((old / "p1.avi" / "landmarks" / "zarr.json").read_text())
    meta["shape"][0] = 39
    (old / "p1.avi" / "landmarks" / "zarr.json").write_text(json.dumps(meta))
    assert "landmarks" in video_problem(old, "p1.avi", "dr")


def test_hg_hmr_refuses_targets_it_cannot_draw(task_data, hg_data, tmp_path):
    with pytest.raises(DrkitError, match="no AU -> landmark entry for t1, t2"):
        train_task.run(train_task.TrainTaskConfig(input=[task_data["mdr"]], out=tmp_path / "a",
                                                  labels=task_data["labels"], arch="hg_hmr"))
    with pytest.raises(DrkitError, match="--task affect"):
        train_task.run(hg_cfg(hg_data, tmp_path / "b", task="affect"))
    r = cli("train-task", hg_data["mdr"], "--labels", task_data["labels"], "-o", tmp_path / "c",
            "--arch", "hg_hmr")
    assert r.returncode == 1 and "known: AU01" in r.stderr
    assert not (tmp_path / "a").exists()


# ------------------------------------------------------------------ training, resume, bundles

def test_hg_hmr_learns_intensity_on_held_out_people(hg_data):
    """Intensities are blob brightnesses at the AUs' landmarks; trained on 4 people, validated on
    2 others: the loss falls, and ICC on the unseen people is far above chance (0). About 10 s on
    2 idle CPU cores (ICC about 0.97); the time budget is only a guard against a busy machine."""
    out = hg_data["dir"] / "learn"
    r = train_task.run(hg_cfg(hg_data, out, input_kind="si", epochs=10, time_budget=90))
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["train_loss"] < 0.5 * recs[0]["train_loss"], recs
    assert r["val"]["icc/AU12"] > 0.6 and r["val"]["icc/AU01"] > 0.4, r["val"]
    ck = load_checkpoint(out / "best.pt", "task")
    kw = ck.model.kwargs
    assert ck.model.name == "hg_hmr" and kw["aus"] == ["AU12", "AU01"]
    assert kw["centres"] == [[[48], [54]], [[21], [22]]] and kw["sigma"] == 0.06 and kw["width"] == 32
    assert ck.config.train["arch"] == "hg_hmr" and ck.config.train["stacks"] == 1


def test_hg_hmr_resume_continues_exactly(hg_data, tmp_path):
    kw = dict(width=8, stacks=2, val_people=["person0"], train_people=["person1", "person2"])
    train_task.run(hg_cfg(hg_data, tmp_path / "full", epochs=2, **kw))
    train_task.run(hg_cfg(hg_data, tmp_path / "part", epochs=1, **kw))
    ck = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    ck["train_state"]["finished"] = False
    torch.save(ck, tmp_path / "part" / "last.pt")
    train_task.run(hg_cfg(hg_data, tmp_path / "part", epochs=2, resume=True, **kw))
    a = load_checkpoint(tmp_path / "full" / "last.pt").state_dict
    b = load_checkpoint(tmp_path / "part" / "last.pt").state_dict
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_hg_hmr_bundle_in_eval_task_and_predict(hg_data, tmp_path):
    import skimage.data
    out = tmp_path / "run"
    r = cli("train-task", hg_data["mdr"], "--labels", hg_data["labels"], "-o", out, "--arch", "hg_hmr",
            "--width", "8", "--stacks", "2", "--heatmap-sigma", "0.1", "--epochs", "1", "--val-people",
            "person0,person1")
    assert r.returncode == 0, r.stderr
    ck = load_checkpoint(out / "best.pt", "task")
    assert ck.model.kwargs["stacks"] == 2 and ck.model.kwargs["sigma"] == 0.1 and len(ck.dr_nets) == 1
    val = json.loads((out / "val_metrics.json").read_text())
    js = tmp_path / "ev.json"
    r = cli("eval-task", out, hg_data["mdr"], "--labels", hg_data["labels"], "--people", "person0,person1",
            "--json", js)
    assert r.returncode == 0, r.stderr
    ev = json.loads(js.read_text())
    assert ev["frames"] == 80 and {k: v for k, v in ev.items() if k != "frames"} == pytest.approx(val, rel=1e-6, abs=1e-7)
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    pred = tmp_path / "pred.csv"
    r = cli("predict", out, face, "-o", pred)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(pred)))
    assert list(rows[0]) == ["input", "frame", "timestamp", "face_found", "confidence", "AU12", "AU01"]
    assert rows[0]["face_found"] == "1" and all(float(rows[0][a]) >= 0 for a in ("AU12", "AU01"))
