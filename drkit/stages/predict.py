"""`drkit predict`: a model bundle + still images / image folders / videos -> per-frame CSV
(drkit's, or OpenFace 2.2's layout), and on request a plot of the AUs over time, an annotated
video and DR pictures.

The bundle (train-task's best.pt, or a shipped one: ``pretrained:au``) carries the preprocessing
settings (crop size, alignment, face backend), the DR networks and the task network, so the
prediction sees exactly the input it was trained on: face detection + 68 landmarks -> masked
crop -> [image, DRs] -> regressor. Outputs are clipped to the task's label range (AU intensity
0-5; ``--no-clip`` keeps raw values). Images without a face get a row with face_found=0 and
empty targets, never an error.

Inputs are found by drkit.sources.discover (``stills=True``: every image file is one still;
videos by extension). With ``per_video`` (``--per-video``), ``-o`` is a folder and each input
file gets its own CSV, named after the input's path without its extension (``d6.mp4`` ->
``d6.csv``; as video ids are made, drkit.store.video_id_from_path). Each CSV is written to a
temporary file and renamed when complete, so a CSV that exists is whole: a rerun skips inputs
whose CSV is there (unless ``overwrite``), and ``--shard I/N`` jobs fill one folder together.

With the networks on a GPU (or ``run(cfg, pipeline=True)``), frames are decoded and tracked in a
background thread while the main thread runs the networks on batches of ``batch_size`` faces
(the same batches and values as the sequential loop, the default on the CPU).
``benchmarks/predict_speed.py`` measures frames/s and where the time goes. ``engine``
(``--engine``, drkit.export): onnxruntime or torch runs the networks (Predictor); the default,
auto, takes onnxruntime when it is installed and the run is on the CPU at fp32.
"""

from __future__ import annotations

import contextlib
import csv
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch

from .. import log
from ..background import opencv_threads, read_ahead
from ..configs import PredictConfig, check_choices
from ..contracts import Result
from ..errors import DrkitError, NothingProcessed, UsageError
from ..fsutil import atomic_path
from ..predictor import Face, Predictor
from ..sources import FrameReader, Source, discover, select_shard
from ..store import video_id_from_path

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_text(text: str) -> str:
    """A text cell that spreadsheets will not run as a formula: one starting with = + - @, a tab
    or a carriage return gets a leading apostrophe (OWASP's advice against CSV injection; an
    input named ``=cmd|' /C calc'!A0.jpg`` would otherwise be executed when the CSV is opened)."""
    return "'" + text if text.startswith(FORMULA_START) else text


def parse_frames(spec: str | None) -> set[int] | None:
    """``--dr-frames`` "0,100,200-210" -> that set of source frame indices (None: every frame)."""
    if not spec:
        return None
    out: set[int] = set()
    for part in spec.replace(" ", "").split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m or (m[2] and int(m[2]) < int(m[1])):
            raise UsageError(f"--dr-frames {spec!r}: expected frame numbers and ranges, e.g. 0,100,200-210")
        out.update(range(int(m[1]), int(m[2] or m[1]) + 1))
    return out


# ------------------------------------------------------------------ rows and where they go

@dataclass
class Row:
    """One image or frame of one input: what was found there and predicted."""
    unit: int                    # index of the input file
    frame: int | None            # source frame index; None for a still image
    timestamp: float             # seconds from the container (0 for a still)
    face: Face | None
    bgr: np.ndarray | None = None          # the frame, kept only for --video-out
    values: np.ndarray | None = None       # (k,) after prediction
    mdr: np.ndarray | None = None          # (C, M, M) the network's input


@dataclass
class Unit:
    """One input file and the name of its per-file outputs."""
    src: Source
    name: str                    # <name>.csv / .png / .mp4 with --per-video, --plot, --video-out
    rows: int = 0
    faces: int = 0
    fps: float = 25.0            # a video's frame rate, once opened (its --video-out plays at it)


