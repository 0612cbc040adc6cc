"""DR networks that ship with drkit, usable by name wherever a DR checkpoint is accepted:
``pretrained:T3``, ``pretrained:T5``, ``pretrained:T9`` (`drkit gen-dr FACES -o MDR --dr
pretrained:T5`, `drkit rank-eval pretrained:T9 FACES --T 9 --stride 4`).

``MANIFEST.json`` (beside the weights) lists each model's file, SHA-256, window (T, stride),
net_size, the data and command it was trained with, and its ranking accuracy on people it never
saw beside the identity baseline. Every load checks the file against its SHA-256, so a damaged or
altered install is refused rather than silently used. `drkit models` prints the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

from ..errors import DrkitError

PREFIX = "pretrained:"
HERE = Path(__file__).resolve().parent


def is_pretrained(ref: str | os.PathLike) -> bool:
    return str(ref).startswith(PREFIX)


@lru_cache(maxsize=1)
def manifest() -> dict:
    """The manifest: ``{"models": {name: {...}}, ...}`` (empty models when none ship)."""
    p = HERE / "MANIFEST.json"
    if not p.is_file():
        return {"models": {}}
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise DrkitError(f"{p}: unreadable ({e}); reinstall drkit") from e


def names() -> list[str]:
    return sorted(manifest()["models"])


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@lru_cache(maxsize=None)
def _verified(name: str, mtime_ns: int, size: int) -> Path:
    entry = manifest()["models"][name]
    p = HERE / entry["file"]
    got = sha256(p)
    if got != entry["sha256"]:
        raise DrkitError(f"{PREFIX}{name}: {p} has SHA-256 {got[:16]}..., the manifest says "
                         f"{entry['sha256'][:16]}...; the install is damaged or altered: reinstall drkit")
    return p


def path_of(ref: str | os.PathLike) -> Path:
    """The verified weights file of ``pretrained:NAME`` (DrkitError naming the known models for an
    unknown name, or when the file's SHA-256 differs from the manifest's)."""
    name = str(ref)[len(PREFIX):]
    models = manifest()["models"]
    if name not in models:
        known = ", ".join(PREFIX + n for n in names()) or "none in this install"
        raise DrkitError(f"{ref}: no such pretrained DR model (known: {known})")
    p = HERE / models[name]["file"]
    if not p.is_file():
        raise DrkitError(f"{ref}: {p} is missing; reinstall drkit")
    st = p.stat()
    return _verified(name, st.st_mtime_ns, st.st_size)


def info(ref: str | os.PathLike) -> dict:
    name = str(ref)[len(PREFIX):] if is_pretrained(ref) else str(ref)
    return manifest()["models"][name]
