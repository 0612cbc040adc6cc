"""`drkit predict`: a model bundle + still images / image folders / videos -> one CSV row per
image or frame (OpenFace-style: input, frame, face_found, then one column per target).

The bundle (train-task's best.pt) carries the preprocessing settings (crop size, alignment,
face backend), the DR networks and the task network, so the prediction sees exactly the input
it was trained on: face detection + 68 landmarks -> masked crop -> [image, DRs] -> regressor.
Images without a face get a row with face_found=0 and empty targets, never an error.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from .. import log
from ..configs import PredictConfig
from ..errors import DrkitError, NothingProcessed
from ..fsutil import atomic_path
from ..predictor import Predictor
from ..sources import IMAGE_EXT, VIDEO_EXT, FrameReader, Source


def _inputs(paths: list[Path]) -> list[tuple[str, Path]]:
    """('image', path) for still images (also each image of a folder), ('video', path) for videos."""
    out = []
    for p in paths:
        if not p.exists():
            raise DrkitError(f"{p}: no such file or folder")
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for f in files:
            ext = f.suffix.lower()
            if ext in IMAGE_EXT:
                out.append(("image", f))
            elif ext in VIDEO_EXT or not p.is_dir():
                out.append(("video", f))
    return out


def dr_picture(crop: np.ndarray, mdr: np.ndarray, image: bool) -> np.ndarray:
    """The face crop next to each DR (3 channels each, contrast-stretched per DR), BGR uint8."""
    tiles = [cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)]
    size = crop.shape[0]
    for k in range(3 if image else 0, mdr.shape[0], 3):
        d = mdr[k:k + 3].transpose(1, 2, 0).astype(np.float32)
        lo, hi = np.percentile(d, 1), np.percentile(d, 99)
        d = np.clip((d - lo) / max(hi - lo, 1e-6), 0, 1)
        d = cv2.resize((255 * d).astype(np.uint8), (size, size))
        tiles.append(cv2.cvtColor(d, cv2.COLOR_RGB2BGR))
    return np.hstack(tiles)


def run(cfg: PredictConfig) -> dict:
    if cfg.out.is_dir():
        raise DrkitError(f"{cfg.out}: is a folder; -o takes the CSV file to write, e.g. "
                         f"{cfg.out / 'predictions.csv'}")
    pred = Predictor.from_bundle(cfg.model, cfg.device, cfg.backend, cfg.model_root)
    pred.backend  # load the face backend now: a missing model fails before any work
    items = _inputs(cfg.inputs)
    if not items:
        raise DrkitError("no images or videos in the inputs")
    save = cfg.save_dr
    if save:
        save.mkdir(parents=True, exist_ok=True)
    n_rows = n_faces = 0
    failed: dict[str, str] = {}
    with atomic_path(cfg.out) as tmp, open(tmp, "w", newline="") as f, log.progress() as prog:
        w = csv.writer(f)
        w.writerow(["input", "frame", "face_found", *pred.targets])
        task = prog.add_task("inputs", total=len(items))
        pending: list[tuple[str, int | None, np.ndarray | None]] = []   # frame None: a still image

        def flush() -> None:
            nonlocal n_rows, n_faces
            faces = [c for _, _, c in pending if c is not None]
            ys, ms = pred.predict_crops(np.stack(faces)) if faces else (None, None)
            k = 0
            for name, fr, crop in pending:
                if crop is None:
                    w.writerow([name, fr or 0, 0, *[""] * len(pred.targets)])
                else:
                    w.writerow([name, fr or 0, 1, *(f"{v:.4f}" for v in ys[k])])
                    if save:
                        stem = Path(name).stem + (f"_{fr:06d}" if fr is not None else "")
                        cv2.imwrite(str(save / f"{stem}.png"), dr_picture(crop, ms[k], pred.config.image))
                    k += 1
                    n_faces += 1
                n_rows += 1
            pending.clear()

        for kind, path in items:
            try:
                if kind == "image":
                    img = cv2.imread(str(path))
                    if img is None:
                        raise DrkitError("unreadable image")
                    found = pred.crop(img)
                    pending.append((str(path), None, found[0] if found else None))
                else:
                    tracker = pred.tracker()
                    for i, frame in FrameReader(Source(path.name, path, "video")):
                        found = pred.crop(frame, tracker)
                        pending.append((str(path), i, found[0] if found else None))
                        if len(pending) >= cfg.batch_size:
                            flush()
                if len(pending) >= cfg.batch_size:
                    flush()
            except DrkitError as e:
                failed[str(path)] = str(e)
                log.warn(f"skipped {path}: {e}")
            prog.advance(task)
        flush()
        if n_rows == 0:   # leave any earlier output as it was
            raise NothingProcessed(f"no input could be read; first error: {next(iter(failed.values()), '?')}")
    return {"rows": n_rows, "faces": n_faces, "failed": failed, "out": str(cfg.out)}
