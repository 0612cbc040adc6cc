"""The MDR stack (paper Sec. 3.3): a face crop and the DRs of one or more DR networks, stacked
as channels at one ``map_size``. `drkit gen-dr` writes it into DR stores and `drkit predict`
computes it on the fly (drkit.predictor), with this one module, so both see the same input.

Channels: ``image_r, image_g, image_b`` (unless the image is left out), then
``dr<k>_T<T>_S<S>_{r,g,b}`` per DR network. Each network runs at its own ``net_size``; its
output is resized to ``map_size`` (bilinear, antialiased).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .checkpoint import build_model, load_checkpoint, sha256_16
from .contracts import DRConfig, DRNet, DRNetRef
from .pretrained import is_pretrained


def resize(x: torch.Tensor, side: int) -> torch.Tensor:
    if x.shape[-1] == side and x.shape[-2] == side:
        return x
    return F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)


class MDR(torch.nn.Module):
    """Image (B, 3, H, W) in [0, 1] -> stacked [image?, DR_1, DR_2, ...] (B, C, map_size, map_size)."""

    def __init__(self, nets: list[torch.nn.Module], net_sizes: list[int], map_size: int, image: bool = True):
        super().__init__()
        self.nets = torch.nn.ModuleList(nets)
        self.net_sizes, self.map_size, self.image = list(net_sizes), map_size, image
        self._run: list | None = None      # what prepare() made of the nets (None: the nets)
        self.channels_last = False

    resize = staticmethod(resize)

    def prepare(self, channels_last: bool = False, compile: bool = False) -> "MDR":
        """Run the DR networks in channels_last memory format and/or through ``torch.compile``
        (drkit.precision.prepare); ``self.nets`` stay the plain modules (state dicts unchanged)."""
        from .precision import prepare
        self.channels_last = channels_last
        self._run = [prepare(n, channels_last, compile) for n in self.nets] if (channels_last or compile) else None
        return self

    def drs(self, x: torch.Tensor) -> torch.Tensor:
        """The DR channels only (B, 3 * len(nets), map_size, map_size), float32 whatever the
        autocast precision the networks ran at."""
        nets = self._run or list(self.nets)
        out, sized = [], {}
        for net, s in zip(nets, self.net_sizes):
            xs = sized.get(s)
            if xs is None:       # networks of one net_size share the resized input (nets never modify it)
                xs = resize(x, s)
                if self.channels_last:
                    xs = xs.contiguous(memory_format=torch.channels_last)
                sized[s] = xs
            # resize in the standard layout: the antialiased resize of a channels_last tensor is slow
            out.append(resize(net(xs).float().contiguous(), self.map_size))
        return torch.cat(out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [resize(x, self.map_size)] if self.image else []
        if len(self.nets):
            parts.append(self.drs(x))
        return torch.cat(parts, 1)

    @classmethod
    def from_dr_nets(cls, nets: list[DRNet], map_size: int, image: bool) -> "MDR":
        """From the DR networks embedded in a task bundle."""
        return cls([build_model(n.model, n.state_dict, "dr_nets") for n in nets],
                   [n.config.net_size for n in nets], map_size, image)


def channel_names(configs: list[DRConfig], image: bool) -> list[str]:
    """``image_r/g/b`` then ``dr<k>_T<T>_S<S>_r/g/b`` for each DR, k counting DRs over all networks
    (a multi-scale network gives one DR per head)."""
    names = ["image_r", "image_g", "image_b"] if image else []
    k = 0
    for c in configs:
        for T, S in c.windows:
            names += [f"dr{k}_T{T}_S{S}_{ch}" for ch in "rgb"]
            k += 1
    return names


def load_mdr(paths: list[Path], image: bool, map_size: int | None) -> tuple[MDR, list[DRNetRef], list[DRNet]]:
    """The MDR of DR checkpoints ``paths`` (files, run folders or ``pretrained:NAME``).
    ``map_size`` defaults to the first network's ``net_size``. Also returns what a DR store records of each checkpoint and
    what a task bundle embeds of it."""
    cks = [load_checkpoint(p, "dr") for p in paths]
    map_size = map_size or (cks[0].config.net_size if cks else None)
    if map_size is None:
        raise ValueError("map_size is needed when there is no DR checkpoint")
    # a shipped model is recorded by name (its file lives inside the drkit install)
    refs = [DRNetRef(path=str(p) if is_pretrained(p) else str(ck.path.resolve()), sha256_16=sha256_16(ck.path),
                     T=ck.config.T, stride=ck.config.stride, net_size=ck.config.net_size, model=ck.model.to_dict())
            for p, ck in zip(paths, cks)]
    nets = [ck.dr_net() for ck in cks]
    mdr = MDR([ck.build_model() for ck in cks], [ck.config.net_size for ck in cks], map_size, image)
    return mdr, refs, nets
