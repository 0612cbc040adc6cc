"""`drkit synth`: face videos with exact per-frame facial-action labels, made offline.

Each sequence takes an identity photo, finds its 68 landmarks, and animates it:

- action units as events (onset, apex, offset of varied durations; symmetric or asymmetric
  ramps; intensity 0-5): AU01, AU02, AU04 (brows), AU06, AU10, AU12, AU14, AU17 (the FERA 2015
  set), AU25, AU26 (lips, jaw); AU06 joins half of the AU12 events (Duchenne smiles);
- each AU moves a set of landmarks by a fixed displacement per intensity unit, in units of the
  inter-ocular distance (``AU_MOVES``); displacements add up;
- the image follows the landmarks by a piecewise-affine warp on a Delaunay triangulation of the
  landmarks plus fixed points around the face and on the border; the opened mouth is shaded
  and raised cheeks (AU06) are lit up to +20 grey levels;
- blinks, slow head motion (rotation, translation, scale), lighting drift and sensor noise.

Valence and arousal are documented functions of the AU state (``affect``) plus noise, in [-1, 1].

Identities: photos / video frames given with ``--faces``; with none, the astronaut photo that
scikit-image ships, turned into distinct pseudo-identities (face proportions, skin tone, mirror,
background) so that person-disjoint splits exist on a fresh machine.

Output (``-o DIR``): ``videos/synth_XXX.avi`` (MJPG), ``labels.csv`` in the drkit label format
(video, frame, person, AU01 ... AU26, valence, arousal), ``landmarks/synth_XXX.npy`` (n, 68, 2)
exact landmarks per frame, and ``synth.json`` (settings, identities, seed). Deterministic for a
seed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .. import __version__, log
from ..errors import DrkitError
from ..faces import make_backend
from ..labels import write_labels

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


def _anchor_points(lm: np.ndarray, size: int) -> np.ndarray:
    """Fixed points: a ring around the face (1.5x its radius) and the image border."""
    c = lm.mean(0)
    r = 1.5 * np.sqrt(((lm - c) ** 2).sum(1)).max()
    ang = np.linspace(0, 2 * np.pi, 20, endpoint=False)
    ring = c + r * np.stack([np.cos(ang), np.sin(ang)], 1)
    e = size - 1
    border = np.array([[0, 0], [e / 2, 0], [e, 0], [e, e / 2], [e, e], [e / 2, e], [0, e], [0, e / 2]])
    return np.concatenate([np.clip(ring, 1, e - 1), border])


def triangulate(pts: np.ndarray, size: int) -> np.ndarray:
    sub = cv2.Subdiv2D((-1, -1, size + 2, size + 2))
    for p in pts:
        sub.insert((float(p[0]), float(p[1])))
    tris = []
    for t in sub.getTriangleList().reshape(-1, 3, 2):
        idx = [int(np.argmin(((pts - v) ** 2).sum(1))) for v in t]
        if len(set(idx)) == 3:
            tris.append(idx)
    return np.array(tris)


def pwa_warp(img: np.ndarray, src: np.ndarray, dst: np.ndarray, tris: np.ndarray) -> np.ndarray:
    """Piecewise-affine warp moving points ``src`` to ``dst`` (one backward remap)."""
    H, W = img.shape[:2]
    tid = np.full((H, W), -1, np.int32)
    A = np.zeros((len(tris) + 1, 2, 3), np.float32)
    A[-1] = [[1, 0, 0], [0, 1, 0]]                  # pixels in no triangle stay where they are
    for k, t in enumerate(tris):
        cv2.fillConvexPoly(tid, np.round(dst[t] * 4).astype(np.int32), k, shift=2)
        A[k] = cv2.getAffineTransform(dst[t].astype(np.float32), src[t].astype(np.float32))
    ys, xs = np.mgrid[:H, :W].astype(np.float32)
    Ak = A[tid]
    mx = Ak[..., 0, 0] * xs + Ak[..., 0, 1] * ys + Ak[..., 0, 2]
    my = Ak[..., 1, 0] * xs + Ak[..., 1, 1] * ys + Ak[..., 1, 2]
    return cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


@dataclass
class Identity:
    image: np.ndarray        # (size, size, 3) BGR, face centred
    landmarks: np.ndarray    # (68, 2) neutral landmarks
    name: str


def _frame_face(img: np.ndarray, lm: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Square crop around the face (face ~45% of the side), resized to ``size``."""
    c = lm.mean(0)
    w = np.linalg.norm(lm[0] - lm[16])
    half = 1.1 * w
    M = cv2.getAffineTransform(np.float32([[c[0] - half, c[1] - half], [c[0] + half, c[1] - half],
                                           [c[0] - half, c[1] + half]]),
                               np.float32([[0, 0], [size, 0], [0, size]]))
    out = cv2.warpAffine(img, M, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)
    return out, (lm @ M[:, :2].T + M[:, 2])


