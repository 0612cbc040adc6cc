"""DR learning: rank loss, windows, training, rank-eval baselines, train -> rank-eval CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import cli, make_face_store, moving_blob_frames

from drkit import ranking
from drkit.checkpoint import load_checkpoint
from drkit.errors import DrkitError
from drkit.losses import rank_loss, same_side_pairs
from drkit.stages import rank_eval, train_dr
from drkit.store import open_store
from drkit.windows import collect_windows, effective_stride, valid_windows


def eq3_loop(d, V, theta, gamma, eps):
    """Eq. 3 written as the paper writes it, one window at a time."""
    total = 0
    for i in range(d.shape[0]):
        N = V.shape[1]
        T = (N - 1) // 2
        S = [(d[i] * V[i, k]).sum() / d[i].numel() for k in range(N)]
        L = gamma * (d[i] ** 2).mean() - eps
        for b in range(0, T):                      # b = t-T .. t-1
            for a in range(b + 1, T + 1):          # a = b+1 .. t
                L = L + torch.clamp(theta - (S[a] - S[b]), min=0)
        for a in range(T, 2 * T):                  # a = t .. t+T-1
            for b in range(a + 1, 2 * T + 1):      # b = a+1 .. t+T
                L = L + torch.clamp(theta - (S[a] - S[b]), min=0)
        total = total + L
    return total / d.shape[0]


@pytest.mark.parametrize("T", [1, 3, 5])
def test_rank_loss_matches_plain_loop_with_gradients(T):
    g = torch.Generator().manual_seed(T)
    d1 = torch.randn(4, 3, 6, 6, generator=g, requires_grad=True)
    V = torch.rand(4, 2 * T + 1, 3, 6, 6, generator=g)
    d2 = d1.detach().clone().requires_grad_(True)
    theta = 0.05   # large enough that some pairs are inside the margin and some are not
    fast, delta = rank_loss(d1, V, theta=theta, gamma=0.3, eps=0.01)
    slow = eq3_loop(d2, V, theta, 0.3, 0.01)
    assert 0 < (delta < theta).float().mean() < 1
    torch.testing.assert_close(fast, slow)
    fast.backward()
    slow.backward()
    torch.testing.assert_close(d1.grad, d2.grad)
    assert len(same_side_pairs(T)[0]) == T * (T + 1)


def test_stride_scales_with_fps():
    assert effective_stride(2, 25) == 2
    assert effective_stride(2, 50) == 4          # the paper: stride doubled for 50 fps data
    assert effective_stride(4, 30) == 5 and effective_stride(1, 14.25) == 1
    assert effective_stride(3, 14.26) == 2


def test_windows_skip_missing_frames():
    idx = np.array([0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12])      # frame 5 has no face
    w = valid_windows(idx, T=1, step=2)
    centres = idx[w[:, 1]].tolist()
    assert centres == [2, 4, 6, 8, 9, 10]   # 3 and 7 would need frame 5
    assert (idx[w] == idx[w[:, 1]][:, None] + np.array([-2, 0, 2])).all()
    assert valid_windows(np.array([], int), 2, 1).shape == (0, 5)


def test_collect_windows_uses_each_videos_fps(tmp_path):
    store = make_face_store(tmp_path / "s.zarr", {"a": moving_blob_frames(40, 16), "b": moving_blob_frames(40, 16)},
                            fps={"a": 25.0, "b": 50.0})
    ws = collect_windows([open_store(store)], T=2, stride=2)
    pos = {v: ws.positions[[i for i, x in enumerate(ws.videos) if x == v]] for v in ("a", "b")}
    assert (np.diff(pos["a"][0]) == 2).all() and (np.diff(pos["b"][0]) == 4).all()
    assert len(pos["a"]) == 40 - 8 and len(pos["b"]) == 40 - 16


def _windows(frames: np.ndarray, T: int) -> torch.Tensor:
    """All windows (stride 1) of a (n, H, W, 3) sequence as (B, 2T+1, 3, H, W) in [0, 1]."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    return torch.stack([x[c - T:c + T + 1] for c in range(T, len(frames) - T)])


