"""Small file-system idioms shared by every stage: write-then-rename (an output is either the old
file or the complete new one, never half of it)."""

from __future__ import annotations

import contextlib
import glob
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_tmp(path: str | os.PathLike) -> None:
    """Remove the temporary files ``atomic_path`` made for ``path`` in processes that are gone
    (a killed run's); a live process's own is left alone. Process ids are this machine's."""
    path = Path(path)
    prefix = f".{path.name}.tmp"
    for t in path.parent.glob(glob.escape(prefix) + "*"):
        pid = t.name[len(prefix):]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            t.unlink(missing_ok=True)


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