def units_of(inputs: list[Path]) -> list[Unit]:
    """Every input file (drkit.sources.discover, stills), with its output name: the path (relative
    to the folder given, or the file name) without its extension, made as video ids are; names
    two inputs share get ``-2``, ``-3`` (with a warning)."""
    out, seen = [], {}
    for s in discover(inputs, stills=True, keep_order=True):
        base = video_id_from_path(str(Path(s.rel).with_suffix("")))
        name, k = base, 2
        while name in seen:
            name, k = f"{base}-{k}", k + 1
        if name != base:
            log.warn(f"{s.path}: its output name '{base}' is also {seen[base]}'s; using '{name}'")
        seen[name] = s.path
        out.append(Unit(s, name))
    return out


class CSVOut:
    """Rows as CSV: drkit's layout (``input, frame, timestamp, face_found, confidence,
    <targets>``) or OpenFace 2.2's (``frame, face_id, timestamp, confidence, success,
    AUxx_r...``, 1-based frames, ", " between fields)."""

    def __init__(self, f, fmt: str, targets: list[str]):
        self.f, self.fmt, self.targets = f, fmt, targets
        if fmt == "openface":
            names = [t + "_r" if re.fullmatch(r"AU\d+", t) else t for t in targets]
            f.write(", ".join(["frame", "face_id", "timestamp", "confidence", "success",
                               *map(csv_text, names)]) + "\n")
        else:
            self.w = csv.writer(f)
            self.w.writerow(["input", "frame", "timestamp", "face_found", "confidence",
                             *map(csv_text, targets)])

    def write(self, r: Row, input_name: str) -> None:
        conf = r.face.confidence if r.face else 0.0
        if self.fmt == "openface":
            vals = r.values if r.values is not None else np.zeros(len(self.targets))
            self.f.write(", ".join([str((r.frame or 0) + 1), "0", f"{r.timestamp:.3f}", f"{conf:.2f}",
                                    "1" if r.face else "0", *(f"{v:.2f}" for v in vals)]) + "\n")
            return
        vals = [f"{v:.4f}" for v in r.values] if r.values is not None else [""] * len(self.targets)
        self.w.writerow([csv_text(input_name), r.frame or 0, f"{r.timestamp:.3f}", 1 if r.face else 0,
                         f"{conf:.3f}", *vals])