def _acc(delta):
    d = delta[~torch.isnan(delta)]
    return float((d > 0).float().mean())


def test_baselines_on_hand_made_windows():
    T, n = 3, 20
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.6, (1, 8, 8, 3))
    step = rng.integers(1, 4, (1, 8, 8, 3))         # whole grey levels: frames exactly collinear
    linear = _windows((np.round(255 * base) + np.arange(n)[:, None, None, None] * step).astype(np.uint8), T)
    # di ranks forward in time: every past pair right, every future pair wrong
    d = ranking.method_deltas("di", linear)
    P = d.shape[1] // 2
    assert _acc(d[:, :P]) == 1.0 and _acc(d[:, P:]) == 0.0
    # a monotonic change cannot be ranked on both sides by any linear score
    assert _acc(ranking.method_deltas("identity", linear)) == pytest.approx(0.5, abs=0.01)
    # a change symmetric about the centre (activation then deactivation) is rankable: the
    # test-time RankSVM finds it from the even-offset frames and ranks the unseen ones
    peak = np.stack([base[0] + 0.05 * abs(k) * np.ones((8, 8, 3)) for k in range(-T, T + 1)])
    sym = _windows((255 * peak).astype(np.uint8), T)
    assert _acc(ranking.method_deltas("ranksvm", sym)) == 1.0
    # a blob moving across a flat background: the frame itself is the perfect ranker
    yy, xx = np.mgrid[:16, :16]
    blobs = np.stack([np.exp(-((xx - 2 - k) ** 2 + (yy - 8) ** 2) / 4.0) for k in range(12)])
    moving = _windows((255 * np.repeat(blobs[..., None], 3, -1)).astype(np.uint8), T)
    assert _acc(ranking.method_deltas("identity", moving)) == 1.0


def test_di_coefficients():
    a = ranking.di_coefficients(3)
    torch.testing.assert_close(a, torch.tensor([-4 / 3, 2 / 3, 2 / 3]))
    for N in (3, 7, 19):
        assert abs(float(ranking.di_coefficients(N).sum())) < 1e-5
        a = ranking.di_coefficients(N)
        assert float((a * torch.arange(N)).sum()) > 0          # weights grow with time overall
        dropped = [sum((2 * j - N) / j for j in range(s, N + 1)) for s in range(1, N + 1)]
        assert abs(sum(dropped)) > 0.5                         # the port without -1 does not sum to 0


def test_ranksvm_scores_only_unseen_pairs():
    V = torch.rand(2, 7, 3, 4, 4)
    d = ranking.ranksvm_deltas(V)
    a, b = map(np.array, same_side_pairs(3))
    off_a, off_b = np.abs(a - 3), np.abs(b - 3)
    fitted = (off_a % 2 == 0) & (off_b % 2 == 0)
    assert torch.isnan(d[:, fitted]).all() and not torch.isnan(d[:, ~fitted]).any()


@pytest.fixture(scope="module")
def blob_stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("blobs")
    train = make_face_store(d / "train.zarr", {f"tr{i}": moving_blob_frames(60, 32, seed=i) for i in range(6)})
    test = make_face_store(d / "test.zarr", {f"te{i}": moving_blob_frames(60, 32, seed=100 + i) for i in range(3)})
    return train, test


