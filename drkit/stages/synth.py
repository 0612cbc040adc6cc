"""`drkit synth`: face videos with exact per-frame facial-action labels, made offline.

Each sequence takes an identity photo, finds its 68 landmarks, and animates it with facial
action units (landmark warp plus their wrinkles, folds, shading, teeth and mouth cavity), blinks,
head motion, lighting drift and noise; the parts live in `drkit.synthesis`: the AU model and
valence / arousal (`au_model`), the piecewise-affine warp (`warp`), the AU appearance and each
person's skin and morphology (`appearance`), the faces (`identities`) and the animation of one
sequence (`render`).

Each identity gets its own wrinkle depth and pattern and, with ``--morphology A > 0``, resting
offsets in AU space (up to A: a slight resting smile, lowered brows, deep nasolabial folds ...)
that shape every frame of that person but are not in the labels, so that one label looks
different on different people. They are drawn from their own seeded streams (``seed``, identity
number): the labels, and the AU curves, blinks, head motion and noise of the videos, do not
change with ``--morphology`` or ``--appearance``.

Identities: photos / video frames given with ``--faces``; with none, the astronaut photo that
scikit-image ships, turned into distinct pseudo-identities (face proportions, skin tone, mirror,
background) so that person-disjoint splits exist on a fresh machine.

Output (``-o DIR``): ``videos/synth_XXX.avi`` (MJPG), ``labels.csv`` in the drkit label format
(video, frame, person, AU01 ... AU26, valence, arousal), ``landmarks/synth_XXX.npy`` (n, 68, 2)
exact landmarks per frame, and ``synth.json`` (settings, seed, identities with their resting
offsets and wrinkle depth). Deterministic for a seed.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from .. import __version__, log
from ..configs import SynthConfig
from ..contracts import Result
from ..errors import DrkitError, UsageError
from ..faces import make_backend
from ..fsutil import atomic_path, jsonable, write_json_atomic
from ..labels import write_labels
from ..synthesis.appearance import IdentityParams, draw_identity_params
from ..synthesis.au_model import AU_MOVES, AUS, affect
from ..synthesis.identities import (
    identity_from_image,
    load_identities,
    pseudo_identities,
)
from ..synthesis.render import render_sequence


def _write_video(path: str | Path, frames: list[np.ndarray], fps: float, size: int) -> None:
    """MJPG AVI of (size, size) BGR frames, written atomically (`atomic_path`). OpenCV picks the
    container from the file name, so the frames go to an ``.avi``-named file beside the temporary
    one first."""
    with atomic_path(path) as tmp:
        avi = tmp.with_name(tmp.name + ".avi")
        vw = cv2.VideoWriter(str(avi), cv2.VideoWriter_fourcc(*"MJPG"), fps, (size, size))
        try:
            if not vw.isOpened():
                raise DrkitError(f"{path}: OpenCV cannot write an MJPG video here")
            for f in frames:
                vw.write(f)
            vw.release()
            os.replace(avi, tmp)
        finally:
            vw.release()
            avi.unlink(missing_ok=True)


def person_params(seed: int, j: int, morphology: float) -> IdentityParams:
    """Skin and morphology of the ``j``-th identity: a random stream of its own (``seed``, 1, j),
    untouched by the one of the videos."""
    return draw_identity_params(np.random.default_rng([seed, 1, j]), morphology)


@dataclass
class SynthResult(Result):
    out: str
    videos: int
    frames: int
    labels: str


def run(cfg: SynthConfig) -> SynthResult:
    if not 0 <= cfg.morphology <= 5:
        raise UsageError(f"--morphology {cfg.morphology}: expected a resting intensity from 0 to 5")
    out = cfg.out
    (out / "videos").mkdir(parents=True, exist_ok=True)
    (out / "landmarks").mkdir(exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    backend = make_backend("dlib")
    if cfg.faces:
        ids = load_identities(cfg.faces, cfg.frame_size, backend)
        if not ids:
            raise DrkitError("--faces: no face found in any of the given files")
    else:
        import skimage.data
        img = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
        base = identity_from_image(img, "astronaut", cfg.frame_size, backend)
        ids = pseudo_identities(base, cfg.identities, rng)
    params = [person_params(cfg.seed, j, cfg.morphology) for j in range(len(ids))]
    n_frames = int(round(cfg.seconds * cfg.fps))
    rows = []
    targets = list(AUS) + ["valence", "arousal"]
    with log.progress() as prog:
        task = prog.add_task("synth", total=cfg.n)
        for k in range(cfg.n):
            ident = ids[k % len(ids)]
            vid = f"synth_{k:03d}.avi"
            frames, lms, au = render_sequence(ident, n_frames, cfg.fps, rng, params[k % len(ids)], cfg.appearance)
            val, aro = affect(au, rng)
            _write_video(out / "videos" / vid, frames, cfg.fps, cfg.frame_size)
            with atomic_path(out / "landmarks" / f"synth_{k:03d}.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, lms)
            for i in range(n_frames):
                rows.append({"video": vid, "frame": i, "person": ident.name,
                             **{a: round(float(au[a][i]), 3) for a in AUS},
                             "valence": round(float(val[i]), 4), "arousal": round(float(aro[i]), 4)})
            prog.advance(task)
    write_labels(out / "labels.csv", rows, targets)
    meta = {"drkit_version": __version__, **jsonable(asdict(cfg)), "identities_used": [i.name for i in ids],
            "identity_params": {i.name: p.to_json() for i, p in zip(ids, params)},
            "targets": targets, "au_moves": {a: [[list(i), dx, dy] for i, dx, dy in m] for a, m in AU_MOVES.items()}}
    write_json_atomic(out / "synth.json", meta)
    log.info(f"synth: {cfg.n} videos x {n_frames} frames of {min(cfg.n, len(ids))} identities -> {out}")
    return SynthResult(str(out), cfg.n, cfg.n * n_frames, str(out / "labels.csv"))