class Extras:
    """--plot, --video-out and --save-dr for the inputs of a run: each a folder, one file per
    input (pictures: one per selected frame), each written atomically."""

    def __init__(self, cfg: PredictConfig, pred: Predictor):
        self.cfg, self.pred = cfg, pred
        self.names = list(pred.config.store_channels)
        self.frames = parse_frames(cfg.dr_frames)
        for d in (cfg.plot, cfg.video_out, cfg.save_dr):
            if d:
                if d.is_file():
                    raise DrkitError(f"{d}: is a file; --plot, --video-out and --save-dr take a folder")
                d.mkdir(parents=True, exist_ok=True)
        self.series: list[tuple[float, np.ndarray]] = []
        self.video = None            # (atomic_path context, its temporary path, cv2.VideoWriter, size)
        self.limits: list[float] | None = None

    @property
    def wants_frames(self) -> bool:
        return self.cfg.video_out is not None

    def start(self, unit: Unit) -> None:
        self.series, self.limits = [], None

    def add(self, unit: Unit, r: Row) -> None:
        if self.cfg.plot:
            self.series.append((r.timestamp, r.values if r.values is not None
                                else np.full(len(self.pred.targets), np.nan)))
        if r.mdr is not None and self.limits is None:   # one colour scale per input: its first face's
            from ..viz import dr_mean_maps, map_limit
            self.limits = [map_limit(m) for _, m in dr_mean_maps(r.mdr, self.names)]
        if self.cfg.save_dr and r.face is not None and (self.frames is None or (r.frame or 0) in self.frames):
            self._picture(unit, r)
        if self.cfg.video_out and r.bgr is not None and r.frame is not None:
            self._video_frame(unit, r)

    def _picture(self, unit: Unit, r: Row) -> None:
        from ..viz import dr_panel
        label = unit.src.path.name + ("" if r.frame is None else f" frame {r.frame} ({r.timestamp:.2f} s)")
        ok, png = cv2.imencode(".png", dr_panel(r.face.crop, r.mdr, self.names, caption=label))
        stem = unit.name + ("" if r.frame is None else f"_{r.frame:06d}")
        with atomic_path(self.cfg.save_dr / f"{stem}.png") as tmp:
            tmp.write_bytes(png.tobytes())

    def _video_frame(self, unit: Unit, r: Row) -> None:
        from ..viz import video_frame
        p = self.pred
        img = video_frame(r.bgr, r.face.landmarks if r.face else None, r.face.crop if r.face else None,
                          r.mdr, self.names, r.values, p.targets, self.limits,
                          f"{unit.src.path.name} frame {r.frame} ({r.timestamp:.2f} s)", value_range=p.value_range)
        if self.video is None:
            ctx = atomic_path(self.cfg.video_out / f"{unit.name}.mp4", suffix=True)
            tmp = ctx.__enter__()
            size = img.shape[1::-1]
            vw = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), unit.fps, size)
            if not vw.isOpened():
                err = DrkitError(f"{self.cfg.video_out}: OpenCV cannot write an MP4 video there")
                ctx.__exit__(DrkitError, err, None)
                raise err
            self.video = (ctx, vw, size)
        ctx, vw, size = self.video
        vw.write(img if img.shape[1::-1] == size else cv2.resize(img, size))

    def finish(self, unit: Unit, error: BaseException | None = None) -> None:
        """The input is done (``error``: it failed): write its plot, close its video."""
        if self.video is not None:
            ctx, vw, _ = self.video
            vw.release()
            self.video = None
            ctx.__exit__(*(None, None, None) if error is None else (type(error), error, None))
        if error is None and self.cfg.plot and self.series and unit.src.kind == "video":
            from ..viz import plot_series
            t = np.array([s[0] for s in self.series])
            v = np.stack([s[1] for s in self.series])
            p = self.pred
            plot_series(t, v, p.targets, self.cfg.plot / f"{unit.name}.png",
                        f"{unit.src.path.name}: {p.config.task.upper()} intensity per frame, {p.bundle_name} "
                        f"({int(np.isfinite(v[:, 0]).sum())} of {len(v)} frames with a face)",
                        value_range=p.value_range if p.clip else None)


# ------------------------------------------------------------------ frames -> rows

_END = object()   # event: the input is finished (with its DrkitError, or None)


def _frames(pred: Predictor, unit: Unit, keep_bgr: bool, tm: dict) -> Iterator[Row]:
    """Rows (faces found, not yet predicted) of one input, in order, with the face tracking of
    `drkit preprocess` (the bundle's settings); DrkitError if unreadable. Adds seconds to
    ``tm["decode"]`` and ``tm["track"]`` (tracking, landmarks and crop)."""
    k, src = 0, unit.src
    t0 = time.perf_counter()
    if src.kind == "image":
        img = cv2.imread(str(src.path))
        t1 = time.perf_counter()
        tm["decode"] += t1 - t0
        if img is None:
            raise DrkitError("unreadable image")
        face = pred.find_face(img)
        tm["track"] += time.perf_counter() - t1
        yield Row(k, None, 0.0, face, img if keep_bgr else None)
        return
    if src.kind != "video":
        raise DrkitError(f"not an image or video file (extension {src.path.suffix or 'none'})")
    tracker = pred.tracker()
    reader = FrameReader(src)
    unit.fps = reader.meta.fps
    frames = reader.timed()   # decodes the first frame
    while True:
        nxt = next(frames, None)
        t1 = time.perf_counter()
        tm["decode"] += t1 - t0
        if nxt is None:
            return
        i, ts, frame = nxt
        face = pred.find_face(frame, tracker)
        tm["track"] += time.perf_counter() - t1
        yield Row(k, i, ts, face, frame if keep_bgr else None)
        t0 = time.perf_counter()    # not counting the time the consumer took


def _events(pred: Predictor, units: list[Unit], keep_bgr: bool, tm: dict):
    """(unit index, Row) for every image / frame of each input, then (unit index, (_END, error))."""
    for k, u in enumerate(units):
        try:
            for r in _frames(pred, u, keep_bgr, tm):
                r.unit = k
                yield k, r
        except DrkitError as e:
            yield k, (_END, e)
        else:
            yield k, (_END, None)


