"""HG-HMR: AU intensity by heatmap regression with an hourglass network, after Sanchez-Lozano,
Tzimiropoulos and Valstar, "Joint action unit localisation and intensity estimation through
heatmap regression", BMVC 2018 (the paper's [36]; the AU network of Song et al.'s Table 1).

The idea of [36]: the network outputs one heatmap per AU; the training target of an AU is a 2D
Gaussian drawn at each facial point where that AU causes visible change, its amplitude the AU's
intensity (0 everywhere for intensity 0); the intensity is read back from the heatmap.

What drkit does (``drkit train-task --arch hg_hmr``):

- **Targets** (:func:`target_heatmaps`). For AU k with intensity y_k, the target heatmap is
  ``y_k * max_c g_c`` over the AU's centres c (table below), where g_c is a Gaussian of standard
  deviation ``sigma * side`` (``sigma``: a fraction of the heatmap side, default 0.06: 1.7 px of a
  28 px heatmap) centred on c and divided by its largest value on the pixel grid, so the heatmap's
  maximum is exactly y_k wherever c falls between pixels. A centre is the mean of one or more of
  the 68 landmarks (iBUG layout, 0-based), mapped from DR-map pixels to heatmap pixels with pixel
  centres aligned (``u = (x + 0.5) * side / map_size - 0.5``) and clipped into the heatmap. [36]
  also grows the Gaussian's size with the intensity; drkit keeps the size fixed, so that the
  amplitude alone carries the intensity. A missing label leaves its AU out of the loss (per
  sample and AU), as the masked MSE of the other architectures does.
- **Loss**: mean squared error between predicted and target heatmaps over the labelled (sample,
  AU) pairs, summed over the stacks (intermediate supervision, as in stacked hourglasses).
- **Decoding** (:func:`decode`): the intensity of an AU is the maximum of its predicted heatmap,
  floored at 0 (what the released code of [36] does, which also clips at 5; drkit leaves the top
  open so labels on another scale still work). So ``forward(x)`` returns (B, K) intensities and the
  generic train-task validation, eval-task, predict and the Predictor need no landmarks:
  landmarks are only needed to draw the training targets.
- **Network** (:class:`HourglassHMR`): a stem (7x7 conv, stride 2; a residual block; 2x2 max
  pool) brings the input to 1/4 of its side (``ceil(ceil(M / 2) / 2)``: 28 px for 112 px maps),
  then ``stacks`` hourglasses (Newell et al. 2016; [36] uses one, of depth 4, width 256, on 256 px
  crops) of ``depth`` poolings (default 3; none below 2x2) with residual blocks of ``width``
  channels (default 32), GroupNorm instead of BatchNorm (batch-size independent, like the other
  drkit networks).
  With width 32, one stack and depth 3 it has about 0.25 M parameters and trains on a CPU.

**AU -> landmark table** (``AU_CENTRES``; iBUG 68-point layout, 0-based; each centre is the mean
of the landmarks listed). Where each AU causes visible change follows the FACS descriptions
(Ekman, Friesen and Hager, *Facial Action Coding System*, 2002) and the regions of [36] (its
Fig. 1 for the FERA 2015 AUs: cheeks for AU06, upper lip for AU10, lip corners for AU12 and AU14,
chin for AU17); the landmark indices are drkit's choice, as [36] does not list them:

======  =====================  ===============================================  ==================
AU      FACS name              visible change                                   centres (landmarks)
======  =====================  ===============================================  ==================
AU01    inner brow raiser      inner brows raised                               21; 22
AU02    outer brow raiser      outer brows raised                               18; 25
AU04    brow lowerer           brows lowered and drawn together (glabella)      21+22 (midpoint)
AU06    cheek raiser           cheeks raised below the eyes (infraorbital)      1+31+41; 15+35+46
AU10    upper lip raiser       upper lip raised either side of the philtrum     50; 52
AU12    lip corner puller      lip corners pulled up and out                    48; 54
AU14    dimpler                lip corners tightened, dimples beside them       48; 54
AU17    chin raiser            chin boss pushed up below the lower lip          8+57 (midpoint)
AU25    lips part              lips parted (centre of the mouth)                62+66 (midpoint)
AU26    jaw drop               jaw lowered (chin)                               8
======  =====================  ===============================================  ==================

(``18; 25`` = two centres, one per side; ``1+31+41`` = one centre at the mean of those points.)
The table a model was trained with is stored in its bundle (model kwargs ``aus``, ``centres``).
Label columns may be spelt ``AU6``, ``AU06`` or ``au06``; other targets (valence, arousal, names
not in the table) cannot use hg_hmr.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from .errors import DrkitError

# AU -> centres; a centre is a tuple of landmark indices (iBUG 68, 0-based) whose mean it is.
AU_CENTRES: dict[str, list[tuple[int, ...]]] = {
    "AU01": [(21,), (22,)],
    "AU02": [(18,), (25,)],
    "AU04": [(21, 22)],
    "AU06": [(1, 31, 41), (15, 35, 46)],
    "AU10": [(50,), (52,)],
    "AU12": [(48,), (54,)],
    "AU14": [(48,), (54,)],
    "AU17": [(8, 57)],
    "AU25": [(62, 66)],
    "AU26": [(8,)],
}
DEFAULT_SIGMA = 0.06        # Gaussian std as a fraction of the heatmap side
_AU_NAME = re.compile(r"^au0*(\d+)$", re.IGNORECASE)


def canonical_au(name: str) -> str | None:
    """``AU6`` / ``au06`` / ``AU06`` -> ``AU06``; None if not an AU name."""
    m = _AU_NAME.match(name.strip())
    return f"AU{int(m.group(1)):02d}" if m else None


def au_centres(targets: list[str]) -> list[list[list[int]]]:
    """The centres (lists of landmark indices) of each target, in order; a DrkitError naming the
    targets hg_hmr cannot draw and the AUs it knows."""
    bad = [t for t in targets if canonical_au(t) not in AU_CENTRES]
    if bad:
        raise DrkitError(f"--arch hg_hmr draws heatmaps at the facial points of known AUs; no AU -> "
                         f"landmark entry for {', '.join(bad)} (known: {', '.join(AU_CENTRES)}); pick "
                         "columns with --targets or use --arch small / vgg16")
    return [[list(c) for c in AU_CENTRES[canonical_au(t)]] for t in targets]


def heatmap_side(map_size: int) -> int:
    """Side of the heatmaps of an HourglassHMR on maps of side ``map_size`` (1/4, rounded up)."""
    half = (map_size + 1) // 2          # the stride-2 conv
    return (half + 1) // 2              # the 2x2 max pool (ceil mode)


def target_heatmaps(landmarks: torch.Tensor, y: torch.Tensor, centres: list[list[list[int]]],
                    map_size: int, side: int, sigma: float = DEFAULT_SIGMA) -> torch.Tensor:
    """Target heatmaps (B, K, side, side) from landmarks (B, 68, 2) in DR-map pixels (x, y) and
    intensities ``y`` (B, K) (NaN, a missing label, draws nothing: it is masked in the loss).
    Heatmap k is ``y_k`` times the pixel-wise maximum over the AU's centres of a Gaussian
    normalised to peak exactly 1 on the grid."""
    lm = landmarks.float()
    B, K = y.shape
    grid = torch.arange(side, dtype=torch.float32, device=lm.device)
    s = max(float(sigma) * side, 1e-3)
    out = torch.zeros((B, K, side, side), dtype=torch.float32, device=lm.device)
    for k, cs in enumerate(centres):
        for c in cs:
            p = lm[:, c].mean(1)                                         # (B, 2) map pixels
            u = ((p + 0.5) * side / map_size - 0.5).clamp(0, side - 1)   # heatmap pixels
            gx = torch.exp(-(grid[None] - u[:, :1]) ** 2 / (2 * s * s))  # (B, side) along x
            gy = torch.exp(-(grid[None] - u[:, 1:]) ** 2 / (2 * s * s))  # along y
            g = gy[:, :, None] * gx[:, None, :]                          # (B, side_y, side_x)
            g = g / g.amax((1, 2), keepdim=True)
            out[:, k] = torch.maximum(out[:, k], g)
    amp = torch.nan_to_num(y.float(), nan=0.0).to(lm.device)
    return out * amp[:, :, None, None]


def decode(heatmaps: torch.Tensor) -> torch.Tensor:
    """Intensities (B, K): the maximum of each heatmap (B, K, h, w), floored at 0."""
    return heatmaps.amax((-2, -1)).clamp_min(0)


def heatmap_loss(preds: list[torch.Tensor], target: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error of heatmaps over the labelled (sample, AU) pairs (``y`` not NaN),
    summed over the stacks' predictions."""
    m = ~torch.isnan(y)
    if not m.any():
        return sum(p.sum() for p in preds) * 0
    return sum(((p - target) ** 2).mean((-2, -1))[m].mean() for p in preds)


