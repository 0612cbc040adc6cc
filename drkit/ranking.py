"""Ranking evaluation (paper Sec. 4.3): how well a DR, or a baseline, ranks the frames of the
windows around its image. Used by `drkit train-dr` (validation) and `drkit rank-eval`.

For every frame with a full window of 2T+1 frames at stride S (scaled by fps), the DR of the
centre frame is projected on the window's frames, and accuracy is the share of same-side pairs
with delta_ab > 0, pooled overall, per side and per video. Baselines on the very same windows:

- ``identity``: d_t = I_t - mean(I_t); no training. A strong ranker on real faces: the closer a
  frame, the more it resembles I_t. A trained DR is useful only where it beats this.
- ``di``: the dynamic image of the window by approximate rank pooling (Bilen et al.),
  d = sum_t alpha_t V_t with alpha_t = sum_{j=t..N} (2j - N - 1) / j over the N = 2T+1 frames in
  time order. It sees the whole window (not a still-image method) and ranks forward in time, so
  it is expected to get the past side right and the future side wrong.
- ``ranksvm``: a linear RankSVM fitted at test time on each window. On raw pixels 2T+1 frames
  are always linearly separable, so fitting and scoring the same pairs gives 100% and bounds
  nothing. Ours is fitted on the centre and the frames at even offsets (|k| = 2, 4, ...) only,
  and scored on the same-side pairs that involve an odd-offset frame, which it never saw: an
  informative test-time upper bound on how well the window's own dynamics extrapolate to
  unseen frames. Its pair count therefore differs from the others'. (Pixels of the window,
  centred; pair differences scaled to unit mean norm; C = 1; needs T >= 2.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import get_args

import numpy as np
import torch

from . import log
from .batching import evenly_spread
from .contracts import Baseline
from .errors import DrkitError
from .losses import pair_deltas, pair_sides, same_side_pairs, scores
from .windows import FrameCache, collect_windows, iter_windows

BASELINES: tuple[str, ...] = get_args(Baseline)


def identity_dr(centre: torch.Tensor) -> torch.Tensor:
    return centre - centre.mean(dim=(1, 2, 3), keepdim=True)


def di_coefficients(N: int) -> torch.Tensor:
    """Approximate rank pooling weights alpha_1..alpha_N (they sum to zero)."""
    t = np.arange(1, N + 1)
    a = np.array([sum((2 * j - N - 1) / j for j in range(s, N + 1)) for s in t])
    return torch.tensor(a, dtype=torch.float32)


def di_dr(V: torch.Tensor) -> torch.Tensor:
    return torch.einsum("n,bnchw->bchw", di_coefficients(V.shape[1]).to(V), V)


def ranksvm_deltas(V: torch.Tensor, C: float = 1.0, iters: int = 300) -> torch.Tensor:
    """(B, N, ...) windows -> (B, P) deltas on held-out pairs, NaN on pairs it was fitted on."""
    B, N = V.shape[:2]
    T = (N - 1) // 2
    a, b = map(np.array, same_side_pairs(T))
    off = np.abs(np.arange(N) - T)
    train = (off[a] % 2 == 0) & (off[b] % 2 == 0)
    out = torch.full((B, len(a)), float("nan"), dtype=torch.float32)
    if not train.any() or train.all():
        return out
    X = V.reshape(B, N, -1).double()
    X = X - X.mean(1, keepdim=True)
    Z = X[:, a[train]] - X[:, b[train]]                          # (B, P_train, D)
    Z = Z / Z.norm(dim=2).mean(1).clamp_min(1e-12)[:, None, None]
    G = Z @ Z.transpose(1, 2)                                   # (B, P, P)
    lr = 1.0 / torch.linalg.eigvalsh(G)[:, -1].clamp_min(1e-12)
    alpha = torch.zeros(G.shape[:2], dtype=G.dtype)
    for _ in range(iters):   # projected gradient ascent on the SVM dual, 0 <= alpha <= C
        grad = 1 - (G @ alpha[..., None])[..., 0]
        alpha = (alpha + lr[:, None] * grad).clamp(0, C)
    w_scores = (alpha[:, None, :] @ (Z @ X.transpose(1, 2)))[:, 0]   # (B, N): <w, x_k>
    d = (w_scores[:, a] - w_scores[:, b]).float()
    out[:, ~train] = d[:, ~train]
    return out


class HeadOf(torch.nn.Module):
    """One head of a multi-scale DR network (`train-dr --heads`) as a 3-channel DR network."""

    def __init__(self, net: torch.nn.Module, k: int):
        super().__init__()
        self.net, self.k = net, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, 3 * self.k:3 * self.k + 3]


def head_for(net: torch.nn.Module, windows: list[tuple[int, int]], T: int, stride: int) -> torch.nn.Module:
    """The DR network to rank (T, stride) windows with: a single-head network itself, else the head
    trained on that window, or on the window of the nearest span T*stride."""
    if len(windows) == 1:
        return net
    k = min(range(len(windows)), key=lambda i: (windows[i] != (T, stride), abs(windows[i][0] * windows[i][1] - T * stride)))
    return HeadOf(net, k)


def method_deltas(method: str, V: torch.Tensor, model=None) -> torch.Tensor:
    """Deltas (B, P) of one method on windows V (B, 2T+1, 3, H, W); NaN = pair not scored. With
    a ``model``, the method is that DR network (whatever its name)."""
    T = (V.shape[1] - 1) // 2
    centre = V[:, T]
    if model is not None:
        return pair_deltas(scores(model(centre), V), T)
    if method == "identity":
        return pair_deltas(scores(identity_dr(centre), V), T)
    if method == "di":
        return pair_deltas(scores(di_dr(V), V), T)
    if method == "ranksvm":
        return ranksvm_deltas(V)
    raise DrkitError(f"unknown method {method!r}; baselines: {', '.join(BASELINES)}")


_WARNED_EMPTY: set = set()


def empty_reason(T: int, stride: int) -> str:
    """Why a (T, stride) cell can have no full window, for warnings."""
    n = 2 * T * stride + 1
    return (f"videos shorter than 2T*stride+1 = {n} frames at 25 fps (proportionally more at "
            "higher fps) with a face in each")


@dataclass
class Tally:
    """Correct / total pairs per video and side."""
    counts: dict = field(default_factory=dict)   # (video, side) -> [correct, total]

    def add(self, videos: list[str], deltas: torch.Tensor, sides: torch.Tensor) -> None:
        d = deltas.detach().cpu()
        scored, correct = ~torch.isnan(d), (d > 0)
        for i, v in enumerate(videos):
            for s in (0, 1):
                m = scored[i] & (sides == s)
                c = self.counts.setdefault((v, s), [0, 0])
                c[0] += int((correct[i] & m).sum())
                c[1] += int(m.sum())

    def summary(self) -> dict:
        """Accuracy and pair counts overall, per side and per video; NaN accuracy (0 pairs)
        where nothing was scored, e.g. when there was no full window."""
        def acc(c, n):
            return float(c / n) if n else float("nan")

        def total(cs) -> tuple[int, int]:
            cs = list(cs)
            return (int(sum(c[0] for c in cs)), int(sum(c[1] for c in cs)))
        tot = total(self.counts.values())
        side = {name: total(c for (v, s), c in self.counts.items() if s == k)
                for k, name in enumerate(("past", "future"))}
        vids = sorted({v for v, _ in self.counts})
        per_video = {v: total(self.counts.get((v, s), [0, 0]) for s in (0, 1)) for v in vids}
        return {"accuracy": acc(*tot), "pairs": tot[1],
                **{k: {"accuracy": acc(*c), "pairs": c[1]} for k, c in side.items()},
                "videos": {v: {"accuracy": acc(*c), "pairs": c[1]} for v, c in per_video.items()}}


def evaluate_windows(stores, T: int, stride: int, methods: list[str], model=None,
                     size: int | None = None, device=None, batch_size: int = 32, every: int = 1,
                     max_windows: int | None = None, progress=None,
                     warn_empty: bool = True) -> dict[str, dict]:
    """Rank accuracy of each method on all valid (T, stride) windows of ``stores``. ``model``:
    the DR network of method ``dr``, or {method name: DR network} for several. With no full
    window every method gets windows 0, pairs 0 and accuracy NaN (and, with ``warn_empty``, one
    warning per stores, T and stride)."""
    models = model if isinstance(model, dict) else {"dr": model}
    ws = collect_windows(stores, T, stride, every=every)
    if len(ws) == 0 and warn_empty:
        key = (tuple(str(st.path) for st in stores), T, stride)
        if key not in _WARNED_EMPTY:
            _WARNED_EMPTY.add(key)
            log.warn(f"{', '.join(key[0])}: no full window at T={T}, stride {stride} "
                     f"({empty_reason(T, stride)}); ranking accuracy there is undefined (NaN)")
    order = evenly_spread(len(ws), max_windows)
    cache = FrameCache(ws.stores, max_bytes=512 << 20)
    tallies = {m: Tally() for m in methods}
    sides = pair_sides(T)
    device = device or torch.device("cpu")
    task = progress.add_task(f"T={T} S={stride}", total=len(order)) if progress else None
    with torch.no_grad():
        for idx, V in iter_windows(ws, cache, order, batch_size, size):
            vids = [ws.videos[i] for i in idx]
            Vd = V.to(device) if any(m in models for m in methods) else V
            for m in methods:
                dl = method_deltas(m, Vd if m in models else V, models.get(m)).cpu()
                tallies[m].add(vids, dl, sides)
            if progress:
                progress.advance(task, len(idx))
    return {m: {"windows": len(order), **t.summary()} for m, t in tallies.items()}