def test_training_learns_a_ranking_the_baseline_misses(blob_stores, tmp_path):
    """Frames are a drifting blob under strong per-frame noise: the raw image (identity) ranks
    poorly, a DR trained for 20 s ranks held-out sequences far better."""
    train, test = blob_stores
    out = tmp_path / "run"
    train_dr.run(train_dr.TrainDRConfig(stores=[str(train)], out=str(out), T=3, stride=1, net_size=32,
                                        base=8, depth=2, epochs=100, time_budget=20, batch_size=16,
                                        val=[str(test)], flip=False, jitter=0))
    recs = rank_eval.run(rank_eval.RankEvalConfig(ckpt=str(out), stores=[str(test)],
                                                  baselines=["identity"]))
    acc = {r["method"]: r["accuracy"] for r in recs}
    assert acc["identity"] < 0.88
    assert acc["dr"] > 0.92 and acc["dr"] > acc["identity"] + 0.08, acc
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"train_loss", "train_acc", "val_acc", "val_identity_acc", "data_wait_share"} <= set(lines[-1])
    ck = load_checkpoint(out / "best.pt", "dr")
    assert ck.config.T == 3 and ck.config.net_size == 32 and ck.model.name == "dr_unet"
    assert ck.optimizer is None and load_checkpoint(out / "last.pt").optimizer is not None


def test_resume_continues_exactly(blob_stores, tmp_path):
    train, _ = blob_stores
    kw = dict(stores=[str(train)], T=2, stride=1, net_size=32, base=4, depth=2, batch_size=32)
    train_dr.run(train_dr.TrainDRConfig(out=str(tmp_path / "full"), epochs=2, **kw))
    train_dr.run(train_dr.TrainDRConfig(out=str(tmp_path / "part"), epochs=1, **kw))
    with pytest.raises(DrkitError, match="--resume"):
        train_dr.run(train_dr.TrainDRConfig(out=str(tmp_path / "part"), epochs=2, **kw))
    # a run asked for 1 epoch is finished; continuing it to 2 is a resume with more epochs
    ck = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    ck["train_state"]["finished"] = False
    torch.save(ck, tmp_path / "part" / "last.pt")
    train_dr.run(train_dr.TrainDRConfig(out=str(tmp_path / "part"), epochs=2, resume=True, **kw))
    a = load_checkpoint(tmp_path / "full" / "last.pt").state_dict
    b = load_checkpoint(tmp_path / "part" / "last.pt").state_dict
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_cli_train_then_rank_eval(blob_stores, tmp_path):
    train, test = blob_stores
    run = tmp_path / "run"
    r = cli("train-dr", train, "-o", run, "--T", "2", "--stride", "1", "--size", "32", "--base", "4",
            "--depth", "2", "--epochs", "1")
    assert r.returncode == 0, r.stderr
    js = tmp_path / "r.json"
    r = cli("rank-eval", run, test, "--T", "2,3", "--stride", "1,2", "--baselines", "identity,ranksvm,di",
            "--json", js, "--plot", tmp_path / "grid.png")
    assert r.returncode == 0, r.stderr
    recs = json.loads(js.read_text())
    assert len(recs) == 4 * 4
    for rec in recs:
        assert {"method", "T", "stride", "accuracy", "pairs", "past", "future", "videos"} <= set(rec)
        assert 0 <= rec["accuracy"] <= 1 and rec["pairs"] > 0
    assert {r["method"] for r in recs} == {"dr", "identity", "ranksvm", "di"}
    assert "dr - identity" in r.stdout and (tmp_path / "grid.png").stat().st_size > 1000
    r = cli("rank-eval", tmp_path / "nothing", test)
    assert r.returncode == 1 and "no checkpoint" in r.stderr


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 4, 7, 9), (3, 16, 56, 56)])
def test_fast_max_pool_equals_torch_and_training_is_unchanged(shape):
    import torch.nn.functional as F

    from drkit.nets import max_pool2
    x = torch.randn(shape)
    x[0, 0, 0, 0] = float("nan")
    ref = F.max_pool2d(x, 2)
    with torch.inference_mode():
        fast = max_pool2(x)
        assert fast.shape == ref.shape
        assert torch.equal(torch.nan_to_num(fast, nan=7.0), torch.nan_to_num(ref, nan=7.0))
        assert torch.equal(max_pool2(x.contiguous(memory_format=torch.channels_last)).nan_to_num(nan=7.0),
                           fast.nan_to_num(nan=7.0))
    # with autograd it is torch's pooling: gradient to one element per window, as before
    y = x.nan_to_num().clone().requires_grad_(True)
    max_pool2(y).sum().backward()
    assert y.grad.sum().item() == ref.numel() and y.grad.max().item() == 1.0


