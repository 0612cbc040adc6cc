"""`drkit gen-dr`: face store -> DR store (SDR / MDR inputs for train-task, paper Sec. 3.3).

For every frame: the image itself (level T=0, 3 channels in [0, 1]) stacked with the DR of each
checkpoint given (3 channels each): image + DR(T=5) = 6 channels (AU setting), image + DR(T=3)
+ DR(T=5) = 9 channels (affect setting); ``--no-image`` keeps the DRs only (SDR). The stack is
drkit.mdr.MDR, the very module `drkit predict` runs.

Each video also gets the face store's 68 ``landmarks`` in map pixels (what `train-task --arch
hg_hmr` draws its target heatmaps from): crop pixels scaled by map_size / crop_size with pixel
centres aligned, ``x_map = (x_crop + 0.5) * map_size / crop_size - 0.5``, the mapping of the
image resize (bilinear, half-pixel centres) itself.

With ``--mirror`` (default), each video also gets ``mdr_mirror``: the DR channels of the
mirrored crop. A DR network is not mirror-symmetric (on real faces the DR of a mirrored crop
differs from the mirrored DR by ~50-70% of its RMS), so flipping stored DR maps would hand the
task network inputs no DR network ever produces; `train-task` mirrors a sample by flipping its
image channels and taking these DRs instead.

``--precision`` (drkit.precision) runs the DR networks under autocast; the maps are cast back to
float32 and stored as float16 as at fp32, and the store's params record the precision (one store,
one precision; stores made before it read as fp32). ``--shard I/N`` takes every N-th video of
the face store (sorted ids) from the I-th: N jobs fill one store, each video under its claim
(drkit.store), so jobs may run at once and a killed job's rerun redoes only unfinished videos.

``--engine`` (drkit.export): ``onnxruntime`` runs the stack as one ONNX graph exported in memory
(fp32; maps within ~1e-5 of torch's, below their float16 storage); ``auto`` (default) picks it
when onnxruntime is installed and the run is on the CPU at fp32, else torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import log
from .. import precision as P
from ..batching import images_to_tensor
from ..configs import GenDRConfig
from ..contracts import DRStoreParams, Result, dr_arrays
from ..errors import DrkitError
from ..export import resolve_engine
from ..mdr import channel_names, load_mdr
from ..nets import pick_device
from ..sources import select_shard
from ..store import (
    VideoWriter,
    create_store,
    is_done,
    open_store,
    write_claimed,
)


@dataclass
class GenDRResult(Result):
    store: str
    videos: int                 # videos written by this run
    frames: int
    channels: list[str]


def run(cfg: GenDRConfig) -> GenDRResult:
    if not cfg.dr and cfg.no_image:
        raise DrkitError("nothing to write: give at least one --dr checkpoint or drop --no-image")
    if not cfg.dr and not cfg.map_size:
        raise DrkitError("without --dr checkpoints, give --map-size (the side of the stored maps)")
    device = pick_device(cfg.device)
    precision = P.check(cfg.precision, device, warn=False)   # a bad name or fp16 on a CPU fails here, before any work
    engine = resolve_engine(cfg.engine, device, precision, cfg.compile)   # torch | onnxruntime; so does this
    P.warn_if_slow(precision, device)
    src = open_store(cfg.store, "faces")
    mdr, refs, nets = load_mdr(cfg.dr, not cfg.no_image, cfg.map_size)
    mdr.to(device).eval()
    mdr.prepare(cfg.channels_last, cfg.compile)
    graphs = _graphs(mdr, src.typed_params.crop_size) if engine == "onnxruntime" else None
    names = channel_names([n.config for n in nets], not cfg.no_image)
    C, S = len(names), mdr.map_size
    params = DRStoreParams(map_size=S, channels=names, image=not cfg.no_image,
                           source_store=str(src.path.resolve()), source_params=src.typed_params.to_dict(),
                           checkpoints=refs, precision=precision, engine=engine)
    out = create_store(cfg.out, "dr", params)
    if [c.sha256_16 for c in out.typed_params.checkpoints] != [c.sha256_16 for c in refs]:
        raise DrkitError(f"{out.path}: was made with other DR checkpoints; write to a new -o")
    made_at = out.typed_params.precision   # stores made before --precision: fp32
    if made_at != precision:
        raise DrkitError(f"{out.path}: was made with --precision {made_at}; rerun with --precision "
                         f"{made_at} or write to a new -o (one store holds one precision)")
    made_by = out.typed_params.engine      # stores made before --engine: torch
    if made_by != engine:
        raise DrkitError(f"{out.path}: was made with --engine {made_by}; rerun with --engine {made_by} or "
                         "write to a new -o (one store, one engine: their maps differ in the last float16 digit)")
    n_dr = C - (0 if cfg.no_image else 3)
    spec = dr_arrays(C, S, n_dr if cfg.mirror else 0)
    listed = out.root.attrs.get("videos", {})
    mine = select_shard(src.videos, cfg.shard)   # sorted ids: the same split in every job
    todo = [v for v in mine if cfg.overwrite or not is_done(out, v, deep=True)]
    for arr, why in (("landmarks", "needed by `train-task --arch hg_hmr`"),
                     ("mdr_mirror", "mirrored DRs, needed to mirror DR inputs in `train-task`")):
        if arr not in spec:
            continue
        lacking = [v for v in listed if v not in todo and not (out.path / v / arr).exists()]
        if lacking:
            log.warn(f"{out.path}: {len(lacking)} video(s) made by an older or --no-mirror gen-dr have no "
                     f"{arr} ({why}); rerun with --overwrite to add them")
    part = f" (shard {cfg.shard}: {len(mine)})" if cfg.shard else ""
    log.info(f"gen-dr: {len(src.videos)} videos{part}, {len(todo)} to do, {C} channels at {S} px, "
             f"{precision}, {engine} -> {out.path}")
    done = {"frames": 0, "videos": 0}
    with log.progress() as prog, torch.no_grad():
        task = prog.add_task("frames", total=sum(src.video_info(v)["n_frames"] for v in todo))

        def attempt(vid: str, wait: bool) -> bool:
            """Write one video under its claim; False if another live run holds it."""
            r = write_claimed(out.path, vid, "dr", lambda: _write_video(
                src.video(vid), out.path, vid, mdr, spec, device, cfg.batch_size,
                lambda n: prog.advance(task, n), precision, graphs), overwrite=cfg.overwrite, wait=wait)
            if r.status == "skipped":   # finished by another run meanwhile
                prog.advance(task, src.video_info(vid)["n_frames"])
            elif r.status == "written":
                done["frames"] += r.value
                done["videos"] += 1
            return r.status != "busy"

        busy = [v for v in todo if not attempt(v, wait=False)]
        for vid in busy:   # videos another live run was writing: wait for it, finish what it left
            log.info(f"{vid}: being written by another run; waiting for it")
            attempt(vid, wait=True)
    frames_done = done["frames"]
    log.info(f"gen-dr: wrote {frames_done} frames of {done['videos']} videos")
    return GenDRResult(str(out.path), done["videos"], frames_done, names)


def _graphs(mdr, crop_size: int):
    """The MDR stack exported for onnxruntime (drkit.export.SizedGraphs), the store's crop size
    exported now, so a failure shows before any work."""
    from ..export import SizedGraphs, mdr_onnx
    graphs = SizedGraphs(lambda size: mdr_onnx(mdr, size))
    graphs.engine(crop_size)
    return graphs


def _write_video(g, out_path, vid: str, mdr, spec, device, batch_size: int, advance,
                 precision: str = "fp32", graphs=None) -> int:
    """Stack every frame of one face-store video (group ``g``) into the DR store; returns frames.
    The networks run under autocast at ``precision``; the MDR comes back as float32 and is
    stored as float16, as at fp32. With ``graphs`` (drkit.export.SizedGraphs) onnxruntime runs
    the stack instead."""
    with VideoWriter(out_path, vid, spec, "dr") as w:
        n, crop_size = g["frames"].shape[0], g["frames"].shape[1]
        scale = spec["mdr"].tail[-1] / crop_size
        for i in range(0, n, batch_size):
            crops = np.asarray(g["frames"][i:i + batch_size])
            if graphs is not None:
                y = graphs(crops)["mdr"].astype(np.float16)
            else:
                x = images_to_tensor(crops).to(device)
                with P.autocast(precision, device):
                    y = mdr(x).float().cpu().numpy().astype(np.float16)
            lm = (np.asarray(g["landmarks"][i:i + len(y)], np.float32) + 0.5) * scale - 0.5
            rows = {"mdr": y, "frame_index": g["frame_index"][i:i + len(y)], "landmarks": lm}
            if "mdr_mirror" in spec and graphs is not None:   # the stack of the mirrored crop, less its image
                rows["mdr_mirror"] = graphs(crops[:, :, ::-1])["mdr"][:, 3 if mdr.image else 0:].astype(np.float16)
            elif "mdr_mirror" in spec:   # the DRs of the mirrored crop (image channels come first)
                with P.autocast(precision, device):
                    rows["mdr_mirror"] = mdr.drs(x.flip(-1)).float().cpu().numpy().astype(np.float16)
            w.append(**rows)
            advance(len(y))
        w.commit({"fps": g.attrs["fps"], "source": g.attrs.get("source"),
                  "n_source_frames": g.attrs.get("n_source_frames"), "precision": precision})
    return n