@contextlib.contextmanager
def _event_stream(pred: Predictor, units: list[Unit], keep_bgr: bool, tm: dict, pipeline: bool,
                  batch_size: int, net_threads: int | None):
    """The events of ``units``, produced in a background thread when ``pipeline``, else inline;
    ``net_threads``: torch's intra-op threads meanwhile. OpenCV runs single-threaded meanwhile
    (its pool only slows the small warps of tracking)."""
    old = torch.get_num_threads()
    if net_threads:
        torch.set_num_threads(net_threads)
    try:
        with opencv_threads(1), \
                read_ahead(_events(pred, units, keep_bgr, tm), max(64, 2 * batch_size), enabled=pipeline) as events:
            yield events
    finally:
        if net_threads:
            torch.set_num_threads(old)


class Batches:
    """Faces through the networks ``batch_size`` at a time (across inputs); rows come out in input
    order with their values, and each input's end after its last row."""

    def __init__(self, pred: Predictor, batch_size: int, on_row, on_end):
        self.pred, self.batch_size, self.on_row, self.on_end = pred, batch_size, on_row, on_end
        self.pending: list = []      # Rows and (unit, _END, error) markers, in order
        self.n_faces = 0
        self.spilled = 0             # bytes that waited in a temporary file (VideoBatches)

    def add(self, item) -> None:
        self.pending.append(item)
        if isinstance(item, Row) and item.face is not None:
            self.n_faces += 1
            if self.n_faces >= self.batch_size:
                self.flush()

    def flush(self) -> None:
        faces = [r for r in self.pending if isinstance(r, Row) and r.face is not None]
        if faces:
            ys, ms = self.pred.predict_crops(np.stack([r.face.crop for r in faces]))
            for r, y, m in zip(faces, ys, ms):
                r.values, r.mdr = y, m
        pending, self.pending, self.n_faces = self.pending, [], 0
        for item in pending:
            if isinstance(item, Row):
                self.on_row(item)
            else:
                self.on_end(*item)


HOLD_BYTES = 1 << 30   # VideoBatches: an input's maps, crops and frames kept in memory up to this, the rest on disk


@dataclass
class _OnDisk:
    """Where Spill wrote an array."""
    offset: int
    shape: tuple
    dtype: np.dtype


class Spill:
    """Arrays kept until an input ends: in memory up to ``budget`` bytes, the rest in an unnamed
    temporary file (in $TMPDIR, or the system's temporary folder), which is gone once closed or
    once the process dies. ``put`` returns the array or where it went; ``get`` the array back."""

    def __init__(self, budget: int):
        self.budget, self.held, self.file, self.size, self.spilled = budget, 0, None, 0, 0

    def put(self, a: np.ndarray | None):
        if a is None or isinstance(a, _OnDisk):
            return a
        if self.held + a.nbytes <= self.budget:
            self.held += a.nbytes
            return a
        if self.file is None:
            import tempfile
            self.file = tempfile.TemporaryFile(prefix="drkit-predict-")   # noqa: SIM115 (open until close())
        self.file.seek(self.size)
        self.file.write(np.ascontiguousarray(a).data)
        ref = _OnDisk(self.size, a.shape, a.dtype)
        self.size += a.nbytes
        self.spilled += a.nbytes
        return ref

    def get(self, x):
        if not isinstance(x, _OnDisk):
            return x
        out = np.empty(x.shape, x.dtype)
        self.file.seek(x.offset)
        if self.file.readinto(memoryview(out).cast("B")) != out.nbytes:
            raise DrkitError("predict: the temporary file of an input's maps was cut short (disk full?)")
        return out

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        self.held, self.file, self.size, self.spilled = 0, None, 0, 0