def test_multi_scale_network_learns_every_window_and_stacks_in_one_pass(blob_stores, tmp_path):
    """`train-dr --heads`: one UNet, one DR per window, each ranking held-out sequences better than
    identity at its own window; gen-dr stacks all heads from one network, channels named per head."""
    train, test = blob_stores
    out = tmp_path / "ms"
    train_dr.run(train_dr.TrainDRConfig(stores=[str(train)], out=str(out), heads=[(1, 1), (3, 1)], net_size=32,
                                        base=8, depth=2, epochs=100, time_budget=25, batch_size=16,
                                        val=[str(test)], flip=False, jitter=0))
    ck = load_checkpoint(out / "best.pt", "dr")
    assert ck.config.windows == [(1, 1), (3, 1)] and ck.model.kwargs["heads"] == 2
    assert (ck.config.T, ck.config.stride) == (1, 1)
    rec = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert {"val_acc_T1S1", "val_acc_T3S1", "val_identity_acc_T3S1", "train_acc_T3S1"} <= set(rec)
    recs = rank_eval.run(rank_eval.RankEvalConfig(ckpt=str(out), stores=[str(test)], baselines=["identity"]))
    acc = {(r["method"], r["T"], r["stride"]): r["accuracy"] for r in recs}
    assert {(T, S) for _, T, S in acc} == {(1, 1), (3, 1)}           # the default grid: the heads' windows
    assert acc[("dr", 3, 1)] > acc[("identity", 3, 1)] + 0.08, acc
    assert acc[("dr", 1, 1)] >= acc[("identity", 1, 1)] - 0.01, acc   # T=1: every pair holds the centre
    # the head trained on a window ranks it better than the other head does
    net = ck.build_model()
    r3 = ranking.evaluate_windows([open_store(test)], 3, 1, ["dr"], ranking.HeadOf(net, 1), 32)["dr"]["accuracy"]
    r3_other = ranking.evaluate_windows([open_store(test)], 3, 1, ["dr"], ranking.HeadOf(net, 0), 32)["dr"]["accuracy"]
    assert r3 == pytest.approx(acc[("dr", 3, 1)]) and r3 > r3_other
    from drkit.stages import gen_dr
    mdr = tmp_path / "mdr.zarr"
    gen_dr.run(gen_dr.GenDRConfig(store=test, out=mdr, dr=[out]))
    st = open_store(mdr)
    assert st.typed_params.channels == ["image_r", "image_g", "image_b", "dr0_T1_S1_r", "dr0_T1_S1_g",
                                        "dr0_T1_S1_b", "dr1_T3_S1_r", "dr1_T3_S1_g", "dr1_T3_S1_b"]
    x = torch.from_numpy(open_store(test).video("te0")["frames"][:4]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        want = net(x)[:, 3:6]
    got = torch.from_numpy(st.video("te0")["mdr"][:4, 6:9].astype(np.float32))
    torch.testing.assert_close(got, want, atol=2e-3, rtol=1e-2)


def test_one_head_network_is_the_single_scale_network():
    """heads=1 keeps the layer names and the computation of single-scale DR networks (old
    checkpoints load and give the same maps)."""
    from drkit.nets import DRNet
    torch.manual_seed(0)
    a = DRNet(base=4, depth=2)
    b = DRNet(base=4, depth=2, heads=1)
    b.load_state_dict(a.state_dict())
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(a(x), b(x))
    m = DRNet(base=4, depth=2, heads=3)
    torch.nn.init.normal_(m.unet.head.weight)
    y = m(x)
    assert y.shape == (2, 9, 32, 32)
    assert torch.allclose(y.view(2, 3, 3, 32, 32).mean((2, 3, 4)), torch.zeros(2, 3), atol=1e-5)   # zero mean per head


def test_init_from_a_trained_network(blob_stores, tmp_path):
    """--init: a T=3 network that starts from a trained T=1 network's weights starts where it ended
    (the curriculum over T); a multi-scale network takes them for every head."""
    train, test = blob_stores
    kw = dict(stores=[str(train)], stride=1, net_size=32, base=4, depth=2, batch_size=16, flip=False, jitter=0)
    train_dr.run(train_dr.TrainDRConfig(out=str(tmp_path / "t1"), T=1, epochs=1, **kw))
    src = load_checkpoint(tmp_path / "t1" / "best.pt").build_model()
    from drkit.nets import DRNet
    ms = DRNet(base=4, depth=2, heads=2)
    train_dr._init_from(ms, tmp_path / "t1")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ms(x)[:, 3:], src(x))
        torch.testing.assert_close(ms(x)[:, :3], src(x))
    train_dr.run(train_dr.TrainDRConfig(out=str(tmp_path / "t3"), T=3, epochs=1, init=tmp_path / "t1", **kw))
    assert "init_sha256_16" in load_checkpoint(tmp_path / "t3").config.train


