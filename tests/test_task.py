"""From DRs to answers: metrics, labels, gen-dr, train-task, predict."""

from __future__ import annotations

import csv
import importlib.util
import json

import cv2
import numpy as np
import pytest
import torch
from conftest import cli

from drkit import metrics
from drkit.checkpoint import load_checkpoint
from drkit.datasets import read_avec2012, read_fera2015
from drkit.errors import DrkitError
from drkit.labels import read_labels, write_labels
from drkit.stages import gen_dr, train_task
from drkit.store import open_store
from drkit.tasks import person_split

# ------------------------------------------------------------------ metrics by hand

def test_icc31_matches_shrout_fleiss_table():
    """Shrout & Fleiss (1979) Table 2: 6 targets rated by 4 judges; ICC(3,1) = 0.71."""
    Y = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]
    assert metrics.icc31_ratings(Y) == pytest.approx(0.715, abs=0.005)


def test_icc31_two_raters_by_hand():
    p, t = np.array([1.0, 2, 3, 4]), np.array([2.0, 2, 4, 5])
    # rows means 1.5 2 3.5 4.5, grand mean 2.875; BMS = 2*sum((m-gm)^2)/3, EMS by hand:
    m = np.array([1.5, 2, 3.5, 4.5])
    bms = 2 * ((m - 2.875) ** 2).sum() / 3
    ss_cols = 4 * ((2.5 - 2.875) ** 2 + (3.25 - 2.875) ** 2)
    ss_tot = ((np.r_[p, t] - 2.875) ** 2).sum()
    ems = (ss_tot - 3 * bms - ss_cols) / 3
    assert metrics.icc31(p, t)[0] == pytest.approx((bms - ems) / (bms + ems))
    assert metrics.icc31(t, t)[0] == pytest.approx(1.0)
    assert metrics.icc31(t + 3, t)[0] == pytest.approx(1.0)   # consistency: offsets are free


def test_pcc_ccc_mse_mae_by_hand():
    p, t = np.array([1.0, 2, 3]), np.array([1.0, 2, 4])
    assert metrics.pcc(p, t)[0] == pytest.approx(3 / np.sqrt(2 * 42 / 9))
    assert metrics.ccc(p, t)[0] == pytest.approx(18 / 21)
    assert metrics.mse(p, t)[0] == pytest.approx(1 / 3)
    assert metrics.mae(p, t)[0] == pytest.approx(1 / 3)
    two = metrics.pcc(np.c_[p, p], np.c_[t, -t])
    assert two[0] == pytest.approx(-two[1])


# ------------------------------------------------------------------ labels

def test_label_csv_missing_values(tmp_path):
    f = tmp_path / "l.csv"
    f.write_text("video,frame,person,AU06,AU12\nv1,0,p1,1,9\nv1,1,p1,,2\nv1,2,p1,NaN,3\nv2,5,p2,4,0\n")
    L = read_labels(f, missing=(9,))
    assert L.targets == ["AU06", "AU12"] and L.person == {"v1": "p1", "v2": "p2"}
    y = L.lookup("v1", np.array([0, 1, 2, 7]))
    assert np.isnan(y[0, 1]) and y[0, 0] == 1 and np.isnan(y[1, 0]) and y[2, 1] == 3
    assert np.isnan(y[3]).all()
    assert read_labels(f, targets=["AU12"]).targets == ["AU12"]
    with pytest.raises(DrkitError, match="no column AU99"):
        read_labels(f, targets=["AU99"])
    (tmp_path / "bad.csv").write_text("clip,frame,AU06\n")
    with pytest.raises(DrkitError, match="video,frame"):
        read_labels(tmp_path / "bad.csv")


