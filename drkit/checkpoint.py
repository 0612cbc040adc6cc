"""Checkpoint files: the typed record, atomic save, safe load, model rebuild (docs/formats.md).

A ``.pt`` file is a dict of tensors and JSON-able values, so it loads with
``torch.load(..., weights_only=True)`` and no pickle code ever runs. This module does not import
the training loop: rank-eval, gen-dr and predict only read checkpoints.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .contracts import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_FORMAT_VERSION,
    READABLE_CHECKPOINT_VERSIONS,
    DRConfig,
    DRNet,
    ModelSpec,
    TaskConfig,
    migrate_checkpoint,
)
from .errors import DrkitError
from .fsutil import atomic_path
from .nets import create_model


@dataclass
class Checkpoint:
    """One checkpoint: ``kind`` "dr" (config: DRConfig) or "task" (config: TaskConfig, and the
    DR networks its inputs are made with in ``dr_nets``)."""
    kind: str
    model: ModelSpec
    config: DRConfig | TaskConfig
    state_dict: dict[str, torch.Tensor]
    train_state: dict[str, Any] = field(default_factory=dict)
    dr_nets: list[DRNet] = field(default_factory=list)
    optimizer: dict | None = None
    rng: torch.Tensor | None = None
    aux: dict | None = None               # last.pt only: extra training state (train.fit's ``aux``)
    # task bundles trained with a per-video norm (0.3.0+): the mean over the training videos of each
    # video's mean MDR stack (C, M, M), what predict subtracts for a still image (no video to average)
    population_mean: torch.Tensor | None = None
    drkit_version: str = __version__
    path: Path | None = None              # where it was loaded from (not stored)

    def to_dict(self) -> dict:
        d = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION,
             "drkit_version": self.drkit_version, "kind": self.kind, "model": self.model.to_dict(),
             "config": self.config.to_dict(), "state_dict": self.state_dict,
             "train_state": dict(self.train_state)}
        if self.kind == "task":
            d["dr_nets"] = [n.to_dict() for n in self.dr_nets]
        if self.optimizer is not None:
            d["optimizer"] = self.optimizer
        if self.rng is not None:
            d["rng"] = self.rng
        if self.aux is not None:
            d["aux"] = self.aux
        if self.population_mean is not None:
            d["population_mean"] = self.population_mean
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "checkpoint") -> "Checkpoint":
        d = migrate_checkpoint(d)
        kind = d.get("kind")
        if kind not in ("dr", "task"):
            raise DrkitError(f"{where}: unknown checkpoint kind {kind!r}")
        for k in ("model", "config", "state_dict"):
            if k not in d:
                raise DrkitError(f"{where}: no '{k}' in the checkpoint; the file is damaged")
        conf = (DRConfig if kind == "dr" else TaskConfig).from_dict(d["config"], f"{where}: config")
        return cls(kind=kind, model=ModelSpec.from_dict(d["model"], f"{where}: model"), config=conf,
                   state_dict=d["state_dict"], train_state=dict(d.get("train_state") or {}),
                   dr_nets=[DRNet.from_dict(n, f"{where}: dr_nets[{i}]") for i, n in enumerate(d.get("dr_nets", []))],
                   optimizer=d.get("optimizer"), rng=d.get("rng"), aux=d.get("aux"),
                   population_mean=d.get("population_mean"), drkit_version=d.get("drkit_version", "?"))

    def dr_net(self) -> DRNet:
        """This DR checkpoint as the DR network a task bundle embeds (weights included)."""
        return DRNet(self.model, self.state_dict, self.config)

    def build_model(self) -> torch.nn.Module:
        """The network in eval mode, weights loaded."""
        return build_model(self.model, self.state_dict, self.path)


def build_model(spec: ModelSpec, state_dict: dict, where: Any = "checkpoint") -> torch.nn.Module:
    try:
        m = create_model(spec.name, **spec.kwargs)
    except (KeyError, TypeError, ValueError) as e:
        raise DrkitError(f"{where}: cannot build model {spec.name!r} ({e}); made by a newer drkit?") from e
    try:
        m.load_state_dict(_strip_prefixes(state_dict))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise DrkitError(f"{where}: weights do not fit model {spec.name!r} ({first})") from e
    return m.eval()


def _strip_prefixes(sd: dict) -> dict:
    """Keys of a DDP (``module.``) or torch.compile (``_orig_mod.``) model as plain keys."""
    out = {}
    for k, v in sd.items():
        for p in ("module.", "_orig_mod."):
            while k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def save_checkpoint(ck: Checkpoint | dict, path: str | os.PathLike) -> None:
    """Write atomically: ``path`` is the old file or the complete new one, never a torn write. A
    failed write (a full disk) is a DrkitError naming ``path``; the old file stays as it was."""
    obj = ck.to_dict() if isinstance(ck, Checkpoint) else ck
    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except (RuntimeError, OSError) as e:   # torch's zip writer reports a full disk as RuntimeError
        import shutil
        free = shutil.disk_usage(Path(path).parent).free
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DrkitError(f"{path}: could not write the checkpoint ({free / 2**20:.0f} MB free on that disk; "
                         f"{first[:120]}); the previous {Path(path).name}, if any, is intact") from e


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint file, ``best.pt`` (else ``last.pt``) of a run folder, or the verified file of
    a shipped model named ``pretrained:NAME`` (drkit.pretrained)."""
    from . import pretrained
    if pretrained.is_pretrained(path):
        return pretrained.path_of(path)
    p = Path(path)
    if p.is_dir():
        p = p / "best.pt" if (p / "best.pt").is_file() else p / "last.pt"
    if not p.is_file():
        raise DrkitError(f"{path}: no checkpoint (expected a .pt file or a run folder with best.pt)")
    return p


