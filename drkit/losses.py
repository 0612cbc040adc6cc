"""The rank loss of Eq. 3 (paper Sec. 3.2), vectorised over a batch of windows.

Window index k = 0..2T holds frame t - T + k; the centre is k = T. Same-side pairs (a, b) with
a closer to the centre than b (the centre counts on both sides):

    past:   b = 0..T-1,  a = b+1..T
    future: a = T..2T-1, b = a+1..2T          (T(T+1) pairs in all)

Scaling (so theta and gamma do not depend on the crop size): frames V_a are images in [0, 1]
and the score is the Frobenius inner product divided by the number of values,
S_a = <d_t, V_a> / (C H W); the regulariser is gamma * mean(d_t^2). Pairs are summed as in
Eq. 3: L = gamma * mean(d^2) - eps + sum_pairs max(0, theta - (S_a - S_b)). V_a is the raw
image (the paper's choice); with a zero-mean d_t (DRNet default) the scores are unchanged by a
brightness offset of V_a.
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=None)
def same_side_pairs(T: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(a, b) index lists over a window of 2T+1 frames; a is the closer frame of each pair."""
    a, b = [], []
    for bb in range(T):                  # past side
        for aa in range(bb + 1, T + 1):
            a.append(aa), b.append(bb)
    for aa in range(T, 2 * T):           # future side
        for bb in range(aa + 1, 2 * T + 1):
            a.append(aa), b.append(bb)
    return tuple(a), tuple(b)


def pair_sides(T: int) -> torch.Tensor:
    """Per pair: 0 for the past side, 1 for the future side."""
    return torch.tensor([0] * (T * (T + 1) // 2) + [1] * (T * (T + 1) // 2))


def scores(d: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """d (B, C, H, W), V (B, N, C, H, W) -> (B, N) scores <d, V_a> / (C H W)."""
    return torch.einsum("bchw,bnchw->bn", d, V) / d[0].numel()


def pair_deltas(s: torch.Tensor, T: int) -> torch.Tensor:
    """(B, 2T+1) scores -> (B, P) delta_ab = S_a - S_b for every same-side pair."""
    a, b = same_side_pairs(T)
    return s[:, list(a)] - s[:, list(b)]


def rank_loss(d: torch.Tensor, V: torch.Tensor, theta: float = 1e-3, gamma: float = 1e-4,
              eps: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over the batch of Eq. 3; also returns the (B, P) deltas (for accuracy)."""
    T = (V.shape[1] - 1) // 2
    delta = pair_deltas(scores(d, V), T)
    loss = gamma * d.pow(2).mean(dim=(1, 2, 3)) - eps + torch.relu(theta - delta).sum(1)
    return loss.mean(), delta