def load_identities(faces: list[str], size: int, backend) -> list[Identity]:
    """Faces from image files, folders of images, or videos (one frame each)."""
    from ..sources import IMAGE_EXT, VIDEO_EXT
    files = []
    for f in map(Path, faces):
        files += sorted(p for p in f.rglob("*") if p.suffix.lower() in IMAGE_EXT | VIDEO_EXT) if f.is_dir() else [f]
    ids = []
    for f in files:
        if f.suffix.lower() in VIDEO_EXT:
            cap = cv2.VideoCapture(str(f))
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 1)
            cap.set(cv2.CAP_PROP_POS_FRAMES, n // 3)
            ok, img = cap.read()
            cap.release()
            img = img if ok else None
        else:
            img = cv2.imread(str(f))
        if img is None:
            log.warn(f"--faces: cannot read {f}")
            continue
        try:
            ids.append(identity_from_image(img, f.stem, size, backend))
        except DrkitError:
            log.warn(f"--faces: no face found in {f}")
    return ids


def pseudo_identities(base: Identity, n: int, rng: np.random.Generator) -> list[Identity]:
    """Distinct-looking variants of one face: face proportions (width, eye spacing, nose and
    jaw length), skin tone, mirroring and background."""
    out = [base]
    size = base.image.shape[0]
    for k in range(1, n):
        lm0 = base.landmarks.copy()
        c = lm0.mean(0)
        lm = c + (lm0 - c) * [rng.uniform(0.88, 1.12), rng.uniform(0.92, 1.08)]
        eyes = np.r_[36:48]
        ec = lm[eyes].mean(0)
        lm[eyes] = ec + (lm[eyes] - ec) * [rng.uniform(0.9, 1.1), 1]
        lm[27:36, 1] += rng.uniform(-0.04, 0.04) * size * 0.2
        lm[4:13, 1] += rng.uniform(-0.05, 0.08) * size * 0.2
        pts0 = np.concatenate([lm0, _anchor_points(lm0, size)])
        pts1 = np.concatenate([lm, _anchor_points(lm0, size)])
        img = pwa_warp(base.image, pts0, pts1, triangulate(pts0, size))
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-6, 6)) % 180
        hsv[..., 1] *= rng.uniform(0.7, 1.3)
        hsv[..., 2] *= rng.uniform(0.75, 1.15)
        img = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2BGR)
        if rng.random() < 0.5:
            img = img[:, ::-1].copy()
            lm[:, 0] = size - 1 - lm[:, 0]
            lm = lm[MIRROR]
        out.append(Identity(img, lm, f"{base.name}_v{k}"))
    return out


# iBUG 68 left/right correspondence, for mirrored identities
MIRROR = np.array([16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0,
                   26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 27, 28, 29, 30, 35, 34, 33, 32, 31,
                   45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40,
                   54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65])