def test_fera2015_and_avec2012_readers(tmp_path):
    for au, vals in (("AU06", "1,0\n2,3\n3,9\n"), ("AU12", "1,2\n2,2\n3,4\n")):
        (tmp_path / "fera" / au).mkdir(parents=True)
        (tmp_path / "fera" / au / f"F001_T1_{au}.csv").write_text(vals)
    rows = read_fera2015(tmp_path / "fera")
    assert [(r["video"], r["frame"], r["person"]) for r in rows] == [("F001__T1", i, "F001") for i in (1, 2, 3)]
    assert rows[2]["AU06"] is None and rows[2]["AU12"] == 4
    out = tmp_path / "fera.csv"
    write_labels(out, rows, ["AU06", "AU12"])
    L = read_labels(out)
    assert np.isnan(L.lookup("F001__T1", np.array([3]))[0, 0])
    d = tmp_path / "avec" / "s01"
    d.mkdir(parents=True)
    (d / "s01_arousal.csv").write_text("frame,value\n0,0.1\n1,0.2\n")
    (d / "s01_valence.csv").write_text("-0.5\n-0.4\n")
    rows = read_avec2012(tmp_path / "avec")
    assert rows[1] == {"video": "s01", "frame": 1, "person": "s01", "arousal": 0.2, "valence": -0.4}
    # the same conversions through `drkit labels`
    r = cli("labels", "fera2015", tmp_path / "fera", "-o", tmp_path / "f2.csv")
    assert r.returncode == 0 and "3 frames of 1 videos" in r.stderr
    assert (tmp_path / "f2.csv").read_text().splitlines() == [
        "video,frame,person,AU06,AU10,AU12,AU14,AU17", "F001__T1,1,F001,0.0,,2.0,,",
        "F001__T1,2,F001,3.0,,2.0,,", "F001__T1,3,F001,,,4.0,,"]
    r = cli("labels", "avec2012", tmp_path / "avec", "-o", tmp_path / "a2.csv", "--video-suffix", ".avi")
    assert r.returncode == 0
    L = read_labels(tmp_path / "a2.csv")
    assert L.targets == ["valence", "arousal"] and list(L.frames) == ["s01.avi"]
    assert L.lookup("s01.avi", np.array([1]))[0].tolist() == pytest.approx([-0.4, 0.2])
    r = cli("labels", "fera2015", tmp_path / "avec", "-o", tmp_path / "x.csv")
    assert r.returncode == 1 and "no FERA 2015 files" in r.stderr and not (tmp_path / "x.csv").exists()


# ------------------------------------------------------------------ gen-dr, train-task, predict

def test_gen_dr_stacks_image_and_drs(task_data, tmp_path):
    st = open_store(task_data["mdr"], "dr")
    faces = open_store(task_data["faces"], "faces")
    assert st.videos == faces.videos
    assert len(st.params["channels"]) == 9 and st.params["channels"][:3] == ["image_r", "image_g", "image_b"]
    assert [c["T"] for c in st.params["checkpoints"]] == [1, 2]
    g, f = st.video("p3.avi"), faces.video("p3.avi")
    assert g["mdr"].shape == (48, 9, 32, 32) and g["mdr"].dtype == np.float16
    np.testing.assert_array_equal(g["frame_index"][:], f["frame_index"][:])
    x = torch.from_numpy(f["frames"][:4]).permute(0, 3, 1, 2).float() / 255
    np.testing.assert_allclose(g["mdr"][:4, :3], x.numpy(), atol=1e-3)
    with torch.no_grad():
        d2 = load_checkpoint(task_data["drs"][1]).build_model()(x).numpy()
    np.testing.assert_allclose(g["mdr"][:4, 6:9], d2, atol=2e-2, rtol=1e-2)
    # 6 channels (AU setting), DR only (SDR); reruns skip finished videos
    six = tmp_path / "six.zarr"
    r = gen_dr.run(gen_dr.GenDRConfig(store=str(task_data["faces"]), out=str(six), dr=[str(task_data["drs"][1])]))
    assert r["videos"] == 8 and len(open_store(six).params["channels"]) == 6
    assert gen_dr.run(gen_dr.GenDRConfig(store=str(task_data["faces"]), out=str(six),
                                         dr=[str(task_data["drs"][1])]))["videos"] == 0
    with pytest.raises(DrkitError, match="created with channels"):
        gen_dr.run(gen_dr.GenDRConfig(store=str(task_data["faces"]), out=str(six), dr=[str(task_data["drs"][0])]))
    sdr = gen_dr.run(gen_dr.GenDRConfig(store=str(task_data["faces"]), out=str(tmp_path / "sdr.zarr"),
                                        dr=[str(task_data["drs"][0])], no_image=True))
    assert len(sdr["channels"]) == 3


