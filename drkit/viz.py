"""Pictures of what drkit computes, drawn with OpenCV so they are fast enough for every frame of
a video: DR maps on a diverging colour scale with a labelled colour bar, the face crop beside
them, landmarks on the frame, AU intensity bars; and the per-video AU plot (matplotlib).

Used by `drkit predict --save-dr / --video-out / --plot`, `drkit inspect` on a DR store and
`drkit demo`. A DR has 3 channels like an image; a map shows their mean at each pixel (what the
score <d, V_a> weighs a brightness change there by): red where the frames nearer in time are
brighter than the ones further away, blue where they are darker, white 0, on a scale symmetric
about 0 whose limit the colour bar prints.
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (90, 90, 90)


def diverging_lut() -> np.ndarray:
    """(256, 3) uint8 BGR: dark blue -> white -> dark red (a ColorBrewer RdBu-like ramp)."""
    stops = np.array([[0.02, 0.19, 0.38], [0.26, 0.58, 0.76], [0.97, 0.97, 0.97],
                      [0.84, 0.38, 0.30], [0.40, 0.00, 0.12]])   # RGB, blue to red
    x = np.linspace(0, 1, 256)
    rgb = np.stack([np.interp(x, np.linspace(0, 1, len(stops)), stops[:, c]) for c in range(3)], 1)
    return (255 * rgb[:, ::-1]).round().astype(np.uint8)


_LUT = diverging_lut()


def dr_groups(channel_names: list[str]) -> list[tuple[str, list[int]]]:
    """(label, channel indices) of each DR of a stack: ``dr0_T5_S2_r/g/b`` -> ("DR T=5 S=2", [3, 4, 5])."""
    groups: dict[str, list[int]] = {}
    for i, n in enumerate(channel_names):
        if n.startswith("dr"):
            groups.setdefault(n.rsplit("_", 1)[0], []).append(i)
    out = []
    for key, idx in groups.items():
        m = re.match(r"dr\d+_T(\d+)_S(\d+)", key)
        out.append((f"DR T={m[1]} S={m[2]}" if m else key, idx))
    return out


def dr_mean_maps(mdr: np.ndarray, channel_names: list[str]) -> list[tuple[str, np.ndarray]]:
    """(label, (H, W) float32 map: mean of the DR's channels) for each DR of an MDR stack (C, H, W)."""
    return [(label, np.asarray(mdr[idx], np.float32).mean(0)) for label, idx in dr_groups(channel_names)]


def map_limit(maps: list[np.ndarray] | np.ndarray) -> float:
    """A symmetric colour-scale limit: the 99th percentile of |values| (never 0)."""
    a = np.abs(np.concatenate([np.ravel(m) for m in maps])) if isinstance(maps, list) else np.abs(maps)
    return float(max(np.percentile(a, 99), 1e-6))


def colour_map(m: np.ndarray, limit: float, side: int) -> np.ndarray:
    """(H, W) values -> (side, side, 3) BGR on the diverging scale [-limit, limit]."""
    idx = np.clip((m / limit + 1) * 127.5, 0, 255).astype(np.uint8)
    img = _LUT[idx]
    return cv2.resize(img, (side, side), interpolation=cv2.INTER_NEAREST if side >= m.shape[0] else cv2.INTER_AREA)


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.42, colour=WHITE, thick: int = 1) -> None:
    cv2.putText(img, text, org, FONT, scale, BLACK, thick + 2, cv2.LINE_AA)
    cv2.putText(img, text, org, FONT, scale, colour, thick, cv2.LINE_AA)


