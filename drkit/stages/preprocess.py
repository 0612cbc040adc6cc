"""`drkit preprocess`: face videos -> face store (masked, landmark-aligned face crops).

Per source: decode frames, track the largest face (detector + 68 landmarks), crop a square
``size`` image around the landmarks, zero everything outside their convex hull, and append the
frame to the store. Sources already complete in the store are skipped, so rerunning a killed job
resumes it; a failed source is reported and the rest go on.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import log
from ..background import available_cores, opencv_threads, read_ahead
from ..configs import PreprocessConfig, check_choices
from ..contracts import Result, face_arrays
from ..errors import DrkitError, NothingProcessed, UsageError
from ..faces import FaceTracker, crop_face, make_backend
from ..sources import (
    FrameReader,
    Source,
    discover,
    select_shard,
    source_bytes,
)
from ..store import (
    VideoWriter,
    create_store,
    is_done,
    now,
    update_root,
    write_claimed,
)


@dataclass
class PreprocessSummary(Result):
    store: str
    ok: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)   # damaged videos redone (also in ok)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)   # source path -> reason
    no_face: list[str] = field(default_factory=list)
    frames: int = 0
    seconds: float = 0.0


_BACKENDS: dict[tuple, object] = {}


def _backend(name: str, model_root: Path | None):
    key = (name, str(model_root) if model_root else None)
    if key not in _BACKENDS:  # one per process: model loading is the slow part
        _BACKENDS[key] = make_backend(name, key[1])
    return _BACKENDS[key]


def process_video(src: Source, cfg: PreprocessConfig,
                  on_frames: Callable[[int], None] = lambda n: None, wait: bool = False) -> dict:
    """Preprocess one source into the store under the video's claim; returns its summary
    (``busy`` if another live run is writing it and ``wait`` is false, ``skipped`` if it is
    already complete and intact). Raises DrkitError if unreadable."""
    if src.kind == "unknown":
        raise DrkitError(f"not a video file (extension {src.path.suffix or 'none'})")
    def not_another_file() -> None:
        other = _other_source(cfg.out, src)
        if other:
            raise DrkitError(other)

    r = write_claimed(cfg.out, src.id, "faces", lambda: _write_video(src, cfg, on_frames),
                      overwrite=cfg.overwrite, wait=wait, when_done=not_another_file)
    if r.status != "written":
        return {"id": src.id, r.status: True}
    return {**r.value, "repaired": r.repaired}


def _other_source(store_path: Path, src: Source) -> str | None:
    """Why ``src`` must not be taken for the video of the same id already in the store (None if
    that video is ``src``): it was made from another file that still exists. Ids are paths
    relative to the folder given, so two files of one name given directly share an id."""
    import json
    try:
        stored = json.loads((Path(store_path) / src.id / "zarr.json").read_text())["attributes"].get("source")
    except (OSError, ValueError, KeyError):
        return None
    if not stored or Path(stored) == src.path.resolve() or not Path(stored).exists():
        return None   # the same file (or the store moved from another machine)
    return (f"video id '{src.id}' is already taken in {store_path} by {stored}, another file: ids are "
            "paths relative to the folder given, so give the parent folder instead of the file, or "
            "write to another store")


def _write_video(src: Source, cfg: PreprocessConfig, on_frames: Callable[[int], None]) -> dict:
    backend = _backend(cfg.backend, cfg.model_root)
    spare = available_cores() > max(1, cfg.workers)
    # a spare core: frames decoded a few ahead in a thread (the tracker is single-threaded, so
    # decoding then costs it nothing); none: decoded inline, on one FFmpeg thread
    reader = FrameReader(src, cfg.fps, decode_threads=0 if spare else 1)
    p = cfg.store_params()
    tracker = FaceTracker(backend, redetect_every=cfg.redetect_every, naive=cfg.naive,
                          reuse_mad=p.reuse_mad, max_reuse=p.max_reuse, redetect_region=p.redetect_region)
    n_read = n_det = n_kept = 0
    with opencv_threads(1), VideoWriter(cfg.out, src.id, face_arrays(cfg.crop_size), "faces") as writer, \
            read_ahead(iter(reader), 16, enabled=spare) as frames:
        rows: dict[str, list] = {k: [] for k in writer.specs}
        for i, frame in frames:
            n_read += 1
            res = tracker(frame)
            if res is not None:
                crop, lm_c, M = crop_face(frame, res.landmarks, cfg.crop_size, cfg.align)
                n_det += res.detected
                n_kept += res.reused
                for k, v in (("frames", crop), ("landmarks", lm_c), ("frame_index", i),
                             ("confidence", res.score), ("detected", res.detected),
                             ("transform", M)):
                    rows[k].append(v)
            if n_read % 16 == 0:
                if rows["frames"]:
                    writer.append(**{k: np.asarray(v) for k, v in rows.items()})
                    rows = {k: [] for k in writer.specs}
                on_frames(16)
        if rows["frames"]:
            writer.append(**{k: np.asarray(v) for k, v in rows.items()})
        on_frames(n_read % 16)
        meta = reader.meta
        warnings = []
        if src.kind == "video" and meta.n_frames > 1 and n_read < 0.95 * meta.n_frames - 2:
            warnings.append(f"decoded {n_read} of {meta.n_frames} frames the container announces "
                            "(truncated or damaged file?)")
        writer.commit({
            "source": str(src.path.resolve()), "source_kind": src.kind, "fps": meta.fps,
            "source_size": [meta.width, meta.height], "n_source_frames": n_read,
            "backend": backend.name, "backend_version": backend.version,
            "backend_models": backend.models,
            "crop_size": cfg.crop_size, "align": cfg.align,
            "tracking": {"naive": cfg.naive, "redetect_every": cfg.redetect_every,
                         "detections": n_det, "reuse_mad": tracker.reuse_mad, "max_reuse": tracker.max_reuse,
                         "reused": n_kept, "redetect_region": tracker.redetect_region},
            "warnings": warnings,
        })
    return {"id": src.id, "frames": writer.n, "source_frames": n_read, "warnings": warnings}


def _safe_process(src: Source, cfg: PreprocessConfig, on_frames, wait: bool = False) -> dict:
    """process_video, with any failure turned into ``{"id", "error"}`` for the summary."""
    try:
        return process_video(src, cfg, on_frames, wait)
    except DrkitError as e:
        return {"id": src.id, "error": str(e)}
    except Exception as e:  # a decoder or backend crash must not take the batch down
        return {"id": src.id, "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc()}


def _process_all(todo: list[Source], cfg: PreprocessConfig, prog, record: Callable[[dict], None],
                 busy: list[Source]) -> None:
    """Each video of ``todo`` in this process or over ``cfg.workers`` worker processes (largest
    first), results handed to ``record`` as they come; then the videos ``record`` found busy
    (another live run writing them), waiting for their claims."""
    with prog:
        vt = prog.add_task("videos", total=len(todo))
        ft = prog.add_task("frames", total=None)
        if cfg.workers <= 1 or len(todo) <= 1:
            for s in todo:
                prog.update(vt, description=f"videos ({s.id[:40]})")
                record(_safe_process(s, cfg, lambda n: prog.advance(ft, n)))
                prog.advance(vt)
        else:
            ctx = mp.get_context("spawn")
            q = ctx.Queue()
            # largest first, so no worker is left with a long video while the others idle
            by_size = sorted(todo, key=source_bytes, reverse=True)
            with ProcessPoolExecutor(cfg.workers, mp_context=ctx, initializer=_init_worker,
                                     initargs=(q, os.getpid())) as ex:
                try:
                    pending = {ex.submit(_worker, s, cfg) for s in by_size}
                    while pending:
                        done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                        while not q.empty():
                            prog.advance(ft, q.get())
                        for f in done:
                            record(f.result())
                            prog.advance(vt)
                except BaseException:   # Ctrl-C, SIGTERM, an error: the workers remove their scratch and stop
                    _stop_workers(ex)
                    raise
        # videos another live run was writing: wait for its claim, then finish whatever it left
        for s in list(busy):
            busy.remove(s)
            log.info(f"{s.id}: being written by another run; waiting for it")
            record(_safe_process(s, cfg, lambda n: prog.advance(ft, n), wait=True))


def run(cfg: PreprocessConfig) -> PreprocessSummary:
    t0 = time.time()
    if cfg.crop_size < 32 or cfg.crop_size % 2:
        raise UsageError(f"--crop-size {cfg.crop_size}: expected an even number of pixels >= 32")
    check_choices(cfg)
    sources = select_shard(discover(cfg.inputs), cfg.shard)
    if not sources:
        raise DrkitError(f"no video files or image folders found in {', '.join(map(str, cfg.inputs))}")
    _backend(cfg.backend, cfg.model_root)  # fail fast on a missing model, before any work
    store = create_store(cfg.out, "faces", cfg.store_params())
    summary = PreprocessSummary(store=str(store.path))
    todo: list[Source] = []
    for s in sources:   # a first look without claims; each video is checked again under its claim
        done = is_done(store, s.id, deep=True)
        other = _other_source(store.path, s) if done else None
        if other:
            summary.failed[str(s.path)] = other
            log.warn(f"skipped {s.path}: {other}")
        elif done and not cfg.overwrite:
            summary.skipped.append(s.id)
        else:
            todo.append(s)
    log.info(f"preprocess: {len(sources)} source(s), {len(summary.skipped)} already done, "
             f"{len(todo)} to do -> {store.path}")

    by_id = {s.id: s for s in todo}
    busy: list[Source] = []
    prog = log.progress()

    def record(res: dict) -> None:
        src = by_id[res["id"]]
        if res.get("busy"):
            busy.append(src)
            return
        if res.get("skipped"):
            summary.skipped.append(src.id)
            return
        if "error" in res:
            summary.failed[str(src.path)] = res["error"]
            log.warn(f"skipped {src.path}: {res['error']}")
            if "traceback" in res:
                log.debug(res["traceback"])
            return
        summary.ok.append(src.id)
        summary.frames += res["frames"]
        if res.get("repaired"):
            summary.repaired.append(src.id)
        if prog.disable:   # batch job without a terminal: one line per video instead of bars
            log.info(f"[{len(summary.ok) + len(summary.failed)}/{len(todo)}] {src.id}: "
                     f"{res['frames']}/{res['source_frames']} frames with a face"
                     + (" (repaired)" if res.get("repaired") else ""))
        if res["frames"] == 0:
            summary.no_face.append(src.id)
            log.warn(f"{src.path}: no face found in any of {res['source_frames']} frames")
        for w in res["warnings"]:
            log.warn(f"{src.path}: {w}")

    _process_all(todo, cfg, prog, record, busy)
    summary.seconds = time.time() - t0

    def add_run(a: dict) -> None:
        a.setdefault("failed", {}).update(summary.failed)
        a.setdefault("runs", []).append({
            "time": now(), "drkit_argv": sys.argv[1:], "shard": cfg.shard,
            "ok": len(summary.ok), "skipped": len(summary.skipped), "failed": len(summary.failed),
            "repaired": len(summary.repaired),
            "frames": summary.frames, "seconds": round(summary.seconds, 1)})
    update_root(store.path, add_run)
    if not summary.ok and not summary.skipped:
        raise NothingProcessed(f"no source could be processed ({len(summary.failed)} failed); "
                               f"first error: {next(iter(summary.failed.values()), '?')}")
    return summary


_QUEUE = None


def _stop_workers(ex: ProcessPoolExecutor) -> None:
    """SIGTERM every worker (each unwinds its video, removing the scratch), then drop what is
    queued and wait for them to end."""
    for proc in list((getattr(ex, "_processes", None) or {}).values()):
        try:
            proc.terminate()
        except (OSError, AttributeError):
            pass
    ex.shutdown(wait=True, cancel_futures=True)


def _init_worker(queue, parent: int) -> None:
    """In each worker process: where to report progress, and die with the parent (a kill -9 of
    the run must not leave workers committing videos behind a rerun's back)."""
    global _QUEUE
    _QUEUE = queue
    from ..errors import install_signal_handlers
    install_signal_handlers()   # a SIGTERM unwinds the video being written (its scratch is removed)
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:   # the parent died before prctl took effect
        os._exit(1)


def _worker(src: Source, cfg: PreprocessConfig) -> dict:
    return _safe_process(src, cfg, lambda n: _QUEUE.put(n) if n else None)
