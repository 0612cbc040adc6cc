"""Inference at archive scale (issue 11): --precision / --channels-last of gen-dr and predict,
--shard I/N of gen-dr (N jobs fill one DR store) and of predict --per-video (N jobs fill one
folder of CSVs), and resuming a killed predict job (only inputs without a complete CSV redone)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import assert_same_store, cli

from drkit.configs import GenDRConfig, PredictConfig
from drkit.errors import DrkitError
from drkit.predictor import Predictor
from drkit.stages import gen_dr, predict
from drkit.store import open_store

DRKIT = [sys.executable, "-m", "drkit.cli", "-q"]
# bf16 against fp32, as fractions of the fp32 DR maps' RMS (measured on these tiny DR nets:
# RMS difference 0.006-0.007, largest single difference 0.06-0.09; correlation 0.99998)
BF16_RMS_TOL, BF16_MAX_TOL = 0.02, 0.2


def _rel_diff(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(RMS of y - x, max |y - x|), both divided by the RMS of x."""
    x, y = x.astype(np.float32), y.astype(np.float32)
    rms = float(np.sqrt(np.mean(x ** 2)))
    return float(np.sqrt(np.mean((y - x) ** 2))) / rms, float(np.abs(y - x).max()) / rms


def _gen(task_data, out, **kw):
    return gen_dr.run(GenDRConfig(store=task_data["faces"], out=out, dr=task_data["drs"], device="cpu", **kw))


# ------------------------------------------------------------------ precision


def test_gen_dr_bf16_is_close_to_fp32_and_recorded(task_data, tmp_path):
    ref = task_data["mdr"]                                   # fp32, made by conftest
    out = tmp_path / "bf16.zarr"
    _gen(task_data, out, precision="bf16", channels_last=True)
    a, b = open_store(ref), open_store(out)
    assert a.typed_params.precision == "fp32" and b.typed_params.precision == "bf16"
    assert b.params["precision"] == "bf16"
    assert b.root.attrs["videos"].keys() == a.root.attrs["videos"].keys()
    worst = np.zeros(2)
    for v in a.videos:
        assert b.video(v).attrs["precision"] == "bf16"
        for arr, first in (("mdr", 3), ("mdr_mirror", 0)):   # the DR channels
            worst = np.maximum(worst, _rel_diff(a.video(v)[arr][:, first:], b.video(v)[arr][:, first:]))
        np.testing.assert_array_equal(a.video(v)["landmarks"][:], b.video(v)["landmarks"][:])
    print(f"bf16 vs fp32 gen-dr: RMS difference {worst[0]:.4f}, max {worst[1]:.4f} (x RMS of the DRs)")
    assert worst[0] < BF16_RMS_TOL and worst[1] < BF16_MAX_TOL
    # image channels are not run through a network: identical
    for v in a.videos:
        np.testing.assert_array_equal(a.video(v)["mdr"][:, :3], b.video(v)["mdr"][:, :3])


def test_fp32_with_channels_last_gives_the_same_store(task_data, tmp_path):
    out = tmp_path / "cl.zarr"
    _gen(task_data, out, channels_last=True)
    for v in open_store(out).videos:   # float16 storage: at most one rounding step apart
        x = open_store(task_data["mdr"]).video(v)["mdr"][:].astype(np.float32)
        y = open_store(out).video(v)["mdr"][:].astype(np.float32)
        np.testing.assert_allclose(y, x, rtol=2e-3, atol=2e-3)


def test_fp16_on_cpu_is_a_clear_error(task_data, tmp_path, task_bundle):
    r = cli("gen-dr", task_data["faces"], "-o", tmp_path / "x.zarr", "--dr", task_data["drs"][0],
            "--precision", "fp16", "--device", "cpu")
    assert r.returncode == 1 and "fp16 needs a CUDA device" in r.stderr, r.stderr
    assert not (tmp_path / "x.zarr").exists()                # failed before any work
    r = cli("predict", task_bundle, tmp_path, "-o", tmp_path / "p.csv", "--precision", "fp16", "--device", "cpu")
    assert r.returncode == 1 and "fp16 needs a CUDA device" in r.stderr, r.stderr
    with pytest.raises(DrkitError, match="fp16 needs a CUDA device"):
        Predictor.from_bundle(task_bundle, "cpu", precision="fp16")
    r = cli("gen-dr", task_data["faces"], "-o", tmp_path / "x.zarr", "--precision", "fp8")
    assert r.returncode == 2


def test_a_store_made_before_precision_opens_and_resumes_at_fp32_only(task_data, tmp_path):
    old = tmp_path / "old.zarr"
    shutil.copytree(task_data["mdr"], old)
    meta = json.loads((old / "zarr.json").read_text())
    del meta["attributes"]["drkit"]["params"]["precision"]    # as gen-dr wrote it before 0.2.0
    (old / "zarr.json").write_text(json.dumps(meta))
    st = open_store(old, "dr")
    assert st.typed_params.precision == "fp32"
    for v in st.videos:
        st.video(v)                                          # validates
    assert _gen(task_data, old)["videos"] == 0               # resumes: nothing to redo
    with pytest.raises(DrkitError, match="made with --precision fp32"):
        _gen(task_data, old, precision="bf16")