def test_train_task_learns_known_function_on_held_out_people(task_data):
    out = task_data["dir"] / "si"
    r = train_task.run(train_task.TrainTaskConfig(
        input=[str(task_data["mdr"])], out=str(out), labels=str(task_data["labels"]), task="au",
        input_kind="si", val_share=0.25, epochs=60, time_budget=40))
    assert r["val"]["icc"] > 0.8, r["val"]
    assert r["val"]["mse"] < 0.8
    ev = train_task.run(train_task.TrainTaskConfig(input=[str(task_data["mdr"])], out=None,
                                                   labels=str(task_data["labels"]), eval_only=str(out)))
    assert ev["frames"] == 8 * 48 and {"icc/t1", "icc/t2", "mse", "mae"} <= set(ev)   # deprecated path
    assert ev["icc"] > 0.8
    ck = load_checkpoint(out / "best.pt", "task")
    assert ck.config.targets == ["t1", "t2"] and len(ck.dr_nets) == 2


@pytest.mark.parametrize("kind", ["sdr", "mdr"])
def test_train_task_inputs_and_eval_task_agree(task_data, kind, tmp_path):
    """SDR uses the last DR's channels only, MDR all of them; eval-task on the validation people
    reproduces the validation metrics train-task wrote, number for number."""
    out = task_data["dir"] / kind
    r = train_task.run(train_task.TrainTaskConfig(
        input=[task_data["mdr"]], out=out, labels=task_data["labels"], task="affect",
        input_kind=kind, epochs=2, arch="small", val_share=0.25))
    ck = load_checkpoint(out / "best.pt", "task")
    names = [ck.config.store_channels[i] for i in ck.config.channels]
    assert names == ({"sdr": ["dr1_T2_S1_r", "dr1_T2_S1_g", "dr1_T2_S1_b"]}.get(kind) or ck.config.store_channels)
    assert ck.model.kwargs["in_ch"] == len(names) and len(ck.config.norm_std) == len(names)
    assert all(np.isfinite(r["val"][k]) for k in ("pcc", "ccc", "mse", "pcc/t1", "pcc/t2"))
    assert json.loads((out / "val_metrics.json").read_text()) == pytest.approx(r["val"])
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    labels = read_labels(task_data["labels"])
    _, val_people = person_split(labels, [open_store(task_data["mdr"])], 0.25, 0)
    js = tmp_path / "eval.json"
    res = cli("eval-task", out, task_data["mdr"], "--labels", task_data["labels"],
              "--people", ",".join(sorted(val_people)), "--json", js)
    assert res.returncode == 0, res.stderr
    ev = json.loads(js.read_text())
    assert ev["frames"] == 48 * len(val_people)
    assert {k: v for k, v in ev.items() if k != "frames"} == pytest.approx(r["val"], rel=1e-6, abs=1e-7)
    assert "pcc/t1" in res.stdout


def test_person_splits_are_disjoint_and_cover_everyone():
    from drkit.labels import Labels
    rng = np.random.default_rng(0)
    for n_people in (2, 3, 5, 12):
        videos = {f"v{i}": f"p{rng.integers(n_people)}" for i in range(40)}
        videos |= {f"w{p}": f"p{p}" for p in range(n_people)}       # every person has a video
        labels = Labels(["t"], {v: {0: np.zeros(1, np.float32)} for v in videos}, videos)

        class FakeStore:
            def __init__(self, vids):
                self.videos = sorted(vids)

        for share in (0.1, 0.25, 0.5, 0.99):
            for seed in range(3):
                tr, va = person_split(labels, [FakeStore(videos)], share, seed)
                assert tr and va and not tr & va, (n_people, share, seed)
                assert tr | va == set(videos.values())


