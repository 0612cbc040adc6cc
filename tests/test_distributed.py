"""train-dr and train-task under torchrun: 2 CPU processes (gloo) train, checkpoint and resume, and
end with the weights of a one-process run on the same global batches (drkit.distributed,
drkit.train.fit)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_face_store, moving_blob_frames

from drkit import distributed
from drkit.batching import part
from drkit.checkpoint import load_checkpoint
from drkit.stages import train_dr

# measured: max |w_2proc - w_1proc| = 4.4e-7 after 10 Adam steps (lr 1e-3: each step moves a weight by
# up to ~1e-3), float summation order only
TOL = 1e-5


def test_part_splits_every_batch_into_contiguous_weighted_pieces():
    for n in (1, 2, 5, 8, 33):
        for world in (1, 2, 3):
            parts = [part(n, r, world) for r in range(world)]
            got = np.concatenate([np.arange(n)[s] for s, w in parts if w > 0])
            np.testing.assert_array_equal(got, np.arange(n))
            assert abs(sum(w for _, w in parts) - 1) < 1e-12
            assert all(w == (s.stop - s.start) / n for s, w in parts if w > 0)
    assert part(1, 1, 2) == (slice(0, 1), 0.0)   # nothing left: one sample, weight 0


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    # 17 + 16 = 33 windows at T=2: batches of 8, 8, 8, 8 and 1 (rank 1 gets a weight-0 stand-in)
    return make_face_store(d / "train.zarr", {"a": moving_blob_frames(21, 32, seed=1),
                                              "b": moving_blob_frames(20, 32, seed=2)})


OPTS = ["--T", "2", "--stride", "1", "--size", "32", "--base", "4", "--depth", "2", "--batch-size", "8",
        "--device", "cpu", "--jitter", "0.2"]   # flip and jitter on: drawn per global batch


def test_two_processes_train_resume_and_match_one_process(store, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)         # as each of the 2 processes (OMP_NUM_THREADS=1)
    try:
        train_dr.run(train_dr.TrainDRConfig(stores=[store], out=one, T=2, stride=1, net_size=32, base=4, depth=2,
                                            batch_size=8, device="cpu", jitter=0.2, epochs=2))
    finally:
        torch.set_num_threads(threads)
    r = distributed.launch(2, "train-dr", [store, "-o", two, *OPTS, "--epochs", "1"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr.count("epoch 1:") == 1          # rank 0 alone logs
    ck = torch.load(two / "last.pt", weights_only=True)
    assert len(ck["train_state"]["rng_ranks"]) == 2 and ck["train_state"]["global_step"] == 5
    ck["train_state"]["finished"] = False         # continue the finished 1-epoch run to 2 epochs
    torch.save(ck, two / "last.pt")
    r = distributed.launch(2, "train-dr", [store, "-o", two, *OPTS, "--epochs", "2", "--resume"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming" in r.stderr
    a, b = load_checkpoint(one / "last.pt"), load_checkpoint(two / "last.pt")
    assert b.train_state["global_step"] == a.train_state["global_step"] == 10
    diff = max(float((a.state_dict[k] - b.state_dict[k]).abs().max()) for k in a.state_dict)
    print(f"max |w_2proc - w_1proc| = {diff:.3g}")
    assert diff < TOL, diff
    recs = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2]
    for x, y in zip(recs, ref):    # epoch metrics averaged over the ranks = the one-process ones
        assert abs(x["train_acc"] - y["train_acc"]) < 1e-3 and abs(x["train_loss"] - y["train_loss"]) < 1e-5
    assert json.loads((two / "config.json").read_text())["world_size"] == 2
    assert (two / "best.pt").is_file()


def test_train_task_two_processes_match_one_process(task_data, tmp_path):
    """train-task under torchrun (mirroring on, drawn per global batch; rank 0 validates; some
    labels missing, so the ranks' losses are weighted by their share of labelled entries): the
    weights after one epoch equal a one-process run's within TOL. Dropout off: with it each
    process draws its own masks, so the runs differ by that noise."""
    from drkit.configs import TrainTaskConfig
    from drkit.stages import train_task
    one, two = tmp_path / "one", tmp_path / "two"
    labels = tmp_path / "labels.csv"       # every 3rd t1 and every 5th t2 missing
    rows = task_data["labels"].read_text().splitlines()
    out = [rows[0]]
    for i, r in enumerate(rows[1:]):
        c = r.split(",")
        c[-2] = "" if i % 3 == 0 else c[-2]
        c[-1] = "" if i % 5 == 0 else c[-1]
        out.append(",".join(c))
    labels.write_text("\n".join(out) + "\n")
    opts = {"labels": labels, "epochs": 1, "batch_size": 16, "width": 8, "dropout": 0.0, "device": "cpu"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_task.run(TrainTaskConfig(input=[task_data["mdr"]], out=one, **opts))
    finally:
        torch.set_num_threads(threads)
    r = distributed.launch(2, "train-task", [task_data["mdr"], "--labels", labels, "-o", two, "--epochs", "1",
                                             "--batch-size", "16", "--width", "8", "--dropout", "0", "--device", "cpu"])
    assert r.returncode == 0, r.stdout + r.stderr
    a, b = load_checkpoint(one / "last.pt"), load_checkpoint(two / "last.pt")
    assert a.train_state["global_step"] == b.train_state["global_step"] > 1
    diff = max(float((a.state_dict[k] - b.state_dict[k]).abs().max()) for k in a.state_dict
               if a.state_dict[k].is_floating_point())
    print(f"train-task: max |w_2proc - w_1proc| = {diff:.3g}")
    assert diff < TOL, diff
    va = json.loads((one / "metrics.jsonl").read_text().splitlines()[-1])
    vb = json.loads((two / "metrics.jsonl").read_text().splitlines()[-1])
    assert abs(va["val_icc"] - vb["val_icc"]) < 1e-3, (va, vb)
