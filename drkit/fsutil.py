"""Small file-system idioms shared by every stage: write-then-rename (an output is either the old
file or the complete new one, never half of it)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same folder, so the rename is atomic); on success
    it replaces ``path`` in one ``os.replace``, on any error it is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=indent, default=str))


def as_path(p: str | os.PathLike | None) -> Path | None:
    """``Path(p)``, keeping None (configs accept str or Path from Python users)."""
    return None if p is None else Path(p)


def as_paths(ps) -> list[Path] | None:
    return None if ps is None else [Path(p) for p in ps]


def jsonable(obj: Any) -> Any:
    """``obj`` with paths (and anything else JSON does not know) as strings: what may go into a
    checkpoint that loads with ``weights_only=True`` and into JSON files."""
    return json.loads(json.dumps(obj, default=str))
