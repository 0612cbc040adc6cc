"""Input discovery and frame reading: video files, folders of them, folders of image frames."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from . import log
from .errors import DrkitError, UsageError
from .store import video_id_from_path

try:  # decoder warnings on damaged files would drown the progress display
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
except AttributeError:
    pass

VIDEO_EXT = {".mp4", ".avi", ".mov", ".mkv", ".wmv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv",
             ".3gp", ".ogv", ".mts", ".ts"}
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Source:
    id: str            # store subgroup name
    path: Path         # video file, image folder, or (``discover(..., stills=True)``) image file
    kind: str          # "video" | "images" | "image" (a still) | "unknown"
    rel: str = ""      # the path the id was made from (relative to the folder given, or the name)


def source_bytes(src: Source) -> int:
    """Bytes on disk of a source (a video file, or the images of a folder): the estimate of its
    work that `preprocess --workers N` hands out the largest sources first by (0 if unreadable)."""
    try:
        if src.kind == "images":
            return sum(f.stat().st_size for f in _images_in(src.path))
        return src.path.stat().st_size
    except OSError:
        return 0


def _natural_key(p: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def _images_in(d: Path) -> list[Path]:
    return sorted((p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXT),
                  key=_natural_key)


def frame_numbers(files: list[Path]) -> list[int]:
    """Frame numbers of an image sequence: the last integer in each file name when every name has
    one and they strictly increase (``0639.jpg``, ``frame_0640.png``: gaps are frames that are
    missing), else the position in natural order."""
    nums = []
    for f in files:
        m = re.findall(r"\d+", f.stem)
        if not m:
            return list(range(len(files)))
        nums.append(int(m[-1]))
    if any(b <= a for a, b in zip(nums, nums[1:])):
        return list(range(len(files)))
    return nums


def discover(inputs: list[str | Path], stills: bool = False, keep_order: bool = False) -> list[Source]:
    """Expand inputs into sources, sorted by id.

    A file is a video (any file given explicitly is tried, so a bad one is reported rather than
    silently ignored). A folder is walked recursively: video files by extension, and every folder
    holding image files is one image sequence. Ids are paths relative to the given folder (a
    file given directly is identified by its name); clashes get a numeric suffix. A file or image
    folder reached twice (given twice, a folder and a file in it, a symlink) is taken once, as
    first found, with a warning naming both paths.

    ``stills`` (`drkit predict`): every image file is a source of its own, kind ``image`` (an
    image given directly, or each image of a folder), instead of folders being sequences.
    ``keep_order``: in the order the inputs were given (folders expanded in sorted order), not by id."""
    found: list[tuple[str, Path, str]] = []
    for inp in map(Path, inputs):
        if not inp.exists():
            raise DrkitError(f"{inp}: no such file or folder")
        if inp.is_file():
            ext = inp.suffix.lower()
            kind = "image" if stills and ext in IMAGE_EXT else "video" if ext in VIDEO_EXT else "unknown"
            found.append((inp.name, inp, kind))
            continue
        for d in sorted([inp, *(p for p in inp.rglob("*") if p.is_dir())]):
            if stills:
                found += [(f.relative_to(inp).as_posix(), f, "image") for f in _images_in(d)]
            elif _images_in(d):
                rel = d.relative_to(inp).as_posix()
                found.append((rel if rel != "." else inp.resolve().name, d, "images"))
            for f in sorted(d.iterdir()):
                if f.is_file() and f.suffix.lower() in VIDEO_EXT:
                    found.append((f.relative_to(inp).as_posix(), f, "video"))
    out: list[Source] = []
    seen: dict[str, Path] = {}                    # id -> the path that has it
    first_of: dict[Path, tuple[Path, str]] = {}   # real path -> (path as found, its id)
    for rel, path, kind in found:
        real = path.resolve()
        if real in first_of:
            p0, id0 = first_of[real]
            log.warn(f"{path}: same {'image folder' if kind == 'images' else 'file'} as {p0} "
                     f"(already taken as '{id0}'); processed once")
            continue
        vid = base = video_id_from_path(rel)
        k = 2
        while vid in seen:
            vid, k = f"{base}-{k}", k + 1
        if vid != base:
            log.warn(f"{path}: its id '{base}' is already {seen[base]}'s (ids are paths relative to the "
                     f"folder given); stored as '{vid}' in this run: give the parent folders instead "
                     "of the files for ids that do not depend on the other inputs")
        seen[vid] = path
        first_of[real] = (path, vid)
        out.append(Source(vid, path, kind, rel))
    return out if keep_order else sorted(out, key=lambda s: s.id)


def select_shard(sources: list[Source], shard: str | None) -> list[Source]:
    """``I/N``: keep every N-th source (sorted by id) starting at I (0-based)."""
    if not shard:
        return sources
    m = re.fullmatch(r"(\d+)/(\d+)", shard)
    if not m or not 0 <= int(m[1]) < int(m[2]):
        raise UsageError(f"--shard {shard!r}: expected I/N with 0 <= I < N, e.g. 0/4")
    i, n = int(m[1]), int(m[2])
    return [s for k, s in enumerate(sources) if k % n == i]


@dataclass
class VideoMeta:
    fps: float
    width: int
    height: int
    n_frames: int      # as reported by the container (may be approximate for videos)


FPS_RANGE = (1.0, 1000.0)   # frame rates a container may plausibly report (else --fps is used)
USUAL_FPS = (5.0, 120.0)    # outside this the frame rate is kept, with a warning


def plausible_fps(reported: float | None, default: float, path) -> float:
    """The container's frame rate if it lies in ``FPS_RANGE``, else ``default`` (``--fps``)
    with a warning naming the file and the reported value."""
    lo, hi = FPS_RANGE
    try:
        fps = float(reported or 0.0)
    except (TypeError, ValueError):
        fps = float("nan")
    if np.isfinite(fps) and lo <= fps <= hi:
        ulo, uhi = USUAL_FPS
        if not ulo <= fps <= uhi:
            log.warn(f"{path}: the container reports {fps:g} fps, unusual for face video (expected "
                     f"{ulo:g} to {uhi:g}); kept, but check it: strides are frames at 25 fps and scale "
                     f"with the frame rate (stride 2 -> every {max(1, round(2 * fps / 25))} source frames)")
        return fps
    what = "no frame rate" if fps == 0 else f"an implausible frame rate of {fps:g} fps"
    log.warn(f"{path}: the container reports {what} (expected {lo:g} to {hi:g}); "
             f"using {default:g} fps (--fps)")
    return float(default)


class FrameReader:
    """Iterate (index, BGR uint8 frame) over a source; raises DrkitError if unreadable.

    ``decode_threads``: FFmpeg's decoding threads for a video (0: its default, one per core).
    Callers whose every core already runs a worker pass 1: on the shared clips FFmpeg's threads
    then cost CPU time (3.96 s of CPU for 10,516 frames against 2.82 s with one thread) without
    saving any wall time (3.33 s against 2.82 s), CPU a parallel run's other workers need."""

    def __init__(self, src: Source, default_fps: float = 25.0, decode_threads: int = 0):
        self.src = src
        if src.kind == "images":
            self.files = _images_in(src.path)
            first = None
            for f in self.files:   # unreadable images are dropped (and counted) when iterating
                first = cv2.imread(str(f))
                if first is not None:
                    break
            if first is None:
                raise DrkitError(f"{src.path}: cannot read any image "
                                 f"({self.files[0].name if self.files else 'no image files'})")
            self.meta = VideoMeta(default_fps, first.shape[1], first.shape[0], len(self.files))
            return
        cap = None
        if decode_threads > 0:   # a backend that does not take the setting fails to open: retry without
            cap = cv2.VideoCapture(str(src.path), cv2.CAP_ANY, [cv2.CAP_PROP_N_THREADS, decode_threads])
        if cap is None or not cap.isOpened():
            cap = cv2.VideoCapture(str(src.path))
        if not cap.isOpened():
            raise DrkitError(f"{src.path}: not a readable video")
        ok, first = cap.read()
        if not ok or first is None:
            cap.release()
            raise DrkitError(f"{src.path}: video has no decodable frame")
        ms = cap.get(cv2.CAP_PROP_POS_MSEC)
        self._t0 = ms / 1000 if ms and ms > 0 else 0.0
        fps = plausible_fps(cap.get(cv2.CAP_PROP_FPS), default_fps, src.path)
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.cap, self._first = cap, first
        self.meta = VideoMeta(float(fps), first.shape[1], first.shape[0], max(n, 1))

    def timed(self) -> Iterator[tuple[int, float, np.ndarray]]:
        """(index, timestamp in seconds, frame): a video's timestamps from the container (the
        decoder's position of each frame), an image sequence's index / fps."""
        if self.src.kind == "images":
            for i, img in self:
                yield i, i / self.meta.fps, img
            return
        frame, i, t = self._first, 0, self._t0
        try:
            while frame is not None:
                yield i, t, frame
                i += 1
                ok, frame = self.cap.read()
                if not ok:
                    frame = None
                else:
                    ms = self.cap.get(cv2.CAP_PROP_POS_MSEC)
                    t = ms / 1000 if ms > 0 or i == 0 else i / self.meta.fps
        finally:
            self.cap.release()
        self.n_read = i

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        if self.src.kind == "images":
            bad: list[Path] = []
            try:
                for i, f in zip(frame_numbers(self.files), self.files):
                    img = cv2.imread(str(f))
                    if img is None:
                        bad.append(f)   # unreadable image: treated like a frame without a face
                        continue
                    yield i, img
            finally:
                self.n_bad = len(bad)
                if bad:
                    log.warn(f"{self.src.path}: {len(bad)} unreadable image(s) skipped as frames "
                             f"without a face (first: {bad[0].name})")
            return
        frame, i = self._first, 0
        try:
            while frame is not None:
                yield i, frame
                i += 1
                ok, frame = self.cap.read()
                if not ok:
                    frame = None
        finally:
            self.cap.release()
        self.n_read = i