def test_predictor_bf16_close_to_fp32(task_data, task_bundle):
    crops = np.asarray(open_store(task_data["faces"]).video("p0.avi")["frames"][:16])
    y32, m32 = Predictor.from_bundle(task_bundle, "cpu").predict_crops(crops)
    p16 = Predictor.from_bundle(task_bundle, "cpu", precision="bf16", channels_last=True)
    y16, m16 = p16.predict_crops(crops)
    assert y16.dtype == m16.dtype == np.float32
    dm, dy = _rel_diff(m32[:, 3:], m16[:, 3:]), _rel_diff(y32, y16)
    print(f"bf16 vs fp32 predictor: DRs {dm[0]:.4f} / {dm[1]:.4f}, predictions {dy[0]:.4f} / {dy[1]:.4f} "
          "(RMS / max difference, x RMS)")
    assert dm[0] < BF16_RMS_TOL and dm[1] < BF16_MAX_TOL and dy[0] < BF16_RMS_TOL and dy[1] < BF16_MAX_TOL


# ------------------------------------------------------------------ gen-dr --shard


def test_gen_dr_shards_one_after_another_equal_one_run(task_data, tmp_path):
    out = tmp_path / "sh.zarr"
    r0 = _gen(task_data, out, shard="0/2")
    assert 0 < r0["videos"] < 8
    assert len(open_store(out).videos) == r0["videos"]
    r1 = _gen(task_data, out, shard="1/2")
    assert r0["videos"] + r1["videos"] == 8
    assert_same_store(task_data["mdr"], out)
    assert _gen(task_data, out, shard="1/2")["videos"] == 0   # rerun of a finished shard: nothing to do
    with pytest.raises(DrkitError, match="I/N"):
        _gen(task_data, out, shard="2/2")


def test_gen_dr_shards_running_together_equal_one_run(task_data, tmp_path):
    out = tmp_path / "together.zarr"
    procs = [subprocess.Popen([*DRKIT, "gen-dr", str(task_data["faces"]), "-o", str(out), "--device", "cpu",
                               *[a for d in task_data["drs"] for a in ("--dr", str(d))], "--shard", f"{i}/2"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert_same_store(task_data["mdr"], out)
    assert open_store(out).partial_leftovers() == []


# ------------------------------------------------------------------ predict --per-video / --shard


def _predict(task_bundle, videos, out, **kw):
    return predict.run(PredictConfig(model=task_bundle, inputs=[videos], out=out, device="cpu", per_video=True, **kw))


def _csvs(folder):
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def per_video(task_bundle, videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("pv") / "all"
    r = _predict(task_bundle, videos, out)
    return out, r


def test_predict_per_video_writes_one_csv_per_input(per_video, videos):
    out, r = per_video
    assert sorted(r["written"]) == ["a.csv", "c.csv", "sub__b.csv"] and r["skipped"] == 0
    csvs = _csvs(out)
    assert list(csvs) == ["a.csv", "c.csv", "sub__b.csv"]      # no temporary files left
    lines = csvs["c.csv"].splitlines()
    assert lines[0].startswith("input,frame,timestamp,face_found,confidence,") and len(lines) == 1 + 36
    assert all(x.split(",")[0] == str(videos / "c.mp4") for x in lines[1:])
    assert r["rows"] == 40 + 30 + 36


def test_predict_shards_equal_one_run(per_video, task_bundle, videos, tmp_path):
    ref, _ = per_video
    out = tmp_path / "sharded"
    r0 = _predict(task_bundle, videos, out, shard="0/2")
    r1 = _predict(task_bundle, videos, out, shard="1/2")
    assert sorted(r0["written"] + r1["written"]) == sorted(_csvs(ref)) and not set(r0["written"]) & set(r1["written"])
    assert _csvs(out) == _csvs(ref)


def test_killed_predict_redoes_only_what_is_missing(per_video, task_bundle, videos, tmp_path):
    ref, _ = per_video
    out = tmp_path / "resumed"
    shutil.copytree(ref, out)
    (out / "sub__b.csv").unlink()                          # killed while writing b ...
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (out / f".sub__b.csv.tmp{dead}").write_text("input,frame,face_found\nhalf")   # ... its scratch
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if not p.name.startswith(".")}
    r = _predict(task_bundle, videos, out)
    assert r["written"] == ["sub__b.csv"] and r["skipped"] == 2
    assert _csvs(out) == _csvs(ref)                            # scratch removed, b redone the same
    assert all((out / n).stat().st_mtime_ns == t for n, t in before.items())   # the others untouched
    assert _predict(task_bundle, videos, out)["written"] == []
    assert _predict(task_bundle, videos, out, overwrite=True, shard="0/3")["written"] == ["a.csv"]
    assert _csvs(out) == _csvs(ref)


def test_predict_shard_needs_per_video_and_a_folder(task_bundle, videos, tmp_path):
    r = cli("predict", task_bundle, videos, "-o", tmp_path / "p.csv", "--shard", "0/2")
    assert r.returncode == 2 and "--per-video" in r.stderr
    (tmp_path / "f.csv").write_text("x")
    r = cli("predict", task_bundle, videos, "-o", tmp_path / "f.csv", "--per-video")
    assert r.returncode == 1 and "is a file" in r.stderr
    r = cli("predict", task_bundle, videos, "-o", tmp_path / "d", "--per-video", "--shard", "1/1")
    assert r.returncode == 2 and "I/N" in r.stderr
    assert os.listdir(tmp_path) == ["f.csv"]