class VideoBatches(Batches):
    """Batches for a bundle trained with ``--dr-norm video`` or ``--image-norm video``: the MDR
    stacks as faces come (in batches), the task network once an input has ended, on its channels
    minus their mean over the input's faces (what train-task and eval-task subtract per stored
    video). An input's MDR stacks (C x M x M float32 per face, e.g. 196 KB for 12 channels of
    64 px), crops and, for --video-out, frames wait for its end: in memory up to ``hold_bytes``
    (HOLD_BYTES, 1 GiB), beyond that in a temporary file (Spill), so a long video needs disk, not
    memory. The mean is summed face by face (float64), so it does not depend on the batch size."""

    def __init__(self, pred: Predictor, batch_size: int, on_row, on_end, hold_bytes: int | None = None):
        super().__init__(pred, batch_size, on_row, on_end)
        self.spill = Spill(HOLD_BYTES if hold_bytes is None else hold_bytes)
        self.sums: dict[int, list] = {}   # unit -> [sum of its MDR stacks (float64), faces]

    def add(self, item) -> None:
        self.pending.append(item)
        if isinstance(item, Row):
            item.bgr = self.spill.put(item.bgr)
            if item.face is not None:
                self.n_faces += 1
                if self.n_faces >= self.batch_size:
                    self._stacks()
        else:
            self.flush()    # an input ended: its mean is known

    def _stacks(self) -> None:
        faces = [r for r in self.pending if isinstance(r, Row) and r.face is not None and r.mdr is None]
        for i in range(0, len(faces), self.batch_size):
            part = faces[i:i + self.batch_size]
            for r, m in zip(part, self.pred.mdr_of(np.stack([r.face.crop for r in part]))):
                acc = self.sums.setdefault(r.unit, [np.zeros(m.shape, np.float64), 0])
                acc[0] += m
                acc[1] += 1
                r.mdr = self.spill.put(m)
                r.face.crop = self.spill.put(r.face.crop)
        self.n_faces = 0

    def flush(self) -> None:
        self._stacks()
        by_unit: dict[int, list[Row]] = {}
        for r in self.pending:
            if isinstance(r, Row) and r.face is not None:
                by_unit.setdefault(r.unit, []).append(r)
        get = self.spill.get
        for unit, faces in by_unit.items():
            total, n = self.sums.pop(unit)
            still = faces[0].frame is None and self.pred.still_mean is not None
            mean = self.pred.still_mean if still else (total / n).astype(np.float32)
            for i in range(0, len(faces), self.batch_size):
                part = faces[i:i + self.batch_size]
                for r, y in zip(part, self.pred.values_of(np.stack([get(r.mdr) for r in part]), mean)):
                    r.values = y
        pending, self.pending = self.pending, []
        for i, item in enumerate(pending):
            pending[i] = None   # what went out is not held on to
            if isinstance(item, Row):
                item.mdr, item.bgr = get(item.mdr), get(item.bgr)
                if item.face is not None:
                    item.face.crop = get(item.face.crop)
                self.on_row(item)
            else:
                self.on_end(*item)
        self.spilled += self.spill.spilled
        self.spill.close()


def batches_for(pred: Predictor, batch_size: int, on_row, on_end) -> Batches:
    return (VideoBatches if pred.video_norm else Batches)(pred, batch_size, on_row, on_end)


def _drain(b: Batches, events) -> None:
    """Every event through ``b``, in order, and what is left at the end."""
    for k, item in events:
        b.add((k, *item) if isinstance(item, tuple) else item)
    b.flush()
    if b.spilled:
        log.info(f"predict: {b.spilled / 2**20:.0f} MB of maps, crops and frames waited for their input's "
                 "end in a temporary file (more than fits the memory budget; drkit.stages.predict.HOLD_BYTES)")


def _timings(pred: Predictor, tm: dict, t_start: float, t_loop: float, pipeline: bool,
             net_threads: int | None) -> dict:
    """Seconds: ``setup`` (bundle + face backend), ``loop`` (inputs to CSV), ``decode``, ``track``
    (tracking + landmarks + crop), ``dr`` (MDR stack: DR networks), ``task`` (task network);
    with ``pipeline`` decode + track ran in a thread beside dr + task (busy times overlap)."""
    now = time.perf_counter()
    return {"setup": t_loop - t_start, "loop": now - t_loop, "decode": tm["decode"], "track": tm["track"],
            "dr": pred.timings["dr"], "task": pred.timings["task"], "faces": pred.timings["crops"],
            "pipeline": pipeline, "net_threads": net_threads or torch.get_num_threads()}