def test_vgg16_builds_for_mdr():
    from drkit.nets import create_model
    m = create_model("vgg16", in_ch=9, n_out=5, width=0.125)
    assert m(torch.rand(2, 9, 64, 64)).shape == (2, 5)
    assert sum(p.numel() for p in create_model("vgg16", in_ch=3, n_out=1).features.parameters()) == 14714688


def test_predict_rows_for_faces_and_no_faces(task_data, tmp_path):
    import skimage.data
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    blank = tmp_path / "blank.jpg"
    cv2.imwrite(str(blank), np.full((120, 160, 3), 128, np.uint8))
    (tmp_path / "notes.txt").write_text("x")
    model = tmp_path / "model"
    train_task.run(train_task.TrainTaskConfig(input=[str(task_data["mdr"])], out=str(model),
                                              labels=str(task_data["labels"]), input_kind="mdr", epochs=1))
    out = tmp_path / "pred.csv"
    r = cli("predict", model, face, blank, "-o", out, "--save-dr", tmp_path / "dr")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(out)))
    assert list(rows[0]) == ["input", "frame", "timestamp", "face_found", "confidence", "t1", "t2"]
    by = {r["input"]: r for r in rows}
    assert by[str(face)]["face_found"] == "1" and float(by[str(face)]["t1"]) == float(by[str(face)]["t1"])
    assert by[str(blank)]["face_found"] == "0" and by[str(blank)]["t1"] == ""
    assert float(by[str(face)]["confidence"]) > 0 and by[str(blank)]["confidence"] == "0.000"
    pic = cv2.imread(str(tmp_path / "dr" / "face.png"))
    assert pic.shape[1] == 192 + 2 * (192 + 64)  # crop + two DR maps, each with its colour bar


# ------------------------------------------------------------------ mirroring DR inputs

def _asymmetric_dr(path, T=2):
    """A DR checkpoint whose network is clearly not mirror-symmetric (random direct UNet), like
    trained DR networks on real faces (DR(flip I) differs from flip DR(I) by ~50-70% RMS)."""
    from drkit.checkpoint import Checkpoint, save_checkpoint
    from drkit.contracts import DRConfig, ModelSpec
    from drkit.nets import create_model
    torch.manual_seed(3)
    spec = ModelSpec("dr_unet", {"base": 4, "depth": 2, "param": "direct", "zero_mean": True})
    net = create_model(spec.name, **spec.kwargs)
    save_checkpoint(Checkpoint(kind="dr", model=spec, config=DRConfig(T=T, stride=1, net_size=32),
                               state_dict=net.state_dict()), path)
    return path


