"""Models that ship with drkit, usable by name wherever a checkpoint is accepted:

- DR networks ``pretrained:T3``, ``pretrained:T5``, ``pretrained:T9`` (and ``-slim`` variants):
  `drkit gen-dr FACES -o MDR --dr pretrained:T5`, `drkit rank-eval pretrained:T9 FACES`;
- the multi-scale DR network ``pretrained:ms-slim`` (one UNet, heads T5S2, T3S2, T9S4: one
  forward pass gives the whole MDR), trained on every person of ../shared/data/faces, with the
  leave-one-source-out accuracy as its held-out figure: `drkit gen-dr FACES -o MDR --dr pretrained:ms-slim`;
- task bundles ``pretrained:au`` (image + DRs, every AU intensity OpenFace 2.2 reports) and its
  still-image twin ``pretrained:au-si``: `drkit predict pretrained:au clip.mp4 -o au.csv`.

``MANIFEST.json`` (beside the weights) describes each model (a :class:`PretrainedModel`): its file
and SHA-256, kind, what it was trained on and with which command, its licence, and its accuracy
on people it never saw beside the baselines. Every load checks the file against its SHA-256, so a
damaged or altered install is refused rather than silently used. `drkit models` prints it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import DrkitError

PREFIX = "pretrained:"
HERE = Path(__file__).resolve().parent


@dataclass
class PretrainedModel:
    """One shipped model, as the manifest describes it (cf. timm's PretrainedCfg)."""
    name: str
    file: str
    sha256: str
    kind: str = "dr"                    # "dr" (a DR network) or "task" (a predict bundle)
    T: int | None = None                # dr: window half-length and stride (frames at 25 fps)
    stride: int | None = None
    net_size: int | None = None
    heads: list[list[int]] = field(default_factory=list)   # dr, multi-scale: [T, stride] of each DR, in
    #   channel order (T and stride above are the first's); held_out then has one entry per head ("T5S2")
    trained_on: str | None = None       # when not the manifest's (top-level) training set
    model: dict[str, Any] = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)     # task: what it predicts
    input: str | None = None            # task: si | mdr
    command: str | None = None          # how it was trained
    held_out: dict[str, Any] = field(default_factory=dict)   # accuracy on people it never saw
    licence: str | None = None          # of the weights (else the manifest's)
    tracking: dict[str, Any] = field(default_factory=dict)   # task: how predict tracks faces unless told
    #   (reuse_mad, redetect_region; else as the bundle's training store was tracked)
    description: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def windows(self) -> list[tuple[int, int]]:
        """(T, stride) of each DR the network outputs (dr models)."""
        return [(int(t), int(s)) for t, s in self.heads] if self.heads else [(self.T, self.stride)]

    def held_out_of(self, T: int, stride: int) -> dict[str, Any]:
        """Held-out accuracy of the DR at (T, stride): a multi-scale model's per-head entry."""
        return self.held_out.get(f"T{T}S{stride}", {}) if self.heads else self.held_out

    @property
    def width(self) -> int | None:
        return self.model.get("kwargs", {}).get("base")

    @classmethod
    def from_dict(cls, name: str, d: dict) -> "PretrainedModel":
        if not isinstance(d, dict) or "file" not in d or "sha256" not in d:
            raise DrkitError(f"{HERE / 'MANIFEST.json'}: entry {name!r} lacks file or sha256; reinstall drkit")
        known = {f for f in cls.__dataclass_fields__ if f not in ("name", "extra")}
        return cls(name=name, **{k: v for k, v in d.items() if k in known},
                   extra={k: v for k, v in d.items() if k not in known})


@lru_cache(maxsize=1)
def manifest() -> dict:
    """The manifest as stored: ``{"models": {name: {...}}, ...}`` (empty models when none ship)."""
    p = HERE / "MANIFEST.json"
    if not p.is_file():
        return {"models": {}}
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise DrkitError(f"{p}: unreadable ({e}); reinstall drkit") from e


def models(kind: str | None = None) -> list[PretrainedModel]:
    """The shipped models (of one ``kind``), sorted by name."""
    out = [PretrainedModel.from_dict(n, d) for n, d in sorted(manifest()["models"].items())]
    return [m for m in out if kind is None or m.kind == kind]


def is_pretrained(ref: str | os.PathLike) -> bool:
    return str(ref).startswith(PREFIX)


def names() -> list[str]:
    return sorted(manifest()["models"])


def tracking_of(ref: str | os.PathLike) -> dict:
    """How predict tracks faces for ``ref`` unless told: a shipped bundle's manifest ``tracking``
    (reuse_mad, max_reuse, redetect_region); {} for anything else (its store's settings apply)."""
    return dict(info(ref).tracking) if is_pretrained(ref) else {}


def info(ref: str | os.PathLike) -> PretrainedModel:
    """The manifest record of ``pretrained:NAME`` (or NAME)."""
    name = str(ref)[len(PREFIX):] if is_pretrained(ref) else str(ref)
    d = manifest()["models"].get(name)
    if d is None:
        known = ", ".join(PREFIX + n for n in names()) or "none in this install"
        raise DrkitError(f"{ref}: no such pretrained model (known: {known})")
    return PretrainedModel.from_dict(name, d)


@lru_cache(maxsize=None)
def _verified(name: str, mtime_ns: int, size: int) -> Path:
    from ..fsutil import sha256_file
    m = info(name)
    p = HERE / m.file
    got = sha256_file(p)
    if got != m.sha256:
        raise DrkitError(f"{PREFIX}{name}: {p} has SHA-256 {got[:16]}..., the manifest says "
                         f"{m.sha256[:16]}...; the install is damaged or altered: reinstall drkit")
    return p


def path_of(ref: str | os.PathLike) -> Path:
    """The verified weights file of ``pretrained:NAME`` (DrkitError naming the known models for an
    unknown name, or when the file's SHA-256 differs from the manifest's)."""
    m = info(ref)
    p = HERE / m.file
    if not p.is_file():
        raise DrkitError(f"{ref}: {p} is missing; reinstall drkit")
    st = p.stat()
    return _verified(m.name, st.st_mtime_ns, st.st_size)