@dataclass
class PredictResult(Result):
    rows: int
    faces: int
    failed: dict[str, str]
    out: str
    written: list[str] = field(default_factory=list)   # --per-video: CSVs written this run
    skipped: int = 0                                    # --per-video: inputs whose CSV was there
    timings: dict = field(default_factory=dict)


def _check(cfg: PredictConfig) -> None:
    """Settings that cannot work, refused before the model loads."""
    check_choices(cfg)   # precision, format, backend, engine
    parse_frames(cfg.dr_frames)
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


def _say_what(cfg: PredictConfig, pred: Predictor) -> None:
    """What the model predicts and whether its values are clipped; a warning for a model trained
    on synthetic faces only."""
    if pred.synthetic:
        log.warn(f"{cfg.model}: this model was trained on synthetic faces only (`drkit synth`); on real "
                 "faces its values are not to be trusted: use pretrained:au, or train on real labelled video")
    what = f"{', '.join(pred.targets[:6])}{' ...' if len(pred.targets) > 6 else ''} ({len(pred.targets)} targets)"
    if pred.clip:
        lo, hi = pred.value_range
        log.info(f"predict: {what}, values clipped to the {pred.config.task.upper()} label range "
                 f"{lo:g}..{hi:g} (--no-clip: raw outputs)")
    elif cfg.clip:
        log.info(f"predict: {what}; this bundle records no label range (made before drkit 0.3.0): values "
                 "are the network's, not clipped")


def run(cfg: PredictConfig, pipeline: bool | None = None, net_threads: int | None = None) -> PredictResult:
    """``pipeline``: decode and track the frames in a background thread while the networks run
    (same rows, batches and values as ``pipeline=False``, the default on the CPU, where on 2 cores
    the thread only competes with torch's). ``net_threads``: torch's intra-op threads meanwhile
    (onnxruntime's, with ``cfg.engine`` onnxruntime)."""
    t_start = time.perf_counter()
    _check(cfg)
    # from_bundle: the name for titles, and a shipped bundle's own tracking (its manifest's)
    pred = Predictor.from_bundle(cfg.model, cfg.device, cfg.backend, cfg.model_root, cfg.precision,
                                 cfg.channels_last, cfg.compile, cfg.clip, cfg.engine, net_threads)
    pred.reuse_mad, pred.redetect_region = cfg.reuse_mad, cfg.redetect_region
    log.debug(f"predict: networks run by {pred.engine}"
              + (f" ({pred._graphs.engine(pred.crop_size).provider})" if pred._graphs else f" on {pred.device}"))
    pred.backend  # load the face backend now: a missing model fails before any work
    units = units_of(cfg.inputs)
    if not units:
        raise DrkitError("no images or videos in the inputs")
    _say_what(cfg, pred)
    if pred.video_norm:
        c = pred.config
        what = " and ".join(x for x, on in (("DRs", c.dr_norm == "video"), ("image", c.image_norm == "video")) if on)
        log.info(f"predict: this bundle was trained with per-video normalisation: each input's answers come "
                 f"when it ends, from its {what} minus their mean over the input")
        if any(u.src.kind == "image" for u in units):
            if pred.still_mean is not None:
                log.info(f"predict: a still image has no video to average over: its {what} are taken relative "
                         "to the training videos' mean (the bundle's population_mean)")
            else:
                log.warn(f"predict: a still image has no video to average over, and this bundle (made before "
                         f"drkit 0.3.0) carries no training mean: the still's {what} equal their mean, so its "
                         "answers are the model's answer for a person's average frame; retrain the bundle "
                         "(train-task) for better answers on stills")
    extras = Extras(cfg, pred)
    tm = {"decode": 0.0, "track": 0.0}
    if pipeline is None:
        pipeline = pred.device.type != "cpu"
    if cfg.per_video:
        return _run_per_video(cfg, pred, units, extras, tm, pipeline, net_threads, t_start)
    failed: dict[str, str] = {}
    t_loop = time.perf_counter()
    n = {"rows": 0, "faces": 0}
    with atomic_path(cfg.out) as tmp, open(tmp, "w", newline="") as f, log.progress() as prog, \
            _event_stream(pred, units, extras.wants_frames, tm, pipeline, cfg.batch_size, net_threads) as events:
        out = CSVOut(f, cfg.format, pred.targets)
        task = prog.add_task("inputs", total=len(units))
        started: set[int] = set()

        def on_row(r: Row) -> None:
            u = units[r.unit]
            if r.unit not in started:
                started.add(r.unit)
                extras.start(u)
            out.write(r, str(u.src.path))
            extras.add(u, r)
            n["rows"] += 1
            n["faces"] += r.face is not None

        def on_end(k: int, _end, err) -> None:
            u = units[k]
            if err is not None:
                failed[str(u.src.path)] = str(err)
                log.warn(f"skipped {u.src.path}: {err}")
            if k in started:
                extras.finish(u, err)
            prog.advance(task)

        _drain(batches_for(pred, cfg.batch_size, on_row, on_end), events)
        if n["rows"] == 0:   # leave any earlier output as it was
            raise NothingProcessed(f"no input could be read; first error: {next(iter(failed.values()), '?')}")
    return PredictResult(n["rows"], n["faces"], failed, str(cfg.out),
                         timings=_timings(pred, tm, t_start, t_loop, pipeline, net_threads))