def load_checkpoint(path: str | os.PathLike, kind: str | None = None) -> Checkpoint:
    """Load a checkpoint file, or ``best.pt`` of a run folder, safely (weights_only), validated;
    version-1 files (drkit 0.1.0) are converted."""
    p = resolve(path)
    d = load_file(p, "not a drkit checkpoint")
    if not isinstance(d, dict) or d.get("format") != CHECKPOINT_FORMAT:
        raise DrkitError(f"{p}: not a drkit checkpoint")
    if d.get("format_version") not in READABLE_CHECKPOINT_VERSIONS:
        raise DrkitError(f"{p}: checkpoint format version {d.get('format_version')}, this drkit "
                         f"({__version__}) reads {', '.join(map(str, READABLE_CHECKPOINT_VERSIONS))}; "
                         "upgrade drkit or retrain")
    if kind and d.get("kind") != kind:
        raise DrkitError(f"{p}: a '{d.get('kind')}' checkpoint, expected a '{kind}' checkpoint")
    ck = Checkpoint.from_dict(d, str(p))
    ck.path = p
    _check_finite(ck)
    return ck


def load_file(path: str | os.PathLike, what: str) -> Any:
    """The contents of a torch file, read safely: its zip CRCs checked (``_check_crc``), then
    ``torch.load(weights_only=True)`` (no pickle code runs) with torch's own warnings kept out of
    drkit's one-line errors. Anything unreadable is a DrkitError: ``path: what (...)``. Every
    .pt drkit reads goes through here: checkpoints, --init weights, --perceptual-weights."""
    p = Path(path)
    if p.is_dir() or not p.exists():
        raise DrkitError(f"{p}: {'is a folder' if p.is_dir() else 'no such file'} ({what.split(';')[0]})")
    _check_crc(p)
    try:
        with warnings.catch_warnings():   # torch warns about legacy / unsafe files before failing
            warnings.simplefilter("ignore")
            return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DrkitError(f"{p}: {what} (it cannot be read as one safely: {type(e).__name__})") from e


def _check_crc(p: Path) -> None:
    """A DrkitError if a zip-format checkpoint (every torch.save since 1.6) holds a member whose
    CRC-32 does not match its bytes: torch's reader does not check them, so a damaged file would
    load with wrong weights."""
    import zipfile
    try:
        if not zipfile.is_zipfile(p):
            return
        with zipfile.ZipFile(p) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise DrkitError(f"{p}: damaged checkpoint file ({e}); restore it from a copy or retrain") from e
    if bad:
        raise DrkitError(f"{p}: damaged checkpoint file (the CRC of its part '{bad}' does not match); "
                         "restore it from a copy or retrain")


def _check_finite(ck: Checkpoint) -> None:
    """A DrkitError naming the file and the tensor if any weight (of the network, or of a bundle's
    DR networks) is NaN or infinite: such a network only outputs NaN."""
    parts = [("", ck.state_dict)] + [(f"dr_nets[{i}].", n.state_dict) for i, n in enumerate(ck.dr_nets)]
    for prefix, sd in parts:
        for k, v in sd.items():
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
                raise DrkitError(f"{ck.path}: weight {prefix}{k} holds NaN or infinite values (a damaged "
                                 "file, or saved from a diverged run); restore it from a copy or retrain")


def sha256_16(path: str | os.PathLike) -> str:
    """First 16 hex digits of a file's SHA-256 (identifies the checkpoints a store was made with)."""
    from .fsutil import sha256_file
    return sha256_file(path)[:16]
