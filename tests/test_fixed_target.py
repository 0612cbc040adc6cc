"""Fixed-target DRs (paper Sec. 4.3, Fig. 4): DI / BDI targets, the mse / perceptual / pix2pix
objectives of train-dr, their checkpoints in rank-eval and gen-dr."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import cli, make_face_store, moving_blob_frames

from drkit.checkpoint import load_checkpoint
from drkit.errors import DrkitError
from drkit.losses import pair_deltas, scores
from drkit.nets import VGG16
from drkit.objectives import dynamic_image_target, load_vgg16_features
from drkit.stages import gen_dr, rank_eval, train_dr
from drkit.store import open_store

TINY = {"T": 1, "stride": 1, "net_size": 16, "base": 4, "depth": 2, "batch_size": 6, "flip": False, "jitter": 0}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("fixed")
    train = make_face_store(d / "train.zarr", {"a": moving_blob_frames(20, 16, noise=0.05, seed=1)})
    test = make_face_store(d / "test.zarr", {f"t{i}": moving_blob_frames(16, 16, noise=0.05, seed=10 + i)
                                             for i in range(2)})
    return d, train, test


@pytest.fixture(scope="module")
def vgg_weights(data):
    """A generated state dict in torchvision's VGG-16 layout (random weights, He init)."""
    torch.manual_seed(0)
    with torch.device("meta"):
        feats = VGG16().features
    feats = feats.to_empty(device="cpu")
    for m in feats:
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            torch.nn.init.zeros_(m.bias)
    sd = {f"features.{k}": v for k, v in feats.state_dict().items()}
    sd["classifier.6.bias"] = torch.zeros(1000)          # the classifier is not used
    path = data[0] / "vgg16.pth"
    torch.save(sd, path)
    return path


def train(store, out, **kw):
    return train_dr.run(train_dr.TrainDRConfig(stores=[store], out=out, **{**TINY, **kw}))


