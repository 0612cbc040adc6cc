"""`drkit predict`: a model bundle + still images / image folders / videos -> one CSV row per
image or frame (OpenFace-style: input, frame, face_found, then one column per target).

The bundle (train-task's best.pt) carries the preprocessing settings (crop size, alignment,
face backend), the DR networks and the task network, so the prediction sees exactly the input
it was trained on: face detection + 68 landmarks -> masked crop -> [image, DRs] -> regressor.
Images without a face get a row with face_found=0 and empty targets, never an error.

With ``per_video`` (``--per-video``), ``-o`` is a folder and each input file (video or still
image) gets its own CSV, ``<id>.csv`` (ids as in face stores: the path relative to the folder
given, or the file name of a file given directly). Each CSV is written to a temporary file and
renamed when complete, so a CSV that exists is whole: a rerun skips inputs whose CSV is there
(unless ``overwrite``) and redoes the rest, and ``--shard I/N`` jobs (a deterministic split of
the inputs sorted by id) fill one folder together.

With the networks on a GPU (or ``run(cfg, pipeline=True)``), frames are decoded and tracked
(drkit.faces: the tracker of `drkit preprocess`) in a background thread while the main thread
runs the networks on batches of ``batch_size`` rows: OpenCV's decoding and dlib's detector
release the GIL, so the two overlap. The batches, and so the values written, are those of the
sequential loop (``pipeline=False``, the default on the CPU: on 2 cores the thread only took CPU
time from torch's threads).
``benchmarks/predict_speed.py`` measures frames/s and where the time goes.
"""

from __future__ import annotations

import contextlib
import csv
import time
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch

from .. import log
from ..background import opencv_threads, read_ahead
from ..configs import PredictConfig
from ..contracts import PrecisionName, check_choice
from ..errors import DrkitError, NothingProcessed, UsageError
from ..fsutil import atomic_path, remove_stale_tmp
from ..predictor import Predictor
from ..sources import (
    IMAGE_EXT,
    VIDEO_EXT,
    FrameReader,
    Source,
    select_shard,
)
from ..store import video_id_from_path


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


def _units(paths: list[Path]) -> list[tuple[str, Path, str]]:
    """(kind, path, id) of every input file, sorted by id: the per-video CSVs are ``<id>.csv``.
    Ids as face stores make them (drkit.store.video_id_from_path of the path relative to the folder
    given, the file name of a file given directly); clashes get a numeric suffix."""
    out, seen = [], set()
    for p in paths:
        for kind, f in _inputs([p]):
            rel = f.relative_to(p).as_posix() if p.is_dir() else f.name
            vid = base = video_id_from_path(rel)
            k = 2
            while vid in seen:
                vid, k = f"{base}-{k}", k + 1
            seen.add(vid)
            out.append((kind, f, vid))
    return sorted(out, key=lambda u: u[2])


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


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_text(text: str) -> str:
    """A text cell that spreadsheets will not run as a formula: one starting with = + - @, a tab
    or a carriage return gets a leading apostrophe (OWASP's advice against CSV injection; an
    input named ``=cmd|' /C calc'!A0.jpg`` would otherwise be executed when the CSV is opened)."""
    return "'" + text if text.startswith(FORMULA_START) else text


class _Rows:
    """Rows of one CSV: faces are batched through the predictor, rows written in input order."""

    def __init__(self, pred: Predictor, f, save: Path | None, batch_size: int):
        self.pred, self.save, self.batch_size = pred, save, batch_size
        self.w = csv.writer(f)
        self.w.writerow(["input", "frame", "face_found", *map(csv_text, pred.targets)])
        self.pending: list[tuple[str, int | None, np.ndarray | None]] = []   # frame None: a still image
        self.rows = self.faces = 0

    def add(self, name: str, frame: int | None, crop: np.ndarray | None) -> None:
        self.pending.append((name, frame, crop))
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        pred, save = self.pred, self.save
        faces = [c for _, _, c in self.pending if c is not None]
        ys, ms = pred.predict_crops(np.stack(faces)) if faces else (None, None)
        k = 0
        for name, fr, crop in self.pending:
            if crop is None:
                self.w.writerow([csv_text(name), fr or 0, 0, *[""] * len(pred.targets)])
            else:
                self.w.writerow([csv_text(name), fr or 0, 1, *(f"{v:.4f}" for v in ys[k])])
                if save:
                    stem = Path(name).stem + (f"_{fr:06d}" if fr is not None else "")
                    cv2.imwrite(str(save / f"{stem}.png"), dr_picture(crop, ms[k], pred.config.image))
                k += 1
                self.faces += 1
            self.rows += 1
        self.pending.clear()