def colour_bar(height: int, limit: float, width: int = 64) -> np.ndarray:
    """A vertical colour bar (BGR) labelled +limit, 0, -limit."""
    bar = np.full((height, width, 3), 255, np.uint8)
    ramp = _LUT[np.linspace(255, 0, height - 24).astype(np.uint8)]
    bar[12:height - 12, 4:18] = ramp[:, None, :]
    for y, t in ((16, f"+{limit:.2g}"), (height // 2 + 4, "0"), (height - 10, f"-{limit:.2g}")):
        cv2.putText(bar, t, (21, y), FONT, 0.36, BLACK, 1, cv2.LINE_AA)
    return bar


def dr_panel(crop_rgb: np.ndarray | None, mdr: np.ndarray, channel_names: list[str], side: int = 192,
             limits: list[float] | None = None, caption: str | None = None) -> np.ndarray:
    """The face crop (RGB) beside each DR's mean map on the diverging scale, each tile labelled,
    one colour bar per DR; BGR uint8. ``limits``: one colour-scale limit per DR (default: each
    map's own 99th percentile of |values|)."""
    tiles = []
    if crop_rgb is not None:
        c = cv2.resize(cv2.cvtColor(np.ascontiguousarray(crop_rgb), cv2.COLOR_RGB2BGR), (side, side))
        _text(c, "face", (6, 16))
        tiles.append(c)
    maps = dr_mean_maps(mdr, channel_names)
    for k, (label, m) in enumerate(maps):
        lim = limits[k] if limits else map_limit(m)
        t = colour_map(m, lim, side)
        _text(t, label, (6, 16))
        tiles.append(np.hstack([t, colour_bar(side, lim)]))
    out = np.hstack(tiles) if tiles else np.zeros((side, side, 3), np.uint8)
    if caption:
        band = np.full((22, out.shape[1], 3), 255, np.uint8)
        cv2.putText(band, caption, (6, 16), FONT, 0.45, BLACK, 1, cv2.LINE_AA)
        out = np.vstack([out, band])
    return out


def au_bars(values: np.ndarray | None, targets: list[str], height: int, width: int = 220,
            value_range: tuple[float, float] = (0.0, 5.0)) -> np.ndarray:
    """Horizontal bars, one per target, on a white panel (BGR); no values: an empty panel saying so."""
    img = np.full((height, width, 3), 255, np.uint8)
    lo, hi = value_range
    if values is None:
        cv2.putText(img, "no face", (10, 24), FONT, 0.5, (0, 0, 200), 1, cv2.LINE_AA)
        return img
    n = len(targets)
    row = max(8, min(22, (height - 20) // max(n, 1)))
    x0, x1 = 52, width - 40
    cv2.putText(img, f"{lo:g}", (x0 - 3, 12), FONT, 0.33, GREY, 1, cv2.LINE_AA)
    cv2.putText(img, f"{hi:g}", (x1 - 6, 12), FONT, 0.33, GREY, 1, cv2.LINE_AA)
    for j, (t, v) in enumerate(zip(targets, values)):
        y = 18 + j * row
        frac = float(np.clip((v - lo) / (hi - lo), 0, 1)) if hi > lo else 0.0
        cv2.putText(img, t, (4, y + row - 6), FONT, 0.36, BLACK, 1, cv2.LINE_AA)
        cv2.rectangle(img, (x0, y + 2), (x1, y + row - 3), (225, 225, 225), -1)
        cv2.rectangle(img, (x0, y + 2), (x0 + int(frac * (x1 - x0)), y + row - 3), (40, 120, 230), -1)
        cv2.putText(img, f"{v:.1f}", (x1 + 4, y + row - 6), FONT, 0.34, BLACK, 1, cv2.LINE_AA)
    return img


def draw_landmarks(bgr: np.ndarray, landmarks: np.ndarray, colour=(0, 255, 0)) -> np.ndarray:
    """A copy of ``bgr`` with the 68 landmarks drawn (radius scaled with the face)."""
    out = bgr.copy()
    lm = np.asarray(landmarks, np.float32)
    r = max(1, int(round(np.sqrt(((lm - lm.mean(0)) ** 2).sum(1).mean()) / 40)))
    for x, y in lm:
        cv2.circle(out, (int(round(x)), int(round(y))), r, colour, -1, cv2.LINE_AA)
    return out


def video_frame(bgr: np.ndarray, landmarks: np.ndarray | None, crop_rgb: np.ndarray | None,
                mdr: np.ndarray | None, channel_names: list[str], values: np.ndarray | None,
                targets: list[str], limits: list[float] | None, caption: str, height: int = 288,
                value_range: tuple[float, float] = (0.0, 5.0)) -> np.ndarray:
    """One frame of `predict --video-out`: the frame with its landmarks, the DR maps beside it with
    their colour bars, and the AU bars; BGR, ``height`` rows (the width follows from the layout)."""
    h, w = bgr.shape[:2]
    f = height / h
    frame = cv2.resize(bgr if landmarks is None else draw_landmarks(bgr, landmarks), (max(1, round(w * f)), height))
    _text(frame, caption, (6, height - 8))
    n_dr = len(dr_groups(channel_names))
    if mdr is not None and n_dr:
        side = height
        maps = dr_panel(None, mdr, channel_names, side=side, limits=limits)
    else:
        maps = np.full((height, (height + 64) * n_dr if n_dr else 0, 3), 255, np.uint8)
        if n_dr:
            cv2.putText(maps, "no face", (10, 24), FONT, 0.5, (0, 0, 200), 1, cv2.LINE_AA)
    parts = [frame] + ([maps] if maps.shape[1] else []) + [au_bars(values, targets, height, value_range=value_range)]
    return np.hstack(parts)


def plot_series(times: np.ndarray, values: np.ndarray, targets: list[str], path: str | Path, title: str,
                value_range: tuple[float, float] | None = (0.0, 5.0), xlabel: str = "time (s)") -> Path:
    """One labelled panel per target, intensity over time (NaN where no face: gaps in the line);
    written atomically as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .fsutil import atomic_path
    k = len(targets)
    cols = 1 if k <= 6 else 2
    rows = -(-k // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 1.15 * rows + 0.9), sharex=True, squeeze=False)
    for j, ax in enumerate(axes.T.ravel()):
        if j >= k:
            ax.axis("off")
            continue
        ax.plot(times, values[:, j], lw=0.9, color="tab:blue")
        if value_range:
            ax.set_ylim(value_range[0] - 0.1, value_range[1] + 0.1)
        ax.set_ylabel(targets[j], rotation=0, ha="right", va="center", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel(xlabel, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