def test_mirrored_samples_are_the_drs_of_the_mirrored_face(task_data, tmp_path):
    """train-task's mirrored MDR sample must equal the sample gen-dr makes from the mirrored crop
    (flipped image, DRs of the flipped face), not the flipped DR maps. 0.1.0 flipped the maps,
    which no DR network produces: MDR generalised worse than SI on real faces."""
    from conftest import make_face_store

    from drkit.tasks import Batcher, channel_stats, labelled_frames
    dr = _asymmetric_dr(tmp_path / "asym.pt")
    faces = open_store(task_data["faces"])
    vids = faces.videos[:3]
    mirrored = make_face_store(tmp_path / "mirrored.zarr",
                               {v: faces.video(v)["frames"][:][:, :, ::-1] for v in vids})
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    gen_dr.run(gen_dr.GenDRConfig(store=task_data["faces"], out=a, dr=[task_data["drs"][0], dr]))
    gen_dr.run(gen_dr.GenDRConfig(store=mirrored, out=b, dr=[task_data["drs"][0], dr]))
    labels = read_labels(task_data["labels"])
    people = {labels.person[v] for v in vids}
    sa, sb = labelled_frames([open_store(a)], labels, people), labelled_frames([open_store(b)], labels, people)
    assert sa.videos == sb.videos and len(sa) == 3 * 48
    ch = list(range(9))
    mean, std = channel_stats(sa, ch)
    ba, bb = Batcher(sa, ch, mean, std), Batcher(sb, ch, mean, std)
    idx = np.arange(0, len(sa), 5)
    flipped = ba.get(idx, np.ones(len(idx), bool))[0]
    reference = bb.get(idx)[0]                      # what the DR nets give for the mirrored faces
    torch.testing.assert_close(flipped, reference, atol=2e-2 * float(reference.std()), rtol=0)
    # the guard is needed: flipping the stored maps of this DR is far from its mirrored-face DR
    old_way = ba.get(idx)[0].flip(-1)
    err = (old_way[:, 6:] - reference[:, 6:]).pow(2).mean().sqrt() / reference[:, 6:].pow(2).mean().sqrt()
    assert err > 0.3
    # unflipped samples are unchanged; a store without mdr_mirror cannot mirror DR inputs
    assert ba.get(idx, np.zeros(len(idx), bool))[0].equal(ba.get(idx)[0])
    c = tmp_path / "c.zarr"
    gen_dr.run(gen_dr.GenDRConfig(store=task_data["faces"], out=c, dr=[dr], mirror=False))
    sc = labelled_frames([open_store(c)], labels, people)
    assert "mdr_mirror" not in open_store(c).video(vids[0])
    assert not Batcher(sc, list(range(6)), np.zeros(6), np.ones(6)).can_flip
    assert Batcher(sc, [0, 1, 2], np.zeros(3), np.ones(3)).can_flip     # image only: flipping is exact


def test_train_task_without_mirrored_drs_trains_unmirrored(task_data, tmp_path, capsys):
    c = tmp_path / "nomirror.zarr"
    gen_dr.run(gen_dr.GenDRConfig(store=task_data["faces"], out=c, dr=[task_data["drs"][0]], mirror=False))
    out = tmp_path / "run"
    train_task.run(train_task.TrainTaskConfig(input=[c], out=out, labels=task_data["labels"], task="au",
                                              input_kind="mdr", epochs=1, val_share=0.25))
    assert "no mirrored DRs" in capsys.readouterr().err
    assert load_checkpoint(out / "best.pt", "task").config.train["flip"] is False


def test_dr_encoder_starts_from_the_dr_networks_encoder(task_data, tmp_path):
    """--arch dr_encoder: the task network's encoder is the DR UNet's (same features for the
    image), extra DR input channels start at zero (MDR starts as the image-only network)."""
    from drkit.nets import DREncoderRegressor
    dr = load_checkpoint(task_data["drs"][1], "dr")
    kw = dr.model.kwargs
    x = torch.rand(2, 3, 32, 32)
    si = DREncoderRegressor(3, 2, kw["base"], kw["depth"])
    mdr = DREncoderRegressor(9, 2, kw["base"], kw["depth"])
    assert si.init_from(dr.state_dict) == mdr.init_from(dr.state_dict) == len(
        [k for k in dr.state_dict if k.startswith("unet.down.")])
    mdr.head.load_state_dict(si.head.state_dict())
    unet = dr.build_model().unet
    si.eval(), mdr.eval()
    with torch.no_grad():
        feats = x
        for i, block in enumerate(unet.down):
            feats = block(feats if i == 0 else torch.nn.functional.max_pool2d(feats, 2))
        ours = x
        for i, block in enumerate(si.down):
            ours = block(ours if i == 0 else torch.nn.functional.max_pool2d(ours, 2))
        torch.testing.assert_close(ours, feats)
        torch.testing.assert_close(mdr(torch.cat([x, torch.randn(2, 6, 32, 32)], 1)), si(x))
    out = tmp_path / "enc"
    r = train_task.run(train_task.TrainTaskConfig(input=[task_data["mdr"]], out=out, labels=task_data["labels"],
                                                  task="au", input_kind="mdr", arch="dr_encoder", epochs=1,
                                                  val_share=0.25))
    ck = load_checkpoint(out / "best.pt", "task")
    assert ck.model.name == "dr_encoder" and ck.model.kwargs["in_ch"] == 9 and np.isfinite(r["val"]["mse"])
    si_store = tmp_path / "si.zarr"
    gen_dr.run(gen_dr.GenDRConfig(store=task_data["faces"], out=si_store, dr=[], map_size=32))
    with pytest.raises(DrkitError, match="dr_encoder starts from a DR network"):
        train_task.run(train_task.TrainTaskConfig(input=[si_store], out=tmp_path / "x", labels=task_data["labels"],
                                                  input_kind="si", arch="dr_encoder", epochs=1))


