"""The onnxruntime engine (drkit.export, issue "Fast by default"): `drkit export` writes an ONNX
graph that onnxruntime loads and a JSON that describes it; predict and gen-dr with --engine
onnxruntime give torch's values (CSV within 1e-4, DR maps within their float16 storage); every
network drkit ships exports; errors are one clear line. Tests that run onnxruntime skip when it
is not installed; the error paths (onnxruntime missing) run everywhere."""

from __future__ import annotations

import csv
import json
import sys
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from conftest import cli, face_frames, write_video

from drkit.configs import GenDRConfig
from drkit.errors import DrkitError, UsageError
from drkit.export import (
    OnnxEngine,
    dr_onnx,
    have_onnxruntime,
    mdr_onnx,
    resolve_engine,
    task_onnx,
)
from drkit.fsutil import sha256_file
from drkit.mdr import MDR
from drkit.nets import create_model
from drkit.predictor import Predictor
from drkit.stages import gen_dr
from drkit.store import open_store

needs_ort = pytest.mark.skipif(not have_onnxruntime(),
                               reason="onnxruntime is not installed (pip install onnxruntime, or drkit[test])")
F16_STEP = 2.0 ** -10     # float16's relative rounding step: DR stores keep maps as float16


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A short face video (two faceless frames) and a still."""
    d = tmp_path_factory.mktemp("export_clip")
    frames = face_frames(12, seed=11, blank=(4,))
    write_video(d / "talk.mp4", frames, fps=25)
    cv2.imwrite(str(d / "still.png"), frames[0])
    return d


def _values(path) -> np.ndarray:
    with open(path) as f:
        rows = list(csv.reader(f))
    return np.array([[float(v) if v else np.nan for v in r[5:]] for r in rows[1:]])


def _no_onnxruntime(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)   # `import onnxruntime` raises ImportError
    assert not have_onnxruntime()


# ------------------------------------------------------------------ drkit export

@needs_ort
def test_export_bundle_writes_a_graph_onnxruntime_runs_and_a_json_that_describes_it(task_bundle, tmp_path):
    import onnxruntime as ort
    out = tmp_path / "onnx"
    r = cli("export", task_bundle, "-o", out)
    assert r.returncode == 0, r.stderr
    assert "max abs difference" in r.stderr and "model.onnx" in r.stderr
    meta = json.loads((out / "model.json").read_text())
    p = Predictor.from_bundle(task_bundle, device="cpu", channels_last=False)
    S, M, k = p.crop_size, p.config.map_size, len(p.targets)
    assert meta["kind"] == "task" and meta["format"] == "drkit.onnx" and meta["file"] == "model.onnx"
    assert meta["targets"] == p.targets and meta["crop_size"] == S and meta["map_size"] == M
    assert meta["value_range"] == p.ranges and meta["source"]["sha256"] == sha256_file(task_bundle / "best.pt")
    assert meta["sha256"] == sha256_file(out / "model.onnx")
    assert meta["inputs"] == [dict(meta["inputs"][0], name="crops", shape=["n", S, S, 3], dtype="uint8", range=[0, 255])]
    assert [(o["name"], o["shape"], o["dtype"]) for o in meta["outputs"]] == [
        ("values", ["n", k], "float32"), ("raw_values", ["n", k], "float32"),
        ("mdr", ["n", len(p.config.store_channels), M, M], "float32")]
    assert meta["outputs"][2]["channels"] == p.config.store_channels
    assert max(meta["verified"]["max_abs_diff"].values()) < 1e-4
    # any onnxruntime session runs it, at any batch size, as the JSON says
    s = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape, i.type) for i in s.get_inputs()] == [("crops", ["n", S, S, 3], "tensor(uint8)")]
    assert [o.name for o in s.get_outputs()] == ["values", "raw_values", "mdr"]
    crops = np.random.default_rng(1).integers(0, 256, (5, S, S, 3), dtype=np.uint8)
    values, raw, mdr = s.run(None, {"crops": crops})
    y, m = p.predict_crops(crops)
    p.clip = False
    y_raw, _ = p.predict_crops(crops)
    assert values.shape == (5, k) and mdr.shape == (5, len(p.config.store_channels), M, M)
    np.testing.assert_allclose(values, y, atol=1e-5, rtol=0)
    np.testing.assert_allclose(raw, y_raw, atol=1e-5, rtol=0)
    np.testing.assert_allclose(mdr, m, atol=1e-5, rtol=0)
    assert (values >= 0).all() and (values <= 5).all()


@needs_ort
def test_export_dr_checkpoint_and_engine_from_the_file(task_data, tmp_path):
    run = task_data["drs"][1]
    assert cli("export", run, "-o", tmp_path).returncode == 0
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["kind"] == "dr" and meta["T"] == 2 and meta["net_size"] == 32 and meta["windows"] == [[2, 1]]
    assert meta["inputs"][0]["shape"] == ["n", 3, 32, 32] and meta["outputs"][0]["shape"] == ["n", 3, 32, 32]
    assert meta["source"]["sha256"] == sha256_file(run / "best.pt")
    eng = OnnxEngine(tmp_path / "model.onnx", threads=1)
    assert eng.threads == 1 and eng.provider == "CPUExecutionProvider" and eng.outputs == ["dr"]
    from drkit.checkpoint import load_checkpoint
    net = load_checkpoint(run, "dr").build_model()
    x = np.random.default_rng(2).random((4, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(eng(x)["dr"], want, atol=1e-5, rtol=0)


def test_export_without_onnxruntime_writes_unchecked_files_and_says_so(task_data, tmp_path, monkeypatch):
    _no_onnxruntime(monkeypatch)
    r = cli("export", task_data["drs"][0], "-o", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "not checked" in r.stderr and "pip install onnxruntime" in r.stderr
    assert json.loads((tmp_path / "model.json").read_text())["verified"] is None
    assert (tmp_path / "model.onnx").stat().st_size > 1000


def test_export_errors_are_one_line(task_data, tmp_path):
    (tmp_path / "file").write_text("x")
    r = cli("export", task_data["drs"][0], "-o", tmp_path / "file")
    assert r.returncode == 1 and "is a file" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("export", tmp_path / "missing.pt", "-o", tmp_path / "out")
    assert r.returncode == 1 and "no checkpoint" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ the engine in predict and gen-dr

@needs_ort
def test_predictor_engines_agree_on_crops_of_any_size(task_data, task_bundle):
    t = Predictor.from_bundle(task_bundle, device="cpu")
    o = Predictor.from_bundle(task_bundle, device="cpu", engine="onnxruntime", engine_threads=1)
    assert (t.engine, o.engine) == ("torch", "onnxruntime")
    stored = open_store(task_data["faces"]).video("p1.avi")["frames"][:7]
    rng = np.random.default_rng(3)
    worst = np.zeros(2)
    for crops in (stored, rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8),
                  rng.integers(0, 256, (3, 48, 48, 3), dtype=np.uint8)):   # 48: another crop size, exported on demand
        (yt, mt), (yo, mo) = t.predict_crops(crops), o.predict_crops(crops)
        worst = np.maximum(worst, [np.abs(yo - yt).max(), np.abs(mo - mt).max()])
        assert yo.dtype == mo.dtype == np.float32 and yo.shape == yt.shape and mo.shape == mt.shape
        np.testing.assert_allclose(yo, yt, atol=1e-5, rtol=0)
        np.testing.assert_allclose(mo, mt, atol=1e-5, rtol=0)
    assert sorted(o._graphs.engines) == [32, 48]
    print(f"Predictor onnxruntime vs torch: values {worst[0]:.1e}, mdr {worst[1]:.1e}")
    assert o.timings["dr"] > 0 and o.timings["task"] > 0 and o.timings["crops"] == 11
    t.clip = o.clip = False
    np.testing.assert_allclose(o.predict_crops(stored)[0], t.predict_crops(stored)[0], atol=1e-5, rtol=0)
    with pytest.raises(DrkitError, match="expected"):
        o.predict_crops(np.zeros((2, 32, 30, 3), np.uint8))


@needs_ort
def test_predict_csv_with_onnxruntime_equals_torch(task_bundle, clip, tmp_path):
    out = {}
    for engine in ("torch", "onnxruntime"):
        out[engine] = tmp_path / f"{engine}.csv"
        r = cli("predict", task_bundle, clip, "-o", out[engine], "--engine", engine, "--no-clip")
        assert r.returncode == 0, r.stderr
    a, b = _values(out["torch"]), _values(out["onnxruntime"])
    assert a.shape == b.shape == (13, 2) and np.isnan(a).sum() == np.isnan(b).sum() == 2   # the faceless frame
    # values are written with 4 decimals: at most one step of the last digit apart
    np.testing.assert_allclose(b, a, atol=1.01e-4, rtol=0)
    ok = ~np.isnan(a)
    print(f"predict CSV onnxruntime vs torch: {np.mean(a[ok] == b[ok]):.1%} of values identical, "
          f"max difference {np.abs(a[ok] - b[ok]).max():.1e}")
    with open(out["torch"]) as f, open(out["onnxruntime"]) as g:
        assert [r[:5] for r in csv.reader(f)] == [r[:5] for r in csv.reader(g)]   # the same rows and faces


@needs_ort
def test_gen_dr_with_onnxruntime_equals_torch_to_float16(task_data, tmp_path):
    stores = {}
    for engine in ("torch", "onnxruntime"):
        stores[engine] = tmp_path / f"{engine}.zarr"
        r = gen_dr.run(GenDRConfig(store=task_data["faces"], out=stores[engine], dr=task_data["drs"],
                                   device="cpu", engine=engine))
        assert r["frames"] == 8 * 48
    a, b = open_store(stores["torch"]), open_store(stores["onnxruntime"])
    assert a.params["channels"] == b.params["channels"] and a.videos == b.videos
    equal = total = 0
    worst = 0.0
    for v in a.videos:
        for arr in ("mdr", "mdr_mirror"):
            x, y = a.video(v)[arr][:].astype(np.float32), b.video(v)[arr][:].astype(np.float32)
            # one float16 rounding step at most (near zero: float32 differences of ~1e-6)
            np.testing.assert_allclose(y, x, rtol=F16_STEP, atol=1e-5, err_msg=f"{v}/{arr}")
            equal, total, worst = equal + int((x == y).sum()), total + x.size, max(worst, float(np.abs(x - y).max()))
        for arr in ("landmarks", "frame_index"):
            np.testing.assert_array_equal(a.video(v)[arr][:], b.video(v)[arr][:])
    print(f"gen-dr onnxruntime vs torch: {equal / total:.4%} of float16 values identical, max difference {worst:.2e}")
    assert equal / total > 0.99


def test_auto_is_onnxruntime_only_where_it_is_faster_and_installed(monkeypatch):
    cpu = torch.device("cpu")
    if have_onnxruntime():
        assert resolve_engine("auto", cpu) == "onnxruntime"
    assert resolve_engine("auto", cpu, precision="bf16") == "torch"
    assert resolve_engine("auto", cpu, compile=True) == "torch"
    assert resolve_engine("auto", torch.device("cuda")) == "torch"
    assert resolve_engine("torch", cpu) == "torch"
    with pytest.raises(UsageError, match="--engine 'tensorrt': choose one of auto, torch, onnxruntime"):
        resolve_engine("tensorrt", cpu)
    _no_onnxruntime(monkeypatch)
    assert resolve_engine("auto", cpu) == "torch"


def test_onnxruntime_missing_is_one_clear_line_and_auto_falls_back(task_bundle, task_data, clip, tmp_path, monkeypatch):
    _no_onnxruntime(monkeypatch)
    for args in (("predict", task_bundle, clip / "still.png", "-o", tmp_path / "a.csv"),
                 ("gen-dr", task_data["faces"], "-o", tmp_path / "a.zarr", "--dr", task_data["drs"][0])):
        r = cli(*args, "--engine", "onnxruntime")
        assert r.returncode == 1, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "--engine onnxruntime needs onnxruntime" in lines[0], r.stderr
        assert "pip install onnxruntime" in lines[0] and "--engine torch" in lines[0]
    assert not (tmp_path / "a.csv").exists()
    r = cli("predict", task_bundle, clip / "still.png", "-o", tmp_path / "b.csv")   # default: auto -> torch
    assert r.returncode == 0, r.stderr
    assert len(_values(tmp_path / "b.csv")) == 1


def test_onnxruntime_settings_that_are_torchs_are_usage_errors(task_bundle, clip, tmp_path):
    for extra, msg in ((["--precision", "bf16"], "runs at fp32 only"), (["--compile"], "--compile is torch's"),
                       (["--engine", "tvm"], None)):
        eng = [] if "--engine" in extra else ["--engine", "onnxruntime"]
        r = cli("predict", task_bundle, clip / "still.png", "-o", tmp_path / "x.csv", *eng, *extra)
        assert r.returncode == 2, r.stderr
        if msg and have_onnxruntime():
            assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ every network exports

@needs_ort
def test_multi_head_dr_nets_of_several_sizes_export(tmp_path):
    """A multi-scale DR network (3 DRs from one UNet) at 32 px and a plain one at 16 px, resized
    down and up to a 24 px map, from 40 px crops: the resizes and the batch dimension hold."""
    torch.manual_seed(0)
    nets = [create_model("dr_unet", base=4, depth=2, heads=3).eval(), create_model("dr_unet", base=4, depth=2).eval()]
    for n in nets:   # zero-initialised heads would hide the UNet
        torch.nn.init.normal_(n.unet.head.weight, std=0.3)
    mdr = MDR(nets, [32, 16], 24, image=True).eval()
    eng = OnnxEngine(mdr_onnx(mdr, 40), threads=1)
    rng = np.random.default_rng(4)
    for n in (1, 5):
        crops = rng.integers(0, 256, (n, 40, 40, 3), dtype=np.uint8)
        with torch.no_grad():
            want = mdr(torch.from_numpy(crops).movedim(-1, -3).float() / 255).numpy()
        got = eng(crops)["mdr"]
        assert got.shape == (n, 3 + 9 + 3, 24, 24)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    x = rng.random((2, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(OnnxEngine(dr_onnx(nets[0], 32))(x)["dr"], nets[0](torch.from_numpy(x)).numpy(),
                                   atol=1e-5, rtol=0)


@needs_ort
@pytest.mark.parametrize("name,kwargs,M", [
    ("small_cnn", {"width": 4}, 56),            # 56 px: a 3x3 map pooled to 4x4 (not a divisor)
    ("vgg16", {"width": 1 / 32, "dropout": 0.5}, 32),
    ("dr_encoder", {"base": 4, "depth": 2}, 32),
    ("hg_hmr", {"width": 8}, 32),
])
def test_every_task_network_exports(name, kwargs, M):
    torch.manual_seed(0)
    net = create_model(name, in_ch=4, n_out=3, **kwargs).eval()
    mdr = MDR([create_model("dr_unet", base=4, depth=2).eval()], [32], M, image=True)   # 6 channels
    config = SimpleNamespace(channels=[0, 2, 3, 5], norm_mean=[0.5, 0.4, 0.0, 0.1], norm_std=[0.2, 0.3, 0.1, 0.5],
                             value_range=[[0, 5], [-1, 1], [0, 1]], map_size=M)
    eng = OnnxEngine(task_onnx(mdr, net, config), threads=1)
    m = np.random.default_rng(5).normal(0.3, 0.3, (3, 6, M, M)).astype(np.float32)
    with torch.no_grad():
        z = (torch.from_numpy(m)[:, config.channels] - torch.tensor(config.norm_mean)[None, :, None, None]) \
            / torch.tensor(config.norm_std)[None, :, None, None]
        raw = net(z).numpy()
    out = eng(m)
    np.testing.assert_allclose(out["raw_values"], raw, atol=1e-4 * max(1.0, float(np.abs(raw).max())), rtol=0)
    lo, hi = np.array(config.value_range, np.float32).T
    np.testing.assert_allclose(out["values"], np.clip(out["raw_values"], lo, hi), atol=0, rtol=0)
    assert not any(type(mod).__name__ == "AdaptivePool" for mod in net.modules())   # the network is left as it was
