"""examples/downstream/protocol.py: which runs a rerun with a larger step cap redoes, and which
record of a run the report reads."""

import importlib.util
import json
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "protocol", Path(__file__).resolve().parents[1] / "examples" / "downstream" / "protocol.py")
protocol = importlib.util.module_from_spec(spec)
spec.loader.exec_module(protocol)


def rec(epochs, best, patience=5, icc=0.1, k="all", seed=0):
    return {"input": "si", "k": k, "seed": seed, "arch": "small", "epochs": epochs,
            "best_epoch": best, "patience": patience, "test": {"icc": icc}}


def test_a_run_hit_the_cap_unless_patience_ran_out():
    assert protocol.hit_cap(rec(epochs=7, best=7))       # still improving at the last epoch
    assert protocol.hit_cap(rec(epochs=7, best=3))       # 4 epochs without progress < patience 5
    assert not protocol.hit_cap(rec(epochs=8, best=3))   # 5 epochs without progress: early-stopped
    assert not protocol.hit_cap(rec(epochs=104, best=82, patience=22))


def test_the_latest_record_of_a_run_replaces_the_capped_one(tmp_path):
    f = tmp_path / "results.jsonl"
    lines = [rec(7, 7, icc=0.41), rec(7, 5, icc=0.53, seed=1), rec(14, 9, icc=0.48)]
    f.write_text("".join(json.dumps(r) + "\n" for r in lines))
    got = protocol.latest(f)
    assert len(got) == 2
    assert got[("si", "all", 0, "small")]["test"]["icc"] == 0.48
    assert got[("si", "all", 1, "small")]["test"]["icc"] == 0.53
    assert protocol.latest(tmp_path / "missing.jsonl") == {}