def test_small_drfeat_sees_the_image_as_maps_and_the_drs_only_as_cell_averages(task_data, tmp_path):
    """--arch small_drfeat (DR features instead of maps): moving DR values around inside one cell
    of the 4x4 grid changes nothing; changing a cell's mean or the image does; it needs DR inputs
    with the image, and its bundle predicts."""
    from drkit.nets import SmallDRFeatures
    from drkit.predictor import Predictor
    net = SmallDRFeatures(in_ch=9, n_out=2, width=8, n_image=3).eval()
    torch.manual_seed(0)
    x = torch.rand(2, 9, 32, 32)
    shuffled = x.clone()
    shuffled[:, 3:, :8, :8] = shuffled[:, 3:, :8, :8].flip(-1).flip(-2)   # same cell (8x8 of 32), same mean
    moved = x.clone()
    moved[:, 3:, :8, :8] += 0.5
    image = x.clone()
    image[:, :3, :4, :4] = 1 - image[:, :3, :4, :4]
    with torch.no_grad():
        y = net(x)
        torch.testing.assert_close(net(shuffled), y)
        assert (net(moved) - y).abs().max() > 1e-4 and (net(image) - y).abs().max() > 1e-4
    out = tmp_path / "feat"
    r = train_task.run(train_task.TrainTaskConfig(input=[task_data["mdr"]], out=out, labels=task_data["labels"],
                                                  input_kind="mdr", arch="small_drfeat", epochs=1, val_share=0.25))
    ck = load_checkpoint(out / "best.pt", "task")
    assert ck.model.name == "small_drfeat" and ck.model.kwargs["n_image"] == 3 and ck.model.kwargs["in_ch"] == 9
    assert np.isfinite(r["val"]["mse"])
    crops = open_store(task_data["faces"]).video("p1.avi")["frames"][:4]
    y_torch = Predictor.from_bundle(out, device="cpu").predict_crops(crops)[0]
    assert y_torch.shape == (4, 2)
    if importlib.util.find_spec("onnxruntime"):   # the in-memory ONNX export takes the slicing and pools
        y_ort = Predictor.from_bundle(out, device="cpu", engine="onnxruntime").predict_crops(crops)[0]
        np.testing.assert_allclose(y_ort, y_torch, atol=1e-4)
    with pytest.raises(DrkitError, match="small_drfeat takes the image and DRs"):
        train_task.run(train_task.TrainTaskConfig(input=[task_data["mdr"]], out=tmp_path / "x", labels=task_data["labels"],
                                                  input_kind="si", arch="small_drfeat", epochs=1))