# ------------------------------------------------------------------ the network

def _norm(ch: int) -> nn.Module:
    return nn.GroupNorm(min(8, ch), ch)


class _Res(nn.Module):
    """Residual block: 3x3 conv-norm-ReLU, 3x3 conv-norm, plus the input (1x1 conv if widths differ)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), _norm(cout), nn.ReLU(inplace=True),
                                  nn.Conv2d(cout, cout, 3, padding=1, bias=False), _norm(cout))
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


class _Hourglass(nn.Module):
    """One hourglass of ``depth`` poolings: at each level an upper branch at this resolution and a
    lower one (pool, blocks, the next level, upsample), added. Levels that would pool below 2x2
    are left out (small maps: an 8 px heatmap uses two levels of three)."""

    def __init__(self, depth: int, width: int):
        super().__init__()
        self.up = _Res(width, width)
        self.down = _Res(width, width)
        self.inner = _Hourglass(depth - 1, width) if depth > 1 else _Res(width, width)
        self.after = _Res(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < 4:   # no level below 2x2 (a 1x1 map carries no place, norms degenerate)
            return self.up(x)
        low = self.after(self.inner(self.down(F.max_pool2d(x, 2, ceil_mode=True))))
        return self.up(x) + F.interpolate(low, size=x.shape[-2:], mode="nearest")


class HourglassHMR(nn.Module):
    """Maps (B, in_ch, M, M) -> heatmaps (B, n_out, h, h), h = ceil(M / 4), one per AU; ``forward``
    returns the intensities decoded from the last stack's heatmaps (B, n_out).

    ``aus``, ``centres`` (the AU -> landmark table used, per output) and ``sigma`` (target
    Gaussian std, a fraction of the heatmap side) define the training targets; they are kept in
    the model's kwargs, so a bundle says how its heatmaps were made."""

    def __init__(self, in_ch: int = 3, n_out: int = 1, width: int = 32, stacks: int = 1, depth: int = 3,
                 sigma: float = DEFAULT_SIGMA, aus: list[str] | None = None,
                 centres: list[list[list[int]]] | None = None):
        super().__init__()
        if stacks < 1 or depth < 1 or width < 1:
            raise ValueError(f"stacks, depth and width must be >= 1 (found {stacks}, {depth}, {width})")
        if centres is not None and len(centres) != n_out:
            raise ValueError(f"{len(centres)} AU centre lists for {n_out} outputs")
        self.n_out, self.sigma = n_out, float(sigma)
        self.aus = list(aus) if aus is not None else None
        self.centres = centres
        self.stem = nn.Sequential(nn.Conv2d(in_ch, width, 7, stride=2, padding=3, bias=False), _norm(width),
                                  nn.ReLU(inplace=True), _Res(width, width), nn.MaxPool2d(2, ceil_mode=True),
                                  _Res(width, width))
        self.hgs = nn.ModuleList([_Hourglass(depth, width) for _ in range(stacks)])
        self.feats = nn.ModuleList([nn.Sequential(_Res(width, width), nn.Conv2d(width, width, 1, bias=False),
                                                  _norm(width), nn.ReLU(inplace=True)) for _ in range(stacks)])
        self.heads = nn.ModuleList([nn.Conv2d(width, n_out, 1) for _ in range(stacks)])
        self.merge_feat = nn.ModuleList([nn.Conv2d(width, width, 1) for _ in range(stacks - 1)])
        self.merge_hm = nn.ModuleList([nn.Conv2d(n_out, width, 1) for _ in range(stacks - 1)])
        for h in self.heads:
            nn.init.zeros_(h.bias)

    def heatmaps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The heatmaps of every stack, (B, n_out, h, h) each; the last is the prediction."""
        x = self.stem(x)
        out = []
        for i, (hg, feat, head) in enumerate(zip(self.hgs, self.feats, self.heads)):
            f = feat(hg(x))
            hm = head(f)
            out.append(hm)
            if i < len(self.hgs) - 1:
                x = x + self.merge_feat[i](f) + self.merge_hm[i](hm)
        return out

    def targets(self, landmarks: torch.Tensor, y: torch.Tensor, map_size: int) -> torch.Tensor:
        """Training targets for landmarks (B, 68, 2) in map pixels and intensities (B, n_out)."""
        if self.centres is None:
            raise ValueError("this HourglassHMR has no AU centres (kwarg centres)")
        return target_heatmaps(landmarks, y, self.centres, map_size, heatmap_side(map_size), self.sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return decode(self.heatmaps(x)[-1])
