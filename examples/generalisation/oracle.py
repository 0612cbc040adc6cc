"""How well could any still-image DR rank a window? A diagnostic for the long-window gap (issue 21).

    python examples/generalisation/oracle.py --T 9 --stride 4 STORE... [--net-size 64] [--windows 3000]

Three "DRs" computed from the window itself rather than from a network, scored exactly as
rank-eval scores a DR (<d, V_a> over the window's frames, pairs ordered by distance to the centre):

- ``identity``: the centre frame minus its spatial mean (rank-eval's identity baseline);
- ``oracle_video_mean``: the centre frame minus the mean face of its whole video: what a still
  image's DR could reach if it knew the person's average face perfectly;
- ``oracle_window_mean``: the centre frame minus the mean of its own window (it sees the window:
  an upper bound no still image can have).

If a trained DR sits at ``oracle_video_mean``, removing the person's average face is all it has
learnt, and what a test-time RankSVM gains beyond it comes from the window's trajectory, which a
still image does not see. Prints one line: T, stride and the three accuracies in %.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from drkit.losses import pair_deltas, scores
from drkit.ranking import identity_dr
from drkit.store import open_store
from drkit.windows import FrameCache, collect_windows, iter_windows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stores", nargs="+")
    ap.add_argument("--T", type=int, required=True)
    ap.add_argument("--stride", type=int, required=True)
    ap.add_argument("--net-size", type=int, default=64)
    ap.add_argument("--windows", type=int, default=3000, help="about this many windows, evenly spread")
    a = ap.parse_args()
    T, n = a.T, a.net_size
    ws = collect_windows([open_store(p) for p in a.stores], T, a.stride)
    cache = FrameCache(ws.stores)
    vmean = {}
    for v, st in ws.stores.items():
        f = torch.from_numpy(st.video(v)["frames"][:].astype(np.float32).mean(0) / 255).permute(2, 0, 1)
        vmean[v] = F.interpolate(f[None], size=(n, n), mode="bilinear", antialias=True)[0]
    acc: dict[str, list[torch.Tensor]] = {"identity": [], "oracle_video_mean": [], "oracle_window_mean": []}
    order = np.arange(len(ws))[:: max(1, len(ws) // a.windows)]
    for idx, V in iter_windows(ws, cache, order, 64, n):
        c = V[:, T]
        vm = torch.stack([vmean[ws.videos[i]] for i in idx])
        for name, d in (("identity", identity_dr(c)), ("oracle_video_mean", c - vm),
                        ("oracle_window_mean", c - V.mean(1))):
            acc[name].append((pair_deltas(scores(d, V), T) > 0).float().mean(1))
    print(f"T={T} S={a.stride}", {k: round(100 * float(torch.cat(v).mean()), 1) for k, v in acc.items()})


if __name__ == "__main__":
    main()