def test_image_norm_video_subtracts_each_videos_mean_image_and_mirrors_it(task_data):
    """--image-norm video: each image channel minus its mean over the video (a mirrored sample
    minus the mirrored mean); DR channels untouched unless --dr-norm video too."""
    from drkit.labels import read_labels
    from drkit.tasks import Batcher, labelled_frames, select_channels
    st = open_store(task_data["mdr"])
    ch = select_channels(st.typed_params.channels, "mdr")
    s = labelled_frames([st], read_labels(task_data["labels"]))
    z, o = np.zeros(len(ch)), np.ones(len(ch))
    raw, img = Batcher(s, ch, z, o), Batcher(s, ch, z, o, image_norm="video")
    both = Batcher(s, ch, z, o, image_norm="video", dr_norm="video")
    v = s.videos[0]
    idx = np.array([i for i, x in enumerate(s.videos) if x == v])
    full = st.video(v)["mdr"][:].astype(np.float32)
    a, b, c = raw.get(idx)[0].numpy(), img.get(idx)[0].numpy(), both.get(idx)[0].numpy()
    np.testing.assert_allclose(b[:, :3], a[:, :3] - full[:, :3].mean(0), atol=1e-5)
    np.testing.assert_array_equal(b[:, 3:], a[:, 3:])
    np.testing.assert_allclose(c[:, 3:], a[:, 3:] - full[:, 3:].mean(0), atol=1e-5)
    flipped = img.get(idx, np.ones(len(idx), bool))[0].numpy()
    np.testing.assert_allclose(flipped[:, :3], a[:, :3, :, ::-1] - full[:, :3].mean(0)[:, :, ::-1], atol=1e-5)


def test_resuming_with_other_settings_names_them(task_data, tmp_path):
    """A resume with another setting says which one differs (and how), not only that one does."""
    out = tmp_path / "run"
    cfg = dict(input=[task_data["mdr"]], out=out, labels=task_data["labels"], epochs=1, val_share=0.25)
    train_task.run(train_task.TrainTaskConfig(**cfg))
    with pytest.raises(DrkitError, match=r"other settings \(dr_norm: run none, now video\); resume"):
        train_task.run(train_task.TrainTaskConfig(**{**cfg, "epochs": 2}, resume=True, dr_norm="video"))


def test_dr_norm_video_subtracts_each_videos_mean_dr(task_data, tmp_path):
    """--dr-norm video: each DR channel minus its mean over the video (the DR's deviation from the
    person's own average), in training, validation and eval-task alike; image channels untouched."""
    from drkit.labels import read_labels
    from drkit.tasks import Batcher, labelled_frames, select_channels
    st = open_store(task_data["mdr"])
    names = st.typed_params.channels
    ch = select_channels(names, "mdr")
    s = labelled_frames([st], read_labels(task_data["labels"]))
    n_img = 3
    raw = Batcher(s, ch, np.zeros(len(ch)), np.ones(len(ch)))
    norm = Batcher(s, ch, np.zeros(len(ch)), np.ones(len(ch)), dr_norm="video")
    v = s.videos[0]
    idx = np.array([i for i, x in enumerate(s.videos) if x == v])
    a, b = raw.get(idx)[0].numpy(), norm.get(idx)[0].numpy()
    np.testing.assert_array_equal(a[:, :n_img], b[:, :n_img])
    full = st.video(v)["mdr"][:].astype(np.float32)[:, n_img:]
    np.testing.assert_allclose(b[:, n_img:], a[:, n_img:] - full.mean(0), atol=1e-5)
    out = tmp_path / "run"
    r = train_task.run(train_task.TrainTaskConfig(input=[task_data["mdr"]], out=out, labels=task_data["labels"],
                                                  epochs=2, val_share=0.25, dr_norm="video", dr_dropout=0.3))
    ck = load_checkpoint(out / "best.pt", "task")
    assert ck.config.dr_norm == "video" and ck.config.train["dr_dropout"] == 0.3
    assert np.isfinite(r["val"]["icc"])
    from drkit.tasks import evaluate_bundle
    ev = evaluate_bundle(ck, [task_data["mdr"]], task_data["labels"])
    assert np.isfinite(ev["icc"])
    si = tmp_path / "si"   # no DR channel to normalise: not recorded, so predict goes frame by frame
    train_task.run(train_task.TrainTaskConfig(input=[task_data["mdr"]], out=si, labels=task_data["labels"],
                                              input_kind="si", epochs=1, val_share=0.25, dr_norm="video"))
    ck = load_checkpoint(si / "best.pt", "task")
    assert ck.config.dr_norm == "none" and not ck.config.video_norm and ck.population_mean is None
