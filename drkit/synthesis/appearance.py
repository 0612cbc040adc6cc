"""AU-dependent appearance for `drkit synth`: what the landmark warp cannot show, drawn onto the
warped face of each frame, scaled by the AU intensities (0-5) and placed by the frame's landmarks.

- AU01 / AU02: horizontal forehead wrinkles above the brows (AU01 in the middle, AU02 at the sides);
- AU04: vertical furrows between the inner brow ends (21, 22), a crease at the nose root, and a
  shadow over brows and upper lids;
- AU06: crow's feet fanning out of the outer eye corners (36, 45), a crease under the lower lid and
  a brighter raised cheek below each eye;
- AU10 / AU12 / AU14: nasolabial folds from beside the nose wings (31, 35) round to beyond the
  mouth corners (48, 54), deeper with intensity (AU10 mostly their upper part); AU12 lights the
  cheek above them and, for people who have them, makes dimples; AU14 creases the mouth corners;
- AU17: a deeper crease under the lower lip and a bulging, dimpled chin boss below 57;
- lips apart (the inner-lip polygon 60-67 opens more than in the neutral face: AU25, AU26, AU10,
  or a wide smile that AU12 > 2 parts by a slit): off-white upper teeth under the upper lip, lower
  teeth once the jaw drops (AU26), and a dark mouth cavity in the rest of the opening; teeth and
  cavity take their colour from the skin's (the frame's lighting).

Wrinkles are dark strokes with a faint highlight beside them, shading is broad soft ellipses;
both are blurred (no hard edges) and multiply the skin, so they follow its colour and lighting.
Sizes are in units of the inter-ocular distance (IOD, between the eye centres).

Each identity has its own `IdentityParams` (`draw_identity_params`): how deeply it wrinkles
(overall and per region), its wrinkle pattern (number, spacing, waviness of forehead lines and
furrows, crow's-feet rays, dimples, chin dimpling, teeth tint) and its resting offsets in AU space
(``rest``, the face's morphology: a resting smile, lowered brows, deep nasolabial folds ...) that
`render` adds to the labelled intensities for geometry and appearance, never to the labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

# Resting offsets: AU -> probability that a person's neutral face has some of it (its size is
# uniform in [0.3, 1] x --morphology). No AU26: a dropped jaw is not a resting face.
REST_P = {"AU01": 0.2, "AU02": 0.2, "AU04": 0.35, "AU06": 0.3, "AU10": 0.3, "AU12": 0.45,
          "AU14": 0.35, "AU17": 0.3, "AU25": 0.25}
REGIONS = ("forehead", "glabella", "eyes", "nasolabial", "chin")
_TEETH_OVER_SKIN = np.array([1.45, 1.4, 1.15])          # BGR reflectance of teeth / of skin
_CAVITY_OVER_SKIN = np.array([0.27, 0.25, 0.36])           # the dark, reddish mouth cavity
_SUB = 16                      # sub-pixel drawing: coordinates are scaled by 2**4 (shift=4)


@dataclass
class IdentityParams:
    """One person's skin and morphology (see the module docstring). ``IdentityParams()`` is an
    average person with no resting offsets."""
    rest: dict[str, float] = field(default_factory=dict)          # resting AU offsets (0-5)
    depth: float = 1.0                                            # wrinkle depth / skin contrast
    region: dict[str, float] = field(default_factory=lambda: dict.fromkeys(REGIONS, 1.0))
    n_forehead: int = 3                 # forehead lines
    forehead_gap: float = 0.11          # their spacing (IOD)
    forehead_wave: tuple = ((0.012, 5.0, 0.0), (0.01, 6.0, 1.0), (0.014, 4.0, 2.0), (0.01, 7.0, 3.0))
    n_furrows: int = 2                  # vertical lines between the brows
    furrow_spread: float = 0.07         # their half-distance (IOD)
    crow: tuple = ((-30.0, 0.22), (0.0, 0.25), (30.0, 0.2))       # crow's-feet rays: angle (deg), length
    dimple: float = 0.0                 # dimple strength (0: none)
    chin_dots: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))   # chin dimpling, unit disc
    teeth: tuple = (0.92, 0.97, 1.0)    # BGR tint of the teeth

    def to_json(self) -> dict:
        return {"rest": {a: round(v, 3) for a, v in self.rest.items()}, "wrinkle_depth": round(self.depth, 3),
                "region_depth": {k: round(v, 3) for k, v in self.region.items()},
                "dimples": self.dimple > 0}


def draw_identity_params(rng: np.random.Generator, morphology: float = 0.0) -> IdentityParams:
    """One person's parameters. Draws the same random numbers whatever ``morphology`` (the largest
    resting intensity; 0: none), so that only the resting offsets depend on it."""
    u = rng.random(len(REST_P))
    size = rng.uniform(0.3, 1.0, len(REST_P))
    has = u < np.array(list(REST_P.values()))
    if not has.any():
        has[np.argmin(u / np.array(list(REST_P.values())))] = True
    rest = {a: float(morphology * s) for a, s, h in zip(REST_P, size, has) if h and morphology > 0}
    depth = float(np.clip(np.exp(rng.normal(0, 0.3)), 0.5, 1.6))
    region = {k: float(np.clip(np.exp(rng.normal(0, 0.2)), 0.7, 1.4)) for k in REGIONS}
    n_crow = int(rng.integers(2, 5))
    spread = rng.uniform(25, 40)
    crow = tuple((float(a + rng.normal(0, 4)), float(rng.uniform(0.18, 0.28)))
                 for a in np.linspace(-spread, spread, n_crow))
    wave = tuple((float(rng.uniform(0.005, 0.018)), float(rng.uniform(3, 8)), float(rng.uniform(0, 2 * np.pi)))
                 for _ in range(4))
    n_dots = int(rng.integers(10, 22))
    r, ang = np.sqrt(rng.random(n_dots)), rng.uniform(0, 2 * np.pi, n_dots)
    return IdentityParams(
        rest=rest, depth=depth, region=region, n_forehead=int(rng.integers(2, 5)),
        forehead_gap=float(rng.uniform(0.09, 0.14)), forehead_wave=wave, n_furrows=int(rng.integers(1, 4)),
        furrow_spread=float(rng.uniform(0.05, 0.09)), crow=crow,
        dimple=float(rng.uniform(0.6, 1.2)) if rng.random() < 0.4 else 0.0,
        chin_dots=np.stack([r * np.cos(ang), r * np.sin(ang)], 1),
        teeth=(float(rng.uniform(0.88, 0.96)), float(rng.uniform(0.94, 0.99)), 1.0))


def _smooth(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


class _Canvas:
    """Shading maps over a region of the frame, in face coordinates: (u, v) in IOD from the
    midpoint of the eyes, u towards the image's right eye, v down."""

    def __init__(self, lm: np.ndarray, shape: tuple[int, int]):
        le, re = lm[36:42].mean(0), lm[42:48].mean(0)
        self.iod = float(np.linalg.norm(re - le))
        self.ex = (re - le) / self.iod
        self.ey = np.array([-self.ex[1], self.ex[0]])
        self.o = (le + re) / 2
        self.L = (lm - self.o) @ np.stack([self.ex, self.ey]).T / self.iod      # landmarks, face coords
        H, W = shape
        pad = 0.35 * self.iod
        x0, y0 = lm.min(0) - pad
        x1, y1 = lm.max(0) + pad
        y0 -= 0.7 * self.iod                                      # the forehead
        self.x0, self.y0 = int(max(0, np.floor(x0))), int(max(0, np.floor(y0)))
        self.x1, self.y1 = int(min(W, np.ceil(x1))), int(min(H, np.ceil(y1)))
        h, w = max(1, self.y1 - self.y0), max(1, self.x1 - self.x0)
        self.fine = np.zeros((h, w), np.float32)                  # wrinkles (thin, slightly blurred)
        self.broad = np.zeros((h, w), np.float32)                 # shading (wide blur)
        self.thick = max(1, int(round(0.04 * self.iod)))

    def px(self, uv) -> np.ndarray:
        """Face coordinates -> integer sub-pixel coordinates in the region."""
        uv = np.asarray(uv, np.float64)
        p = self.o + self.iod * (uv[..., :1] * self.ex + uv[..., 1:] * self.ey) - [self.x0, self.y0]
        return np.round(p * _SUB).astype(np.int32)

    def stroke(self, uv: np.ndarray, w: np.ndarray | float, highlight: tuple[float, float] | None = None):
        """A wrinkle along the polyline ``uv`` (k, 2) with darkening ``w`` per segment (or one
        value); ``highlight`` (du, dv): a ridge beside it at that offset, 30% as strong."""
        w = np.minimum(np.broadcast_to(np.asarray(w, np.float64), (len(uv) - 1,)), 0.35)   # lines, not patches
        if w.max() <= 1e-3:
            return
        if highlight is not None:
            self._segments(self.px(uv + highlight), 0.3 * w)
        self._segments(self.px(uv), -w)

    def _segments(self, p: np.ndarray, w: np.ndarray):
        p, w = [tuple(q) for q in p.tolist()], w.tolist()
        for k in range(len(p) - 1):
            if abs(w[k]) > 1e-3:
                cv2.line(self.fine, p[k], p[k + 1], w[k], self.thick, cv2.LINE_8, shift=4)

    def dots(self, uv: np.ndarray, value: float):
        """Single-pixel marks (the blur makes soft spots of them)."""
        x, y = (self.px(uv) // _SUB).T
        ok = (x >= 0) & (y >= 0) & (x < self.fine.shape[1]) & (y < self.fine.shape[0])
        self.fine[y[ok], x[ok]] += value

    def ellipse(self, target: str, c, axes, value: float):
        """A filled ellipse on the ``fine`` or ``broad`` map, axes (IOD) along the face's axes."""
        if abs(value) <= 1e-4:
            return
        ax = (int(axes[0] * self.iod * _SUB), int(axes[1] * self.iod * _SUB))
        ang = np.degrees(np.arctan2(self.ex[1], self.ex[0]))
        cv2.ellipse(getattr(self, target), tuple(map(int, self.px(c))), ax, ang, 0, 360, float(value), -1,
                    cv2.LINE_8, shift=4)

    def shade(self, img: np.ndarray) -> None:
        """Multiply the region of ``img`` (float32, in place) by 1 + the blurred maps."""
        if not (self.fine.any() or self.broad.any()):
            return
        m = cv2.GaussianBlur(self.fine, (0, 0), max(0.5, 0.032 * self.iod))
        m = 0.4 * np.tanh(m / 0.4)                                # deep lines darken, never blacken
        if self.broad.any():
            m += cv2.GaussianBlur(self.broad, (0, 0), 0.12 * self.iod)
        img[self.y0:self.y1, self.x0:self.x1] *= np.clip(1 + m, 0.3, 1.6)[..., None]


def _bezier(a, c, b, n: int = 10) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * a + 2 * t * (1 - t) * c + t ** 2 * b


def _forehead(cv: _Canvas, I1: float, I2: float, p: IdentityParams) -> None:
    if I1 + I2 <= 0.02:
        return
    L = cv.L
    brows = L[17:27]
    fit = np.polyfit(brows[:, 0], brows[:, 1], 2)
    u = np.linspace(brows[:, 0].min() - 0.08, brows[:, 0].max() + 0.08, 17)
    top = np.polyval(fit, u)
    base = top.min() + 0.6 * (top - top.min())                    # flatter than the brow arch
    um = u[:-1] + np.diff(u) / 2
    k = 0.11 * p.depth * p.region["forehead"]
    half = 0.5 * (u[-1] - u[0])
    taper = _smooth((half - np.abs(um - um.mean())) / 0.25)
    for j in range(p.n_forehead):
        amp, freq, ph = p.forehead_wave[j % len(p.forehead_wave)]
        v = base - 0.14 - j * p.forehead_gap + amp * np.sin(freq * u + ph + j)
        mid = I1 * np.exp(-(um / 0.42) ** 2)
        side = I2 * np.exp(-((np.abs(um) - 0.6) / 0.3) ** 2)
        breaks = 0.55 + 0.45 * np.cos(freq * 1.7 * um + 2 * ph + j)      # lines fade in and out
        cv.stroke(np.stack([u, v], 1), k * (mid + side) * taper * breaks * 0.85 ** j, (0.0, -0.045))


def _glabella(cv: _Canvas, I4: float, p: IdentityParams) -> None:
    if I4 <= 0.02:
        return
    L = cv.L
    m = (L[21] + L[22]) / 2
    k = 0.05 * I4 * p.depth * p.region["glabella"]
    offs = {1: [0.0], 2: [-1.0, 1.0], 3: [-1.5, 0.0, 1.5]}[p.n_furrows]
    for j, o in enumerate(offs):
        x = m[0] + o * p.furrow_spread
        a = np.array([x - 0.01 * o, m[1] - 0.16])
        b = np.array([x + 0.02 * o, m[1] + 0.14])
        c = (a + b) / 2 + [0.025 * (o if o else 1), 0]
        s = _bezier(a, c, b, 8)
        w = k * np.sin(np.linspace(0.25, np.pi - 0.25, 7)) ** 1.2 * (1.0 if o or len(offs) == 1 else 0.6)
        cv.stroke(s, w, (0.045 * (np.sign(o) or 1.0), 0.0))
    nose = (L[27] + m) / 2                                       # procerus line at the nose root
    cv.stroke(np.array([[nose[0] - 0.1, nose[1] + 0.01], [nose[0], nose[1] - 0.01], [nose[0] + 0.1, nose[1] + 0.01]]),
              0.45 * k, (0.0, 0.04))
    for br, eye in ((L[17:22], L[36:42]), (L[22:27], L[42:48])):   # shadow of the lowered brows
        cv.ellipse("broad", 0.6 * br.mean(0) + 0.4 * eye.mean(0), (0.33, 0.12), -0.022 * I4 * np.sqrt(p.depth))
    cv.ellipse("broad", m + [0, 0.02], (0.12, 0.1), -0.015 * I4)


def _eyes(cv: _Canvas, I6: float, p: IdentityParams) -> None:
    if I6 <= 0.02:
        return
    L = cv.L
    k = 0.08 * I6 * p.depth * p.region["eyes"]
    for s, corner, lid, eye in ((-1, L[36], L[[36, 41, 40, 39]], L[36:42]), (1, L[45], L[[45, 46, 47, 42]], L[42:48])):
        start = corner + [s * 0.05, 0.0]
        for ang, length in p.crow:
            a = np.radians(ang)
            d = np.array([s * np.cos(a), np.sin(a)])
            pts = start + np.linspace(0.03, length, 5)[:, None] * d + np.array([[0, 0], [0, 0.01], [0, 0.02], [0, 0.027], [0, 0.03]])
            cv.stroke(pts, k * np.array([0.7, 1.0, 0.8, 0.45]), (0.0, -0.04))
        lc = lid.mean(0)
        crease = lc + (lid - lc) * [1.1, 1.0] + [0.0, 0.1]
        cv.stroke(crease, 0.45 * k * np.array([0.5, 1.0, 0.7]), (0.0, 0.04))
        bulge = eye.mean(0) + [s * 0.08, 0.42]
        cv.ellipse("broad", bulge, (0.34, 0.2), 0.018 * I6 * np.sqrt(p.depth))
        cv.ellipse("broad", bulge + [s * 0.03, 0.22], (0.26, 0.06), -0.012 * I6)


def _mouth_folds(cv: _Canvas, I10: float, I12: float, I14: float, p: IdentityParams) -> None:
    if I10 + I12 + I14 <= 0.02:
        return
    L = cv.L
    k = 0.08 * p.depth * p.region["nasolabial"]
    for s, wing, corner in ((-1, L[31], L[48]), (1, L[35], L[54])):
        a = wing + [s * 0.13, -0.13]                              # beside the top of the nose wing
        b = corner + [s * (0.12 + 0.03 * I12 / 5), 0.15]          # beyond and below the mouth corner
        c = (a + b) / 2 + [s * (0.1 + 0.05 * I12 / 5), -0.06]     # bowed out: the cheek bulges over it
        pts = _bezier(a, c, b, 9)
        t = np.linspace(0, 1, 8) + 1 / 16
        taper = np.sin(np.pi * np.clip(0.05 + 0.8 * t, 0, 1)) ** 0.8
        w = k * taper * (1.0 * I12 + 0.75 * I14 + 0.9 * I10 * (1.2 - 0.7 * t))
        cv.stroke(pts, w, (s * 0.05, -0.02))
        cv.ellipse("broad", (a + c) / 2 + [s * 0.12, -0.02], (0.2, 0.14), 0.02 * I12 + 0.008 * I10)
        if I14 > 0.02:                                            # AU14: creased mouth corners
            cc = _bezier(corner + [s * 0.05, -0.07], corner + [s * 0.1, 0.0], corner + [s * 0.06, 0.08], 5)
            cv.stroke(cc, 0.06 * I14 * p.depth * p.region["nasolabial"] * np.array([0.6, 1.0, 1.0, 0.6]), (s * 0.035, 0))
        if p.dimple > 0 and I12 > 0.02:
            cv.ellipse("fine", corner + [s * 0.14, 0.02], (0.03, 0.045), -0.055 * p.dimple * I12 * p.depth)


def _chin(cv: _Canvas, I17: float, p: IdentityParams) -> None:
    if I17 <= 0.02:
        return
    L = cv.L
    k = 0.08 * I17 * p.depth * p.region["chin"]
    lip = L[[59, 58, 57, 56, 55]]
    crease = lip + [0.0, 0.09] + np.array([[0, -0.03], [0, 0.0], [0, 0.01], [0, 0.0], [0, -0.03]])
    cv.stroke(crease, k * np.array([0.5, 1.0, 1.0, 0.5]), (0.0, 0.04))
    c = 0.4 * L[57] + 0.6 * L[8]
    cv.ellipse("broad", c, (0.26, 0.15), 0.022 * I17 * np.sqrt(p.depth))
    cv.dots(c + p.chin_dots * [0.18, 0.09], -1.2 * k)              # the chin boss dimples ("orange peel")


def _skin_colour(img: np.ndarray, cv: _Canvas) -> np.ndarray:
    """Mean BGR of the nose bridge and both cheeks: the skin under this frame's lighting."""
    vals = []
    for uv in (cv.L[29], (cv.L[2] + cv.L[31]) / 2, (cv.L[14] + cv.L[35]) / 2):
        x, y = (cv.px(uv) / _SUB + [cv.x0, cv.y0]).astype(int)
        r = max(1, int(0.05 * cv.iod))
        patch = img[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1]
        if patch.size:
            vals.append(patch.reshape(-1, 3).mean(0))
    return np.mean(vals, 0) if vals else np.full(3, 160.0)


def lip_gap(lm: np.ndarray) -> float:
    """Mean opening between the inner lips (61-63 vs 67-65), in IOD."""
    d = lm[42:48].mean(0) - lm[36:42].mean(0)
    down = np.array([-d[1], d[0]]) / np.dot(d, d)             # face v per pixel
    return float(((lm[[67, 66, 65]] - lm[[61, 62, 63]]) @ down).mean())


def _mouth_inside(img: np.ndarray, cv: _Canvas, I12: float, p: IdentityParams, gap0: float) -> None:
    """Teeth and cavity in the opening of the inner lips (img float32, in place), as far as the
    lips are parted more than in the neutral face (``gap0``, IOD): a neutral photo keeps its own
    mouth, closed or not."""
    L = cv.L
    up, lo = L[[61, 62, 63]], L[[67, 66, 65]]
    slit = 0.04 * _smooth((I12 - 2.0) / 3.0)                      # a wide smile parts the lips
    gap = float((lo[:, 1] - up[:, 1]).mean()) + slit
    amount = _smooth((gap - gap0) / 0.05)
    if gap < 0.012 or amount < 0.01:
        return
    upper = np.vstack([L[60], up - [0, slit / 2], L[64]])       # corner, 61-63, corner
    lower = np.vstack([L[64], lo[::-1] + [0, slit / 2], L[60]])  # corner, 65-67, corner
    pts = (cv.px(np.vstack([upper, lower])) / _SUB + [cv.x0, cv.y0])
    m = 0.2 * cv.iod
    bx0, by0 = (np.maximum(0, np.floor(pts.min(0) - m))).astype(int)
    bx1, by1 = np.minimum([img.shape[1], img.shape[0]], np.ceil(pts.max(0) + m)).astype(int)
    if bx1 <= bx0 or by1 <= by0:
        return
    off = np.array([bx0 - cv.x0, by0 - cv.y0]) * _SUB
    h, w = by1 - by0, bx1 - bx0
    hole = np.zeros((h, w), np.float32)
    cv2.fillPoly(hole, [cv.px(np.vstack([upper, lower[1:-1]])) - off], 1.0, cv2.LINE_8, shift=4)
    teeth = np.zeros((h, w), np.float32)
    h_up = 0.15
    cv2.fillPoly(teeth, [cv.px(np.vstack([upper, upper[::-1] + [0, h_up]])) - off], 1.0, cv2.LINE_8, shift=4)
    low_amount = _smooth((gap - 0.1) / 0.12)                      # lower teeth once the jaw drops
    if low_amount > 0:
        cv2.fillPoly(teeth, [cv.px(np.vstack([lower, lower[::-1] - [0, 0.06]])) - off], 0.75 * low_amount,
                     cv2.LINE_8, shift=4)
    gaps = np.zeros((h, w), np.float32)                           # the gaps between the teeth
    mid = (L[62] + L[66]) / 2
    for x in mid[0] + np.array([-0.33, -0.24, -0.13, 0.0, 0.13, 0.24, 0.33]):   # incisors, laterals, canines
        cv2.line(gaps, tuple(map(int, cv.px([x, mid[1] - 0.2]) - off)), tuple(map(int, cv.px([x, mid[1] + 0.2]) - off)),
                 0.3 * min(1.0, cv.iod / 50), 1, cv2.LINE_8, shift=4)
    sig = max(0.5, 0.02 * cv.iod)
    hole = cv2.GaussianBlur(hole, (0, 0), sig)
    teeth = cv2.GaussianBlur(teeth, (0, 0), sig) * hole
    gaps = cv2.GaussianBlur(gaps, (0, 0), sig)
    half = max(0.05, 0.5 * abs(L[64, 0] - L[60, 0]))
    u = (((np.arange(w) + bx0 - cv.o[0]) * cv.ex[0])[None, :]
         + ((np.arange(h) + by0 - cv.o[1]) * cv.ex[1])[:, None]) / cv.iod        # face u of each pixel
    falloff = np.clip(1 - 0.45 * ((u - (L[60, 0] + L[64, 0]) / 2) / half) ** 2, 0.3, 1)   # darker to the corners
    # teeth in the skin's light: skin x (teeth / skin reflectance)
    skin = _skin_colour(img, cv)
    tb = skin * _TEETH_OVER_SKIN
    tb = np.clip((0.6 * tb + 0.4 * tb.mean()) * np.array(p.teeth), 0, 240).astype(np.float32)
    roi = img[by0:by1, bx0:bx1]
    a_cav = (0.92 * amount * hole)[..., None]
    cavity = (skin * _CAVITY_OVER_SKIN).astype(np.float32) * (0.6 + 0.4 * falloff[..., None])
    roi[:] = roi * (1 - a_cav) + cavity * a_cav
    a_t = (amount * teeth)[..., None]
    tcol = tb * (falloff * (1 - gaps))[..., None]
    roi[:] = roi * (1 - a_t) + tcol * a_t


def apply_appearance(frame_bgr: np.ndarray, landmarks: np.ndarray, intensities: dict[str, float],
                     identity_params: IdentityParams | None = None, neutral: np.ndarray | None = None
                     ) -> np.ndarray:
    """The frame (uint8 BGR, not changed) with the appearance of the AU ``intensities`` (0-5,
    the resting offsets already added) drawn at its 68 ``landmarks``; ``neutral``: the
    identity's neutral landmarks (teeth and cavity fill only the lips' opening beyond theirs;
    none: a closed mouth). Uses no randomness: a person's wrinkles (``identity_params``, drawn
    once) stay put from frame to frame."""
    p = identity_params or IdentityParams()
    I = {a: float(np.clip(intensities.get(a, 0.0), 0, 5)) for a in
         ("AU01", "AU02", "AU04", "AU06", "AU10", "AU12", "AU14", "AU17")}
    cv = _Canvas(np.asarray(landmarks, np.float64), frame_bgr.shape[:2])
    _forehead(cv, I["AU01"], I["AU02"], p)
    _glabella(cv, I["AU04"], p)
    _eyes(cv, I["AU06"], p)
    _mouth_folds(cv, I["AU10"], I["AU12"], I["AU14"], p)
    _chin(cv, I["AU17"], p)
    img = frame_bgr.astype(np.float32)
    cv.shade(img)
    _mouth_inside(img, cv, I["AU12"], p, 0.0 if neutral is None else lip_gap(neutral))
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)