def _run_per_video(cfg: PredictConfig, pred: Predictor, units: list[Unit], extras: Extras, tm: dict,
                   pipeline: bool, net_threads: int | None, t_start: float) -> PredictResult:
    """One CSV per input into the folder ``cfg.out``: this shard's inputs whose CSV is not there."""
    units = select_shard(units, cfg.shard)
    cfg.out.mkdir(parents=True, exist_ok=True)
    todo = [u for u in units if cfg.overwrite or not (cfg.out / f"{u.name}.csv").is_file()]
    part = f" (shard {cfg.shard})" if cfg.shard else ""
    log.info(f"predict: {len(units)} inputs{part}, {len(units) - len(todo)} already done, "
             f"{len(todo)} to do -> {cfg.out}/")
    written: list[str] = []
    failed: dict[str, str] = {}
    t_loop = time.perf_counter()
    state: dict = {}   # the open CSV of the input being written: unit index -> (ctx, file, CSVOut)
    with log.progress() as prog, contextlib.ExitStack() as stack, \
            _event_stream(pred, todo, extras.wants_frames, tm, pipeline, cfg.batch_size, net_threads) as events:
        task = prog.add_task("inputs", total=len(todo))

        def close(k: int, err: BaseException | None) -> None:
            ctx, f, _ = state.pop(k)
            f.close()
            ctx.__exit__(*(None, None, None) if err is None else (type(err), err, None))

        @stack.callback
        def _abandon():   # an interrupt or an error: no half CSV is left
            for k in list(state):
                close(k, KeyboardInterrupt())

        def on_row(r: Row) -> None:
            u = todo[r.unit]
            if r.unit not in state:
                ctx = atomic_path(cfg.out / f"{u.name}.csv")
                tmp = ctx.__enter__()
                f = open(tmp, "w", newline="")
                state[r.unit] = (ctx, f, CSVOut(f, cfg.format, pred.targets))
                extras.start(u)
            state[r.unit][2].write(r, str(u.src.path))
            extras.add(u, r)
            u.rows += 1
            u.faces += r.face is not None

        def on_end(k: int, _end, err) -> None:
            u = todo[k]
            if k in state:
                extras.finish(u, err)
                close(k, err)
            if err is not None:      # no CSV: a rerun tries it again
                failed[str(u.src.path)] = str(err)
                log.warn(f"skipped {u.src.path}: {err}")
            else:
                written.append(f"{u.name}.csv")
            prog.advance(task)

        _drain(batches_for(pred, cfg.batch_size, on_row, on_end), events)
    if todo and not written:
        raise NothingProcessed(f"no input could be read; first error: {next(iter(failed.values()), '?')}")
    ok = [u for u in todo if f"{u.name}.csv" in written]
    return PredictResult(sum(u.rows for u in ok), sum(u.faces for u in ok), failed, str(cfg.out), written,
                         len(units) - len(todo), _timings(pred, tm, t_start, t_loop, pipeline, net_threads))
