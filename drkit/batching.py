"""Epoch order, batches and per-batch random numbers: one scheme for every training loop.

The order of an epoch is a function of (seed, epoch), and the random numbers of a batch
(augmentation) a function of (seed, epoch, batch), so a run resumed mid-epoch sees exactly the
batches and augmentations the uninterrupted run would have seen.

Under torchrun (drkit.distributed) every rank builds the same global batches and takes its
contiguous part (``part``); random numbers are always drawn for the whole global batch and then
sliced, so a sample gets the same augmentation whatever the number of ranks.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of ``range(n)`` fixed by (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def n_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size


def batches(order: np.ndarray, batch_size: int, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """(batch number, indices) for the batches of ``order`` from batch ``start`` on."""
    for b in range(start, n_batches(len(order), batch_size)):
        yield b, order[b * batch_size:(b + 1) * batch_size]


def part(n: int, rank: int = 0, world: int = 1) -> tuple[slice, float]:
    """The samples of a global batch of ``n`` that ``rank`` of ``world`` processes, as a slice
    (contiguous, part sizes differ by at most one, rank 0's part first) and its weight: its share
    of the batch, by which its mean loss is scaled so that the ranks' averaged gradient is the
    gradient of the whole batch's mean loss. A rank left with nothing (``n < world``) gets the
    batch's first sample with weight 0, so every rank runs the same steps."""
    if world <= 1:
        return slice(0, n), 1.0
    q, r = divmod(n, world)
    lo = rank * q + min(rank, r)
    hi = lo + q + (rank < r)
    if hi <= lo:
        return slice(0, 1), 0.0
    return slice(lo, hi), (hi - lo) / n


def batch_generator(seed: int, epoch: int, batch: int) -> torch.Generator:
    """A torch generator for the random numbers of one batch (augmentation)."""
    s = np.random.SeedSequence([seed, epoch, batch]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(s) & 0x7FFF_FFFF_FFFF_FFFF)


def flip_mask(n: int, g: torch.Generator) -> torch.Tensor:
    """Which of ``n`` samples to mirror: a random half, drawn from ``g``."""
    return torch.rand(n, generator=g) < 0.5


def random_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mirror (last axis) a random half of the batch (axis 0), in place; also returns ``x``."""
    f = flip_mask(x.shape[0], g)
    x[f] = x[f].flip(-1)
    return x


def images_to_tensor(a: np.ndarray) -> torch.Tensor:
    """uint8 images (..., H, W, 3) -> float tensor (..., 3, H, W) in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(a))
    return x.movedim(-1, -3).float().div_(255)


def evenly_spread(n: int, k: int | None) -> np.ndarray:
    """``range(n)``, or ``k`` indices spread evenly over it (deterministic subsample)."""
    idx = np.arange(n)
    if k and n > k:
        idx = idx[np.linspace(0, n - 1, k).round().astype(int)]
    return idx
