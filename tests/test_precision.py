"""--precision, --channels-last, --compile of train-dr / train-task (drkit.precision, drkit.train)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import cli, make_face_store, moving_blob_frames

from drkit.checkpoint import build_model, load_checkpoint
from drkit.errors import DrkitError
from drkit.losses import rank_loss
from drkit.nets import create_model
from drkit.precision import Forward
from drkit.stages import train_dr, train_task


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    d = tmp_path_factory.mktemp("prec")
    train = make_face_store(d / "train.zarr", {f"tr{i}": moving_blob_frames(40, 32, seed=i) for i in range(3)})
    test = make_face_store(d / "test.zarr", {"te0": moving_blob_frames(40, 32, seed=100)})
    return train, test


def _dr(train, out, **kw):
    args = dict(stores=[train], out=out, T=3, stride=1, net_size=32, base=8, depth=2, epochs=2, batch_size=16,
                flip=False, jitter=0, lr=3e-3)
    return train_dr.TrainDRConfig(**{**args, **kw})


def _val(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_bf16_learns_the_ranking_like_fp32(blobs, tmp_path):
    """Two epochs on drifting blobs under noise: held-out ranking accuracy of bf16 within 0.03 of
    fp32 (measured 0.917 vs 0.922, identity 0.846), both well above the identity baseline."""
    train, test = blobs
    acc = {}
    for p in ("fp32", "bf16"):
        train_dr.run(_dr(train, tmp_path / p, val=[test], precision=p))
        rec = _val(tmp_path / p)[-1]
        acc[p], ident = rec["val_acc"], rec["val_identity_acc"]
    assert abs(acc["bf16"] - acc["fp32"]) < 0.03, acc
    assert min(acc.values()) > ident + 0.04, (acc, ident)
    ck = load_checkpoint(tmp_path / "bf16" / "best.pt", "dr")
    assert ck.config.train["precision"] == "bf16"
    assert all(v.dtype == torch.float32 for v in ck.state_dict.values() if v.is_floating_point())
    conf = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert conf["loop"]["precision"] == "bf16" and conf["world_size"] == 1


def test_fp16_needs_cuda(blobs, tmp_path):
    train, _ = blobs
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(DrkitError, match="--precision fp16 needs a CUDA device"):
        train_dr.run(_dr(train, tmp_path / "r", precision="fp16", device="cpu"))
    r = cli("train-dr", train, "-o", tmp_path / "c", "--T", "1", "--stride", "1", "--size", "32", "--base", "4",
            "--depth", "2", "--precision", "fp16", "--device", "cpu")
    assert r.returncode == 1 and "needs a CUDA device" in r.stderr
    r = cli("train-dr", train, "-o", tmp_path / "c", "--precision", "fp8")
    assert r.returncode == 2


def test_channels_last_checkpoint_loads_into_a_plain_model(blobs, tmp_path):
    train, _ = blobs
    out = tmp_path / "cl"
    r = cli("train-dr", train, "-o", out, "--T", "1", "--stride", "1", "--size", "32", "--base", "4",
            "--depth", "2", "--epochs", "1", "--channels-last", "--precision", "bf16")
    assert r.returncode == 0, r.stderr
    ck = load_checkpoint(out / "best.pt", "dr")
    assert not any(k.startswith(("_orig_mod.", "module.", "net.")) for k in ck.state_dict)
    assert all(v.is_contiguous() for v in ck.state_dict.values())
    plain = create_model(ck.model.name, **ck.model.kwargs)
    plain.load_state_dict(ck.state_dict)                      # strict: the same keys
    assert ck.config.train["channels_last"] is True
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(plain.eval()(x), build_model(ck.model, ck.state_dict)(x))


def test_losses_are_fp32_under_bf16_autocast():
    """The network runs in bf16, the rank loss on its (fp32) output outside autocast: the loss is
    float32 and equal to the fp32 loss computed on the same DR."""
    torch.manual_seed(0)
    net = create_model("dr_unet", base=4, depth=2, param="direct")
    V = torch.rand(3, 5, 3, 16, 16)
    fwd = Forward(net, "bf16", "cpu")
    d = fwd(V[:, 2])
    assert d.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net.unet.head(torch.rand(1, 4, 8, 8)).dtype == torch.bfloat16   # autocast is on in there
    loss, delta = rank_loss(d, V)
    assert loss.dtype == torch.float32 and delta.dtype == torch.float32
    ref, _ = rank_loss(d.detach().double(), V.double())
    assert abs(float(loss.detach()) - float(ref)) < 1e-6
    loss.backward()
    assert all(p.grad.dtype == torch.float32 for p in net.parameters() if p.grad is not None)
    heat = Forward(create_model("small_cnn", in_ch=3, n_out=2, width=4), "bf16", "cpu")(V[:, 0])
    assert heat.dtype == torch.float32


def test_old_checkpoint_without_precision_resumes(blobs, tmp_path):
    """A last.pt from before --precision (no precision / channels_last / compile in its config)
    resumes, and so does one run at another precision."""
    train, _ = blobs
    out = tmp_path / "r"
    train_dr.run(_dr(train, out, T=1, base=4, epochs=1))
    ck = torch.load(out / "last.pt", weights_only=True)
    for k in ("precision", "channels_last", "compile"):
        del ck["config"]["train"][k]
    ck["train_state"]["finished"] = False
    torch.save(ck, out / "last.pt")
    st = train_dr.run(_dr(train, out, T=1, base=4, epochs=2, resume=True, precision="bf16"))
    assert st["epoch"] == 2 and [r["epoch"] for r in _val(out)] == [1, 2]
    assert load_checkpoint(out / "last.pt").config.train["precision"] == "bf16"


def test_train_task_bf16_channels_last(task_data, tmp_path):
    out = tmp_path / "t"
    r = train_task.run(train_task.TrainTaskConfig(
        input=[task_data["mdr"]], out=out, labels=task_data["labels"], task="au", epochs=1,
        width=8, batch_size=32, precision="bf16", channels_last=True))
    assert set(r["val"]) >= {"icc", "mse"}
    ck = load_checkpoint(out / "best.pt", "task")
    assert ck.config.train["precision"] == "bf16"
    ck.build_model()


def test_compile_saves_the_original_modules_weights(blobs, tmp_path, monkeypatch):
    """--compile wraps the network in torch.compile (here with the eager backend: inductor's C++
    build takes minutes on a small CPU); checkpoints keep the plain keys."""
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **kw: real(m, backend="eager"))
    train, _ = blobs
    out = tmp_path / "c"
    train_dr.run(_dr(train, out, T=1, base=4, epochs=1, compile=True))
    ck = load_checkpoint(out / "last.pt", "dr")
    assert ck.config.train["compile"] is True
    assert not any("_orig_mod" in k for k in ck.state_dict)
    create_model(ck.model.name, **ck.model.kwargs).load_state_dict(ck.state_dict)


def _flushing() -> bool:
    return float(torch.tensor(1e-39) * torch.tensor(1.0)) == 0.0


def test_training_flushes_denormals_and_restores_the_default(blobs, tmp_path, monkeypatch):
    """Denormal weights made CPU training steps 6x slower (CHANGELOG 0.3.0): the loop runs with
    flush-to-zero on the CPU, and a Python caller's process is left as it was."""
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals")
    torch.set_flush_denormal(False)
    import drkit.objectives as objectives
    seen, real = [], objectives.rank_loss
    monkeypatch.setattr(objectives, "rank_loss", lambda *a, **k: (seen.append(_flushing()), real(*a, **k))[1])
    assert not _flushing()
    train_dr.run(_dr(blobs[0], tmp_path / "r", epochs=1))
    assert seen and all(seen)
    assert not _flushing()