def metrics(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ targets

def direct_di(frames: list[torch.Tensor]) -> torch.Tensor:
    """Approximate rank pooling written out: alpha_t = sum_{j=t..N} (2j - N - 1) / j."""
    N = len(frames)
    alpha = [sum((2 * j - N - 1) / j for j in range(t, N + 1)) for t in range(1, N + 1)]
    return sum(a * f for a, f in zip(alpha, frames))


def test_di_and_bdi_targets_match_a_direct_computation():
    V = torch.rand(2, 7, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    for target, order in (("di", list(range(7))), ("bdi", list(range(6, -1, -1)))):
        got = dynamic_image_target(V, target)
        for b in range(2):
            d = direct_di([V[b, k] for k in order])
            d = d - d.mean()
            torch.testing.assert_close(got[b], d / d.pow(2).mean().sqrt())
        assert got.mean(dim=(1, 2, 3)).abs().max() < 1e-6                       # zero mean
        torch.testing.assert_close(got.pow(2).mean(dim=(1, 2, 3)), torch.ones(2))   # unit RMS
    bdi = dynamic_image_target(V, "bdi")
    torch.testing.assert_close(bdi, dynamic_image_target(V.flip(1), "di"))
    assert not torch.allclose(bdi, -dynamic_image_target(V, "di"))          # not just the sign
    torch.testing.assert_close(dynamic_image_target(3 * V, "di"), dynamic_image_target(V, "di"))
    assert dynamic_image_target(V[:, :1].expand(-1, 7, -1, -1, -1), "di").abs().max() == 0   # no motion


def test_a_forward_target_ranks_one_side_only():
    """A steady change: the DI target ranks the past side, the BDI target the future side."""
    T, ramp = 3, torch.linspace(0, 1, 7)
    base = torch.rand(1, 1, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    V = 0.2 + 0.3 * base + 0.4 * ramp.view(1, 7, 1, 1, 1) * base.flip(-1)
    P = T * (T + 1) // 2
    for target, past, future in (("di", 1.0, 0.0), ("bdi", 0.0, 1.0)):
        delta = pair_deltas(scores(dynamic_image_target(V, target), V), T)
        assert float((delta[:, :P] > 0).float().mean()) == past
        assert float((delta[:, P:] > 0).float().mean()) == future


# ------------------------------------------------------------------ training

@pytest.mark.parametrize("objective,key", [("mse", "train_loss"), ("perceptual", "train_loss"),
                                           ("pix2pix", "train_l1")])
def test_each_objective_lowers_its_loss(data, vgg_weights, objective, key, tmp_path):
    """One batch of 6 windows, 25 steps; pix2pix's generator loss is adversarial, its L1 term
    to the target must fall."""
    store = make_face_store(tmp_path / "s.zarr", {"a": moving_blob_frames(8, 32, noise=0.05, seed=1)})
    extra = {"perceptual": {"perceptual_weights": vgg_weights}, "pix2pix": {"disc_base": 8, "net_size": 32}}
    train(store, tmp_path / "run", objective=objective, target="bdi", epochs=25, lr=3e-3,
          **extra.get(objective, {}))
    m = [x[key] for x in metrics(tmp_path / "run")]
    assert len(m) == 25 and m[-1] < 0.93 * m[0], m
    ck = load_checkpoint(tmp_path / "run", "dr")
    assert (ck.config.objective, ck.config.target, ck.model.name) == (objective, "bdi", "dr_unet")
    assert "theta" not in ck.config.train and ck.config.train["lr"] == 3e-3
    if objective == "perceptual":
        assert ck.config.train["perceptual_weights"] == str(vgg_weights)
        assert len(ck.config.train["perceptual_weights_sha256_16"]) == 16


def test_pix2pix_resumes_exactly(data, tmp_path):
    _, store, _ = data
    kw = {"objective": "pix2pix", "target": "di", "disc_base": 8, "net_size": 32}
    train(store, tmp_path / "full", epochs=2, **kw)
    train(store, tmp_path / "part", epochs=1, **kw)
    ck = torch.load(tmp_path / "part" / "last.pt", weights_only=True)      # "killed" after epoch 1
    ck["train_state"]["finished"] = False
    torch.save(ck, tmp_path / "part" / "last.pt")
    train(store, tmp_path / "part", epochs=2, resume=True, **kw)
    a, b = (load_checkpoint(tmp_path / r / "last.pt") for r in ("full", "part"))
    assert a.aux["model"]["name"] == "patchgan"
    for x, y in ((a.state_dict, b.state_dict), (a.aux["discriminator"], b.aux["discriminator"])):
        assert x.keys() == y.keys()
        for k in x:
            torch.testing.assert_close(x[k], y[k], rtol=0, atol=0)
    sa, sb = a.aux["optimizer"]["state"], b.aux["optimizer"]["state"]
    for k in sa:
        torch.testing.assert_close(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"], rtol=0, atol=0)
    assert m_losses(tmp_path / "full") == m_losses(tmp_path / "part")
    best = torch.load(tmp_path / "full" / "best.pt", weights_only=True)
    assert "aux" not in best and best["state_dict"].keys() == a.state_dict.keys()   # generator only
    assert a.optimizer["param_groups"][0]["betas"] == (0.5, 0.999) and a.config.train["lr"] == 2e-4


def m_losses(run):
    return [(x["train_loss"], x["train_d_loss"]) for x in metrics(run)]


def test_objective_options_are_checked(data, vgg_weights, tmp_path):
    _, store, _ = data
    base = ["train-dr", store, "-o", tmp_path / "r", "--T", "1", "--stride", "1", "--size", "16", "--base", "4",
            "--depth", "2"]
    for args, says in ((["--objective", "perceptual", "--target", "di"], "--perceptual-weights"),
                       (["--objective", "mse"], "--target"),
                       (["--objective", "rank", "--target", "di"], "--target"),
                       (["--objective", "foo"], "pix2pix")):
        r = cli(*base, *args)
        assert r.returncode == 2 and says in r.stderr, r.stderr
    sd = torch.load(vgg_weights, weights_only=True)
    sd["features.10.wieght"] = sd.pop("features.10.weight")
    sd["features.0.bias"] = torch.zeros(3)
    bad = tmp_path / "bad.pth"
    torch.save(sd, bad)
    with pytest.raises(DrkitError) as e:
        load_vgg16_features(bad)
    msg = str(e.value)
    assert str(bad) in msg and "missing: features.10.weight" in msg and "features.10.wieght" in msg
    assert "features.0.bias (3,) (expected (64,))" in msg
    r = cli(*base, "--objective", "perceptual", "--target", "di", "--perceptual-weights", bad)
    assert r.returncode == 1 and "features.10.weight" in r.stderr and "bad.pth" in r.stderr
    feats = load_vgg16_features(vgg_weights)
    assert len(feats) == 23 and not any(p.requires_grad for p in feats.parameters())
    torch.testing.assert_close(feats[21].weight, torch.load(vgg_weights, weights_only=True)["features.21.weight"])


# ------------------------------------------------------------------ consumers

@pytest.fixture(scope="module")
def runs(data):
    d, store, _ = data
    train(store, d / "rank", net_size=32, epochs=1)
    train(store, d / "mse", objective="mse", target="di", epochs=1)
    return {"dr": d / "rank", "unet_mse_di": d / "mse"}


def test_rank_eval_compares_several_checkpoints(data, runs, tmp_path):
    _, _, test = data
    js, png = tmp_path / "r.json", tmp_path / "grid.png"
    r = cli("rank-eval", test, runs["dr"], runs["unet_mse_di"], "--T", "1,2", "--stride", "1",
            "--baselines", "identity,di", "--json", js, "--plot", png)
    assert r.returncode == 0, r.stderr
    recs = json.loads(js.read_text())
    assert [x["method"] for x in recs[:4]] == ["dr", "unet_mse_di", "identity", "di"]
    assert len(recs) == 2 * 4
    for x in recs:
        assert x["past"]["pairs"] > 0 and x["future"]["pairs"] > 0 and 0 <= x["accuracy"] <= 1
    size = {x["method"]: x["size"] for x in recs}
    assert size == {"dr": 32, "unet_mse_di": 16, "identity": 32, "di": 32}   # each DR at its net_size
    assert {(x["objective"], x["target"]) for x in recs if x["method"] == "unet_mse_di"} == {("mse", "di")}
    windows = {x["windows"] for x in recs if x["T"] == 1}
    assert len(windows) == 1                                                   # the same windows
    assert "dr - identity" in r.stdout and "past / future" in r.stdout and "unet_mse_di" in r.stdout
    assert png.stat().st_size > 1000
    # two rank-loss DRs: told apart by their run folders; the old command line still works
    other = tmp_path / "rank2"
    train(data[1], other, epochs=1)
    recs = rank_eval.run(rank_eval.RankEvalConfig(ckpt=[runs["dr"], other / "best.pt"], stores=[test]))
    assert [x["method"] for x in recs] == ["dr@rank", "dr@rank2", "identity"]
    header, _ = rank_eval.table_rows(recs)
    assert header[-2:] == ["dr@rank - identity", "dr@rank2 - identity"]
    r = cli("rank-eval", runs["unet_mse_di"], test)
    assert r.returncode == 0 and "unet_mse_di" in r.stdout, r.stderr


def test_a_fixed_target_checkpoint_works_in_gen_dr(data, runs, tmp_path):
    _, _, test = data
    out = tmp_path / "mdr.zarr"
    r = gen_dr.run(gen_dr.GenDRConfig(store=test, out=out, dr=[runs["unet_mse_di"]]))
    assert len(r["channels"]) == 6 and r["frames"] == 32
    st = open_store(out, "dr")
    net = load_checkpoint(runs["unet_mse_di"], "dr").build_model()
    x = torch.from_numpy(np.asarray(open_store(test).video("t0")["frames"][:4])).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        want = net(x).numpy()
    np.testing.assert_allclose(st.video("t0")["mdr"][:4, 3:].astype(np.float32), want, atol=2e-2, rtol=1e-2)