_END = object()   # event frame: the input is finished (with its DrkitError, or None)


def _crops(pred: Predictor, kind: str, path: Path, tm: dict) -> Iterator[tuple[int | None, np.ndarray | None]]:
    """(frame index or None for a still image, masked crop or None) of one input, in order, with
    the face tracking of `drkit preprocess` (drkit.faces.FaceTracker, the bundle's settings);
    DrkitError if unreadable. Adds seconds to ``tm["decode"]`` and ``tm["track"]`` (tracking,
    landmarks and crop)."""
    t0 = time.perf_counter()
    if kind == "image":
        img = cv2.imread(str(path))
        t1 = time.perf_counter()
        tm["decode"] += t1 - t0
        if img is None:
            raise DrkitError("unreadable image")
        found = pred.crop(img)
        tm["track"] += time.perf_counter() - t1
        yield None, found[0] if found else None
        return
    tracker = pred.tracker()
    frames = iter(FrameReader(Source(path.name, path, "video")))   # decodes the first frame
    while True:
        nxt = next(frames, None)
        t1 = time.perf_counter()
        tm["decode"] += t1 - t0
        if nxt is None:
            return
        i, frame = nxt
        found = pred.crop(frame, tracker)
        tm["track"] += time.perf_counter() - t1
        yield i, found[0] if found else None
        t0 = time.perf_counter()    # not counting the time the consumer took


def _events(pred: Predictor, inputs: list[tuple[str, Path]], tm: dict):
    """(k, frame, crop) for every row of input k, then (k, _END, DrkitError or None), inputs in order."""
    for k, (kind, path) in enumerate(inputs):
        try:
            for frame, crop in _crops(pred, kind, path, tm):
                yield k, frame, crop
        except DrkitError as e:
            yield k, _END, e
        else:
            yield k, _END, None


@contextlib.contextmanager
def _event_stream(pred: Predictor, inputs: list[tuple[str, Path]], tm: dict, pipeline: bool,
                  batch_size: int, net_threads: int | None):
    """The events of ``inputs`` (drkit.stages.predict._events), produced in a background thread
    when ``pipeline``, else inline; ``net_threads``: torch's intra-op threads meanwhile. OpenCV
    runs single-threaded meanwhile (drkit.background.opencv_threads: its pool only slows the
    small warps of tracking)."""
    old = torch.get_num_threads()
    if net_threads:
        torch.set_num_threads(net_threads)
    try:
        with opencv_threads(1), \
                read_ahead(_events(pred, inputs, tm), max(64, 2 * batch_size), enabled=pipeline) as events:
            yield events
    finally:
        if net_threads:
            torch.set_num_threads(old)


def _timings(pred: Predictor, tm: dict, t_start: float, t_loop: float, pipeline: bool,
             net_threads: int | None) -> dict:
    """Seconds: ``setup`` (bundle + face backend), ``loop`` (inputs to CSV), ``decode``, ``track``
    (tracking + landmarks + crop), ``dr`` (MDR stack: DR networks), ``task`` (task network);
    with ``pipeline`` decode + track ran in a thread beside dr + task (busy times overlap)."""
    now = time.perf_counter()
    return {"setup": t_loop - t_start, "loop": now - t_loop, "decode": tm["decode"], "track": tm["track"],
            "dr": pred.timings["dr"], "task": pred.timings["task"], "faces": pred.timings["crops"],
            "pipeline": pipeline, "net_threads": net_threads or torch.get_num_threads()}


