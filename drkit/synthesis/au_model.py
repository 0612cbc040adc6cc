"""The facial-action model of `drkit synth`.

- action units as events (onset, apex, offset of varied durations; symmetric or asymmetric
  ramps; intensity 0-5): AU01, AU02, AU04 (brows), AU06, AU10, AU12, AU14, AU17 (the FERA 2015
  set), AU25, AU26 (lips, jaw); AU06 joins half of the AU12 events (Duchenne smiles);
- each AU moves a set of landmarks by a fixed displacement per intensity unit, in units of the
  inter-ocular distance (``AU_MOVES``); displacements add up;
- blinks close the upper lids onto the lower ones.

Valence and arousal are documented functions of the AU state (``affect``) plus noise, in [-1, 1].
"""

from __future__ import annotations

import numpy as np

AUS = ("AU01", "AU02", "AU04", "AU06", "AU10", "AU12", "AU14", "AU17", "AU25", "AU26")
OUT, UP = "out", "up"
# AU -> list of (landmark indices, outward dx, dy) at intensity 5, in inter-ocular distances
# (dy < 0 is up; "outward" is away from the face's vertical midline).
AU_MOVES = {
    "AU01": [((20, 21, 22, 23), 0.0, -0.10), ((19, 24), 0.0, -0.07)],
    "AU02": [((17, 18, 25, 26), 0.0, -0.10), ((19, 24), 0.0, -0.05)],
    "AU04": [((17, 18, 19, 24, 25, 26), 0.0, 0.06), ((20, 21, 22, 23), -0.05, 0.07)],
    "AU06": [((40, 41, 46, 47), 0.0, -0.07), ((36, 45), 0.0, -0.035), ((1, 2, 14, 15), 0.0, -0.07),
             ((3, 13), 0.0, -0.04), ((31, 35), 0.01, -0.02), ((48, 54), 0.01, -0.02)],
    "AU10": [((50, 51, 52, 61, 62, 63), 0.0, -0.09), ((49, 53), 0.0, -0.05), ((31, 35), 0.01, -0.03),
             ((32, 33, 34), 0.0, -0.02)],
    "AU12": [((48, 54, 60, 64), 0.11, -0.09), ((49, 53, 59, 55), 0.05, -0.05), ((61, 63, 65, 67), 0.03, -0.03)],
    "AU14": [((48, 54, 60, 64), 0.07, 0.01), ((49, 53, 55, 59), 0.03, 0.0), ((50, 51, 52), 0.0, 0.015),
             ((56, 57, 58), 0.0, -0.015)],
    "AU17": [((56, 57, 58, 65, 66, 67), 0.0, -0.10), ((7, 8, 9), 0.0, -0.09), ((6, 10), 0.0, -0.05),
             ((55, 59), 0.0, -0.06), ((48, 54), 0.0, 0.02)],
    "AU25": [((65, 66, 67), 0.0, 0.06), ((61, 62, 63), 0.0, -0.01), ((56, 57, 58), 0.0, 0.035)],
    "AU26": [((6, 7, 8, 9, 10), 0.0, 0.12), ((5, 11), 0.0, 0.07), ((4, 12), 0.0, 0.03),
             ((55, 56, 57, 58, 59), 0.0, 0.14), ((65, 66, 67), 0.0, 0.15)],
}
UPPER_LIDS, LOWER_LIDS = (37, 38, 43, 44), (41, 40, 47, 46)


def affect(au: dict[str, np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Valence and arousal from the AU intensities (0-5), per frame:

        valence = tanh(0.30 AU12 + 0.15 AU06 - 0.25 AU04 - 0.15 AU17 - 0.10 AU10 + n_v)
        arousal = tanh(0.20 AU26 + 0.15 AU25 + 0.12 (AU01 + AU02) + 0.10 AU04 + 0.05 AU12 - 0.4 + n_a)

    with n_v, n_a slow (0.5 s smoothed) Gaussian noise of std 0.1."""
    n = len(next(iter(au.values())))
    k = np.ones(13) / 13
    nv = np.convolve(rng.standard_normal(n + 12), k, "valid") * 0.1 * np.sqrt(13)
    na = np.convolve(rng.standard_normal(n + 12), k, "valid") * 0.1 * np.sqrt(13)
    v = np.tanh(0.30 * au["AU12"] + 0.15 * au["AU06"] - 0.25 * au["AU04"] - 0.15 * au["AU17"]
                - 0.10 * au["AU10"] + nv)
    a = np.tanh(0.20 * au["AU26"] + 0.15 * au["AU25"] + 0.12 * (au["AU01"] + au["AU02"])
                + 0.10 * au["AU04"] + 0.05 * au["AU12"] - 0.4 + na)
    return v, a


def event_curve(n: int, fps: float, rng: np.random.Generator, rate: float) -> np.ndarray:
    """Intensity (0-5) of one AU over n frames: Poisson events with onset / apex / offset phases
    (0.15-1.2 s / 0.1-1.5 s / 0.2-1.6 s), smooth or linear ramps; overlapping events take the max."""
    out = np.zeros(n)
    t = rng.exponential(1 / rate) * fps * 0.5
    while t < n:
        on, ap, off = (rng.uniform(*r) * fps for r in ((0.15, 1.2), (0.1, 1.5), (0.2, 1.6)))
        peak = rng.uniform(1.0, 5.0)
        x = np.arange(n) - t
        rise = np.clip(x / on, 0, 1)
        fall = np.clip(1 - (x - on - ap) / off, 0, 1)
        shape = np.minimum(rise, fall) * (x >= 0)
        if rng.random() < 0.5:
            shape = shape * shape * (3 - 2 * shape)     # smoothstep: slow start and end
        out = np.maximum(out, peak * shape)
        t += on + ap + off + rng.exponential(1 / rate) * fps
    return out


def au_curves(n: int, fps: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    au = {a: event_curve(n, fps, rng, rate=rng.uniform(0.15, 0.35)) for a in AUS}
    duchenne = np.minimum(5, au["AU12"] * rng.uniform(0.5, 0.9)) * (rng.random() < 0.5)
    au["AU06"] = np.maximum(au["AU06"], duchenne)
    au["AU25"] = np.maximum(au["AU25"], 0.8 * au["AU26"])    # a dropped jaw parts the lips
    return au


def displaced(lm0: np.ndarray, au: dict[str, float], blink: float) -> np.ndarray:
    """Neutral landmarks (68, 2) -> landmarks with AU intensities and blink (0-1) applied."""
    lm = lm0.astype(np.float64).copy()
    iod = np.linalg.norm(lm0[36:42].mean(0) - lm0[42:48].mean(0))
    mid = lm0[27:31, 0].mean()
    for name, moves in AU_MOVES.items():
        k = au.get(name, 0.0) / 5.0
        if k <= 0:
            continue
        for idx, dx, dy in moves:
            idx = np.array(idx)
            side = np.sign(lm0[idx, 0] - mid)
            lm[idx, 0] += k * dx * iod * side
            lm[idx, 1] += k * dy * iod
    if blink > 0:
        for u, l in zip(UPPER_LIDS, LOWER_LIDS):
            lm[u] += blink * 0.9 * (lm[l] - lm[u])
    return lm
