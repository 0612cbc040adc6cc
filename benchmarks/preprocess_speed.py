"""Preprocess throughput: tracked pipeline vs naive detect-every-frame, on the real face videos.

    python benchmarks/preprocess_speed.py [--faces ../shared/data/faces] [--limit N] [--size 224]

Runs `drkit preprocess` twice over the same videos (one process, one worker), into two
temporary stores, and reports frames/s for each, the speed-up, and how often the two agree on
the landmarks: a frame agrees when the mean landmark distance, in source pixels, is below 5% of
the inter-ocular distance (outer eye corners). Frames where only one pipeline found a face count
as disagreeing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from drkit.stages.preprocess import PreprocessConfig, run
from drkit.store import open_store


def source_landmarks(store_path: Path) -> dict[str, dict[int, np.ndarray]]:
    st = open_store(store_path)
    out = {}
    for v in st.videos:
        g = st.video(v)
        lm, M, idx = g["landmarks"][:], g["transform"][:], g["frame_index"][:]
        A, t = M[:, :, :2].astype(np.float64), M[:, :, 2].astype(np.float64)
        src = np.einsum("nij,npj->npi", np.linalg.inv(A), lm - t[:, None, :])
        out[v] = dict(zip(idx.tolist(), src))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", default=str(Path(__file__).resolve().parents[2] / "shared/data/faces"))
    ap.add_argument("--limit", type=int, default=0, help="use only the first N videos")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--json", help="write the numbers here too")
    a = ap.parse_args()
    vids = sorted(p for p in Path(a.faces).rglob("*")
                  if p.suffix.lower() in (".mp4", ".mov", ".avi"))
    if a.limit:
        vids = vids[:a.limit]
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        stores = {}
        for mode in ("tracked", "naive"):
            out = Path(tmp) / f"{mode}.zarr"
            t0 = time.perf_counter()
            s = run(PreprocessConfig(inputs=[str(v) for v in vids], out=str(out), size=a.size,
                                     naive=mode == "naive"))
            dt = time.perf_counter() - t0
            n_src = sum(open_store(out).video_info(v)["n_source_frames"] for v in s.ok)
            res[mode] = {"seconds": round(dt, 2), "source_frames": n_src, "face_frames": s.frames,
                         "fps": round(n_src / dt, 1)}
            stores[mode] = source_landmarks(out)
        agree = total = both = 0
        for v, naive in stores["naive"].items():
            tracked = stores["tracked"].get(v, {})
            for k in set(naive) | set(tracked):
                total += 1
                if k in naive and k in tracked:
                    both += 1
                    ref = naive[k]
                    iod = np.linalg.norm(ref[36] - ref[45])
                    agree += np.linalg.norm(tracked[k] - ref, axis=1).mean() < 0.05 * iod
    res["videos"] = len(vids)
    res["speedup"] = round(res["tracked"]["fps"] / res["naive"]["fps"], 2)
    res["same_landmarks_pct"] = round(100 * agree / max(total, 1), 2)
    res["both_found_pct"] = round(100 * both / max(total, 1), 2)
    print(json.dumps(res, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
