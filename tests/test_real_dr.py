"""Real-data DR learning (slow: ~6 minutes): person-disjoint split of ../shared/data/faces,
3 minutes of training at 64 px, and the DR must beat the identity baseline on held-out people.
Run with `python -m pytest -m slow`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REAL, real_videos

from drkit.stages import preprocess, rank_eval, train_dr

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


def test_dr_beats_identity_on_held_out_people(tmp_path):
    real_videos()   # skips when the data is absent
    split = Path(__file__).resolve().parents[1] / "examples" / "real_faces" / "person_split.py"
    subprocess.run([sys.executable, str(split), str(REAL), "-o", str(tmp_path)], check=True)
    stores = {}
    for part in ("train", "test"):
        stores[part] = tmp_path / f"{part}.zarr"
        preprocess.run(preprocess.PreprocessConfig(inputs=(tmp_path / f"{part}.txt").read_text().split(),
                                                   out=str(stores[part]), size=64, workers=2))
    train_dr.run(train_dr.TrainDRConfig(stores=[str(stores["train"])], out=str(tmp_path / "dr"), T=5, stride=2,
                                        size=64, epochs=100, time_budget=180))
    recs = rank_eval.run(rank_eval.RankEvalConfig(ckpt=str(tmp_path / "dr"), stores=[str(stores["test"])],
                                                  baselines=["identity"], every=2))
    acc = {r["method"]: r["accuracy"] for r in recs}
    assert acc["dr"] > acc["identity"] + 0.01, acc