def test_shift_moves_every_frame_of_a_window_alike_and_off_changes_nothing():
    """--shift: one shift and zoom per window, the same for its frames; a run without it sees the
    numbers (flip, jitter) it always saw."""
    from drkit.configs import TrainDRConfig
    x = torch.zeros(4, 5, 3, 32, 32)
    x[:, :, :, 15:17, 15:17] = 1.0     # a 2-pixel dot in the middle of every frame
    x[:, 2, :, 15:17, 15:17] = 0.8     # the centre frame dimmer: frames differ, positions do not
    base = dict(stores=[], out="o", flip=True, jitter=0.1)
    off = train_dr.augmenter(TrainDRConfig(**base), 3)(x.clone(), 7)
    on = train_dr.augmenter(TrainDRConfig(**base, shift=0.2), 3)(x.clone(), 7)
    assert torch.equal(off, train_dr.augmenter(TrainDRConfig(**base, shift=0.0), 3)(x.clone(), 7))
    assert not torch.allclose(on, off)
    for w in range(4):
        where = [tuple(torch.nonzero(on[w, k, 0] > 0).float().mean(0).tolist()) for k in range(5)]
        assert all(np.allclose(p, where[0], atol=1e-4) for p in where)   # every frame moved alike
        assert max(abs(where[0][0] - 15.5), abs(where[0][1] - 15.5)) <= 0.2 * 32 * 1.25 + 1
    # recorded in the checkpoint only when used (a run without it resumes across versions)
    heads = [(1, 1)]
    assert "shift" not in train_dr._dr_config(TrainDRConfig(**base), heads, 1e-3, []).train
    assert train_dr._dr_config(TrainDRConfig(**base, shift=0.1), heads, 1e-3, []).train["shift"] == 0.1
    # by hand: +0.25 of the side in x is 8 pixels right, zoom 1 keeps the dot's size
    moved = train_dr.shift_zoom(x[:1].clone(), torch.tensor([[0.25, 0.0, 0.0]]))
    assert torch.equal(moved[0, 0, 0, 15:17, 23:25], torch.ones(2, 2))
    assert moved[0, 0, 0].sum() == 4
    # zoom 2 doubles the dot's side about the centre
    big = train_dr.shift_zoom(x[:1].clone(), torch.tensor([[0.0, 0.0, 1.0]]))
    assert (big[0, 0, 0] > 0.99).sum() >= 4 and (big[0, 0, 0] > 0).sum() > 4
