"""DR training and inference speed on CPU (or CUDA when present), and the share of training
time spent waiting for data.

    python benchmarks/dr_speed.py [--store faces.zarr] [--seconds 60] [--sizes 112,224]

Without --store, a face store of generated frames is made in a temporary folder (the speed of
the network does not depend on the content). For each size: train-dr for --seconds (T=5, S=2,
batch 16, default UNet) reporting windows/s and data-wait share from its metrics log, then DR
inference images/s (batch 32, no grad).
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from drkit import log  # noqa: E402
from drkit.nets import create_model, pick_device  # noqa: E402
from drkit.stages import train_dr  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--sizes", default="112,224")
    a = ap.parse_args()
    log.set_verbosity(0)
    tmp = Path(tempfile.mkdtemp())
    res = {"device": str(pick_device()), "threads": torch.get_num_threads()}
    for size in map(int, a.sizes.split(",")):
        store = a.store
        if not store:
            from conftest import make_face_store
            rng = np.random.default_rng(0)
            vids = {f"v{i}": rng.integers(0, 255, (150, size, size, 3), dtype=np.uint8) for i in range(4)}
            store = str(make_face_store(tmp / f"s{size}.zarr", vids))
        out = tmp / f"run{size}"
        train_dr.run(train_dr.TrainDRConfig(stores=[store], out=str(out), T=5, stride=2, size=size,
                                            epochs=1000, time_budget=a.seconds, batch_size=16))
        recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        steps, secs = recs[-1]["step"], recs[-1]["seconds"]
        wait = float(np.average([r["data_wait_share"] for r in recs], weights=[max(r["batches_per_s"] or 0, 1e-9) for r in recs]))
        m = create_model("dr_unet").eval()
        x = torch.rand(32, 3, size, size)
        with torch.no_grad():
            m(x)
            t = time.perf_counter()
            for _ in range(3):
                m(x)
            inf = 3 * 32 / (time.perf_counter() - t)
        res[f"{size}px"] = {"train_windows_per_s": round(steps * 16 / secs, 1),
                            "data_wait_share": round(wait, 4), "dr_inference_images_per_s": round(inf, 1)}
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
