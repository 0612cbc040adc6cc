"""`drkit gen-dr`: face store -> DR store (SDR / MDR inputs for train-task, paper Sec. 3.3).

For every frame: the image itself (level T=0, 3 channels in [0, 1]) stacked with the DR of each
checkpoint given (3 channels each): image + DR(T=5) = 6 channels (AU setting), image + DR(T=3)
+ DR(T=5) = 9 channels (affect setting); ``--no-image`` keeps the DRs only (SDR). Each DR
network runs at its own training size; its output is resized to the store's ``size``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import log
from ..errors import DrkitError
from ..nets import pick_device
from ..store import ArraySpec, VideoWriter, create_store, is_complete, open_store
from ..train import load_checkpoint, model_from_checkpoint


@dataclass
class GenDRConfig:
    store: str
    out: str
    dr: list[str]
    no_image: bool = False
    size: int | None = None          # default: the first checkpoint's training size
    batch_size: int = 32
    device: str = "auto"
    overwrite: bool = False


def fingerprint(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


class MDR(torch.nn.Module):
    """Image (B, 3, H, W) in [0, 1] -> stacked [image?, DR_1, DR_2, ...] at ``size``.
    Used by gen-dr and inside predict bundles, so both compute exactly the same input."""

    def __init__(self, nets: list[torch.nn.Module], net_sizes: list[int], size: int, image: bool = True):
        super().__init__()
        self.nets = torch.nn.ModuleList(nets)
        self.net_sizes, self.size, self.image = list(net_sizes), size, image

    @staticmethod
    def resize(x: torch.Tensor, s: int) -> torch.Tensor:
        if x.shape[-1] == s and x.shape[-2] == s:
            return x
        return F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [self.resize(x, self.size)] if self.image else []
        for net, s in zip(self.nets, self.net_sizes):
            parts.append(self.resize(net(self.resize(x, s)), self.size))
        return torch.cat(parts, 1)


def channel_names(drs: list[dict], image: bool) -> list[str]:
    names = ["image_r", "image_g", "image_b"] if image else []
    for k, d in enumerate(drs):
        names += [f"dr{k}_T{d['T']}_S{d['stride']}_{c}" for c in "rgb"]
    return names


def load_mdr(paths: list[str], image: bool, size: int | None) -> tuple[MDR, list[dict]]:
    cks = [load_checkpoint(p, "dr") for p in paths]
    size = size or cks[0]["config"]["size"]
    info = [{"path": ck["path"], "sha256_16": fingerprint(ck["path"]), "T": ck["config"]["T"],
             "stride": ck["config"]["stride"], "size": ck["config"]["size"], "model": ck["model"]}
            for ck in cks]
    return MDR([model_from_checkpoint(ck) for ck in cks], [i["size"] for i in info], size, image), info


def run(cfg: GenDRConfig) -> dict:
    if not cfg.dr and cfg.no_image:
        raise DrkitError("nothing to write: give at least one --dr checkpoint or drop --no-image")
    src = open_store(cfg.store, "faces")
    mdr, info = load_mdr(cfg.dr, not cfg.no_image, cfg.size)
    device = pick_device(cfg.device)
    mdr.to(device).eval()
    names = channel_names(info, not cfg.no_image)
    C, S = len(names), mdr.size
    params = {"size": S, "channels": names, "image": not cfg.no_image, "source_store": str(src.path.resolve()),
              "source_params": src.params,
              "checkpoints": [{k: v for k, v in i.items() if k != "path"} | {"path": str(Path(i["path"]).resolve())}
                              for i in info]}
    out = create_store(cfg.out, "dr", params, must_match=("size", "channels"))
    if [c["sha256_16"] for c in out.params["checkpoints"]] != [c["sha256_16"] for c in info]:
        raise DrkitError(f"{out.path}: was made with other DR checkpoints; write to a new -o")
    spec = {"mdr": ArraySpec((C, S, S), "float16", ("frame", "channel", "y", "x"),
                             max(8, min(64, (2 << 20) // (2 * C * S * S)))),
            "frame_index": ArraySpec((), "int64", ("frame",), 1024)}
    todo = [v for v in src.videos if cfg.overwrite or not is_complete(out.path, v)]
    log.info(f"gen-dr: {len(src.videos)} videos, {len(todo)} to do, {C} channels at {S} px -> {out.path}")
    frames_done = 0
    with log.progress() as prog, torch.no_grad():
        task = prog.add_task("frames", total=sum(src.video_info(v)["n_frames"] for v in todo))
        for vid in todo:
            g = src.video(vid)
            w = VideoWriter(out.path, vid, spec)
            try:
                n = g["frames"].shape[0]
                for i in range(0, n, cfg.batch_size):
                    x = torch.from_numpy(np.asarray(g["frames"][i:i + cfg.batch_size]))
                    x = x.permute(0, 3, 1, 2).float().div_(255).to(device)
                    y = mdr(x).cpu().numpy().astype(np.float16)
                    w.append(mdr=y, frame_index=g["frame_index"][i:i + len(y)])
                    prog.advance(task, len(y))
                w.commit({"drkit": {"kind": "dr-video", "schema_version": 1}, "fps": g.attrs["fps"],
                          "source": g.attrs.get("source"), "n_source_frames": g.attrs.get("n_source_frames")})
                frames_done += n
            except BaseException:
                w.abort()
                raise
    log.info(f"gen-dr: wrote {frames_done} frames of {len(todo)} videos")
    return {"store": str(out.path), "videos": len(todo), "frames": frames_done, "channels": names}