def run(cfg: PredictConfig, pipeline: bool | None = None, net_threads: int | None = None) -> dict:
    """``pipeline``: decode and track the frames in a background thread while the networks run
    on the batches (the same rows, batches and values as ``pipeline=False``, which does one after
    the other). Default: pipelined when the networks run on a GPU; on the CPU one after the other,
    as on 2 cores the thread only competes with torch's threads (benchmarks/predict_speed.py:
    no gain). ``net_threads``: torch's intra-op threads meanwhile (default: unchanged). The
    result's ``timings`` are seconds (drkit.stages.predict._timings)."""
    t_start = time.perf_counter()
    check_choice(cfg.precision, PrecisionName, "--precision")
    if cfg.shard and not cfg.per_video:
        raise UsageError("--shard splits the inputs into one CSV per input: add --per-video and give "
                         "-o a folder")
    if cfg.per_video and cfg.out.is_file():
        raise DrkitError(f"{cfg.out}: is a file; with --per-video, -o takes the folder to write "
                         "one CSV per input into")
    if not cfg.per_video and cfg.out.is_dir():
        raise DrkitError(f"{cfg.out}: is a folder; -o takes the CSV file to write, e.g. "
                         f"{cfg.out / 'predictions.csv'} (or add --per-video for one CSV per input)")
    select_shard([], cfg.shard)   # a malformed --shard fails before the model loads
    pred = Predictor.from_bundle(cfg.model, cfg.device, cfg.backend, cfg.model_root,
                                 cfg.precision, cfg.channels_last, cfg.compile)
    pred.backend  # load the face backend now: a missing model fails before any work
    items = _inputs(cfg.inputs)
    if not items:
        raise DrkitError("no images or videos in the inputs")
    save = cfg.save_dr
    if save:
        save.mkdir(parents=True, exist_ok=True)
    tm = {"decode": 0.0, "track": 0.0}
    if pipeline is None:
        pipeline = pred.device.type != "cpu"
    if cfg.per_video:
        return _run_per_video(cfg, pred, save, tm, pipeline, net_threads, t_start)
    failed: dict[str, str] = {}
    t_loop = time.perf_counter()
    with atomic_path(cfg.out) as tmp, open(tmp, "w", newline="") as f, log.progress() as prog, \
            _event_stream(pred, items, tm, pipeline, cfg.batch_size, net_threads) as events:
        rows = _Rows(pred, f, save, cfg.batch_size)
        task = prog.add_task("inputs", total=len(items))
        for k, frame, x in events:
            path = items[k][1]
            if frame is not _END:
                rows.add(str(path), frame, x)
                continue
            if x is not None:
                failed[str(path)] = str(x)
                log.warn(f"skipped {path}: {x}")
            prog.advance(task)
        rows.flush()
        if rows.rows == 0:   # leave any earlier output as it was
            raise NothingProcessed(f"no input could be read; first error: {next(iter(failed.values()), '?')}")
    return {"rows": rows.rows, "faces": rows.faces, "failed": failed, "out": str(cfg.out),
            "timings": _timings(pred, tm, t_start, t_loop, pipeline, net_threads)}


def _run_per_video(cfg: PredictConfig, pred: Predictor, save: Path | None, tm: dict, pipeline: bool,
                   net_threads: int | None, t_start: float) -> dict:
    """One CSV per input into the folder ``cfg.out``: this shard's inputs whose CSV is not there."""
    units = select_shard(_units(cfg.inputs), cfg.shard)
    cfg.out.mkdir(parents=True, exist_ok=True)
    todo = [u for u in units if cfg.overwrite or not (cfg.out / f"{u[2]}.csv").is_file()]
    part = f" (shard {cfg.shard})" if cfg.shard else ""
    log.info(f"predict: {len(units)} inputs{part}, {len(units) - len(todo)} already done, "
             f"{len(todo)} to do -> {cfg.out}/")
    n_rows = n_faces = 0
    written: list[str] = []
    failed: dict[str, str] = {}
    t_loop = time.perf_counter()
    with log.progress() as prog, \
            _event_stream(pred, [(kind, path) for kind, path, _ in todo], tm, pipeline, cfg.batch_size,
                          net_threads) as events:
        task = prog.add_task("inputs", total=len(todo))
        for j, (kind, path, vid) in enumerate(todo):
            dest = cfg.out / f"{vid}.csv"
            remove_stale_tmp(dest)
            try:
                with atomic_path(dest) as tmp, open(tmp, "w", newline="") as f:
                    rows = _Rows(pred, f, save, cfg.batch_size)
                    for k, frame, x in events:    # this input's rows, up to its end
                        if k < j:                 # what is left of an input given up on
                            continue
                        if frame is _END:
                            if x is not None:
                                raise x
                            break
                        rows.add(str(path), frame, x)
                    rows.flush()
            except DrkitError as e:     # no CSV: a rerun tries it again
                failed[str(path)] = str(e)
                log.warn(f"skipped {path}: {e}")
            else:
                written.append(dest.name)
                n_rows, n_faces = n_rows + rows.rows, n_faces + rows.faces
            prog.advance(task)
    if todo and not written:
        raise NothingProcessed(f"no input could be read; first error: {next(iter(failed.values()), '?')}")
    return {"rows": n_rows, "faces": n_faces, "failed": failed, "out": str(cfg.out),
            "written": written, "skipped": len(units) - len(todo),
            "timings": _timings(pred, tm, t_start, t_loop, pipeline, net_threads)}