def render_sequence(ident: Identity, n: int, fps: float, rng: np.random.Generator
                    ) -> tuple[list[np.ndarray], np.ndarray, dict[str, np.ndarray]]:
    """Frames (BGR), exact landmarks (n, 68, 2) and AU curves of one sequence."""
    size = ident.image.shape[0]
    lm0 = ident.landmarks
    anchors = _anchor_points(lm0, size)
    src = np.concatenate([lm0, anchors])
    tris = triangulate(src, size)
    au = au_curves(n, fps, rng)
    blink = np.zeros(n)
    t = rng.uniform(0.5, 3) * fps
    while t < n:                                     # blinks: ~0.25 s every 2-6 s
        d = rng.uniform(0.15, 0.3) * fps
        x = (np.arange(n) - t) / d
        blink = np.maximum(blink, np.clip(1 - np.abs(2 * x - 1), 0, 1))
        t += rng.uniform(2, 6) * fps
    tt = np.arange(n) / fps
    ph = rng.uniform(0, 2 * np.pi, 5)
    rot = 3.0 * np.sin(2 * np.pi * tt / rng.uniform(4, 9) + ph[0])
    tx = 0.02 * size * np.sin(2 * np.pi * tt / rng.uniform(3, 8) + ph[1])
    ty = 0.015 * size * np.sin(2 * np.pi * tt / rng.uniform(3, 8) + ph[2])
    sc = 1 + 0.03 * np.sin(2 * np.pi * tt / rng.uniform(5, 10) + ph[3])
    gain = 1 + 0.08 * np.sin(2 * np.pi * tt / rng.uniform(6, 12) + ph[4])
    grad = np.linspace(-1, 1, size)[None, :, None] * rng.uniform(-12, 12)
    frames, lms = [], []
    for i in range(n):
        lm = displaced(lm0, {a: au[a][i] for a in AUS}, blink[i])
        img = pwa_warp(ident.image, src, np.concatenate([lm, anchors]), tris)
        open_ = np.linalg.norm(lm[66] - lm[62]) - np.linalg.norm(lm0[66] - lm0[62])
        if open_ > 1:                                # shade the opened mouth
            mask = np.zeros((size, size), np.uint8)
            cv2.fillPoly(mask, [np.round(lm[60:68]).astype(np.int32)], 255)
            mask = cv2.GaussianBlur(mask, (5, 5), 0)[..., None] / 255.0
            alpha = min(0.85, open_ / 8)
            img = (img * (1 - alpha * mask) + np.array([25, 20, 35]) * alpha * mask).astype(np.uint8)
        if au["AU06"][i] > 0:                        # raised cheeks catch more light
            cheeks = np.zeros((size, size), np.float32)
            iod = np.linalg.norm(lm[36:42].mean(0) - lm[42:48].mean(0))
            for e, j in ((slice(36, 42), 2), (slice(42, 48), 14)):
                c = (lm[e].mean(0) * 0.45 + lm[j] * 0.3 + lm[33] * 0.25)
                cv2.ellipse(cheeks, (int(c[0]), int(c[1])), (int(0.28 * iod), int(0.18 * iod)), 0, 0, 360, 1.0, -1)
            cheeks = cv2.GaussianBlur(cheeks, (0, 0), 0.12 * iod)[..., None]
            img = np.clip(img + cheeks * 4.0 * au["AU06"][i], 0, 255).astype(np.uint8)
        M = cv2.getRotationMatrix2D((size / 2, size / 2), rot[i], sc[i])
        M[:, 2] += [tx[i], ty[i]]
        img = cv2.warpAffine(img, M, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        lm = lm @ M[:, :2].T + M[:, 2]
        img = img.astype(np.float32) * gain[i] + grad + rng.normal(0, 2.0, img.shape)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
        lms.append(lm.astype(np.float32))
    au["blink"] = blink
    return frames, np.stack(lms), au


@dataclass
class SynthConfig:
    out: str
    n: int = 12
    seconds: float = 8.0
    fps: float = 25.0
    faces: list[str] = field(default_factory=list)
    identities: int = 6            # pseudo-identities made from one photo when --faces is empty
    size: int = 256
    seed: int = 0


def run(cfg: SynthConfig) -> dict:
    out = Path(cfg.out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    (out / "landmarks").mkdir(exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    backend = make_backend("dlib")
    if cfg.faces:
        ids = load_identities(cfg.faces, cfg.size, backend)
        if not ids:
            raise DrkitError("--faces: no face found in any of the given files")
    else:
        import skimage.data
        img = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
        base = identity_from_image(img, "astronaut", cfg.size, backend)
        ids = pseudo_identities(base, cfg.identities, rng)
    n_frames = int(round(cfg.seconds * cfg.fps))
    rows = []
    targets = list(AUS) + ["valence", "arousal"]
    with log.progress() as prog:
        task = prog.add_task("synth", total=cfg.n)
        for k in range(cfg.n):
            ident = ids[k % len(ids)]
            vid = f"synth_{k:03d}.avi"
            frames, lms, au = render_sequence(ident, n_frames, cfg.fps, rng)
            val, aro = affect(au, rng)
            tmp = out / "videos" / f".{vid}"
            vw = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), cfg.fps, (cfg.size, cfg.size))
            for f in frames:
                vw.write(f)
            vw.release()
            tmp.replace(out / "videos" / vid)
            np.save(out / "landmarks" / f"synth_{k:03d}.npy", lms)
            for i in range(n_frames):
                rows.append({"video": vid, "frame": i, "person": ident.name,
                             **{a: round(float(au[a][i]), 3) for a in AUS},
                             "valence": round(float(val[i]), 4), "arousal": round(float(aro[i]), 4)})
            prog.advance(task)
    write_labels(out / "labels.csv", rows, targets)
    meta = {"drkit_version": __version__, **asdict(cfg), "identities_used": [i.name for i in ids],
            "targets": targets, "au_moves": {a: [[list(i), dx, dy] for i, dx, dy in m] for a, m in AU_MOVES.items()}}
    (out / "synth.json").write_text(json.dumps(meta, indent=1))
    log.info(f"synth: {cfg.n} videos x {n_frames} frames of {min(cfg.n, len(ids))} identities -> {out}")
    return {"out": str(out), "videos": cfg.n, "frames": cfg.n * n_frames, "labels": str(out / "labels.csv")}


def identity_from_image(img: np.ndarray, name: str, size: int, backend) -> Identity:
    """The largest face of a BGR image, framed and with its neutral landmarks."""
    dets = backend.detect(img)
    if not dets:
        raise DrkitError(f"no face found in the {name} image")
    det = max(dets, key=lambda d: d.area)
    crop, lm = _frame_face(img, backend.landmarks(img, det.box), size)
    return Identity(crop, lm, name)
