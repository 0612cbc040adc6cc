"""The task-network architectures of `drkit train-task --arch`, each declared once: its network
(a name in drkit.nets.REGISTRY), its default width, what it accepts, its help text, and how its
settings become the network's kwargs. The CLI's choices and help, the configs' default widths
and train-task read them from here (cf. timm's ``register_model``). Light to import (no torch):
the CLI lists the choices without loading torch.

Adding an architecture: its network class in drkit.nets (registered by name in ``REGISTRY``),
then one ``register(ArchSpec(...))`` below, and a test. Nothing else changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from .errors import DrkitError


@dataclass(frozen=True)
class ArchContext:
    """What a builder may use: the input channels and targets, the run's settings."""
    in_ch: int
    n_out: int
    width: int | None
    dropout: float | None
    task: str
    targets: list[str]
    stacks: int = 1
    heatmap_sigma: float = 0.06
    dr_model_kwargs: dict[str, Any] | None = None   # the bundle's first DR network's kwargs, if any
    n_image: int = 0                                 # how many of the input channels (the first) are the image


@dataclass(frozen=True)
class ArchSpec:
    name: str                                    # the --arch value
    network: str                                 # drkit.nets.REGISTRY name
    help: str
    build: Callable[[ArchContext], dict[str, Any]]   # the network's kwargs
    width: int | None = 16                       # default --width (None: the network's own)
    dropout: bool = True                         # takes --dropout
    tasks: tuple[str, ...] = ("au", "affect")
    own_settings: tuple[str, ...] = field(default=())   # TrainTaskConfig fields only this arch uses


ARCHS: dict[str, ArchSpec] = {}


def register(spec: ArchSpec) -> ArchSpec:
    ARCHS[spec.name] = spec
    return spec


def _drop(c: ArchContext) -> dict:
    return {} if c.dropout is None else {"dropout": float(c.dropout)}


def _small(c: ArchContext) -> dict:
    return {"in_ch": c.in_ch, "n_out": c.n_out, "width": c.width, **_drop(c)}


def _vgg16(c: ArchContext) -> dict:
    return {"in_ch": c.in_ch, "n_out": c.n_out, **_drop(c)}


def _hg_hmr(c: ArchContext) -> dict:
    from .hourglass import au_centres, canonical_au
    if c.stacks < 1 or not 0 < c.heatmap_sigma <= 1 or not c.width or c.width < 1:
        raise DrkitError(f"--arch hg_hmr: --stacks must be >= 1, --heatmap-sigma in (0, 1] (a fraction of the "
                         f"heatmap side) and --width >= 1; found {c.stacks}, {c.heatmap_sigma}, {c.width}")
    return {"in_ch": c.in_ch, "n_out": c.n_out, "width": c.width, "stacks": c.stacks, "depth": 3,
            "sigma": float(c.heatmap_sigma), "aus": [canonical_au(t) for t in c.targets],
            "centres": au_centres(c.targets)}


def _dr_encoder(c: ArchContext) -> dict:
    if c.dr_model_kwargs is None:
        raise DrkitError("--arch dr_encoder starts from a DR network's encoder: train on a DR store made "
                         "with at least one --dr (e.g. `drkit gen-dr FACES -o S --dr pretrained:T5`)")
    kw = c.dr_model_kwargs
    return {"in_ch": c.in_ch, "n_out": c.n_out, "base": kw.get("base", 16), "depth": kw.get("depth", 3), **_drop(c)}


def _small_drfeat(c: ArchContext) -> dict:
    if not 0 < c.n_image < c.in_ch:
        raise DrkitError("--arch small_drfeat takes the image and DRs (--input mdr on a DR store made with the "
                         f"image and at least one --dr); this input has {c.n_image} image channels of {c.in_ch}")
    return {**_small(c), "n_image": c.n_image}


register(ArchSpec("small", "small_cnn", "a small CNN that trains in minutes on a CPU (four conv blocks, an MLP head)",
                  _small, width=16))
register(ArchSpec("vgg16", "vgg16", "VGG-16 (the paper's affect network)", _vgg16, width=None))
register(ArchSpec("hg_hmr", "hg_hmr", "HG-HMR: an hourglass regressing one heatmap per AU at its facial "
                  "landmarks (AU targets, a DR store with landmarks)", _hg_hmr, width=32, dropout=False,
                  tasks=("au",), own_settings=("stacks", "heatmap_sigma")))
register(ArchSpec("small_drfeat", "small_drfeat", "the small CNN on the image, the DR channels only as "
                  "features beside its own (each averaged over a 4x4 grid of the face; --input mdr)",
                  _small_drfeat, width=16))
register(ArchSpec("dr_encoder", "dr_encoder", "the store's first DR network's UNet encoder, initialised from "
                  "it, with a small head", _dr_encoder, width=None))

ArchName = Literal[tuple(ARCHS)]   # the --arch choices (drkit.contracts.Arch)


def arch_help() -> str:
    return "; ".join(f"{a.name}: {a.help}" for a in ARCHS.values()) + "."


def default_width(arch: str) -> int | None:
    spec = ARCHS.get(arch)
    return spec.width if spec else None


def model_spec(arch: str, c: ArchContext):
    """The drkit.contracts.ModelSpec of ``arch`` for these inputs and settings, validated."""
    from .contracts import ModelSpec
    spec = ARCHS.get(arch)
    if spec is None:
        from .errors import UsageError
        raise UsageError(f"--arch {arch!r}: choose one of {', '.join(ARCHS)}")
    if c.task not in spec.tasks:
        raise DrkitError(f"--arch {arch} is for --task {' or '.join(spec.tasks)}, not --task {c.task}: "
                         f"use --arch small or vgg16")
    if c.dropout is not None:
        if not spec.dropout:
            raise DrkitError(f"--dropout: {arch} has no dropout")
        if not 0 <= c.dropout < 1:
            raise DrkitError(f"--dropout {c.dropout}: expected a probability in [0, 1)")
    return ModelSpec(spec.network, spec.build(c))
