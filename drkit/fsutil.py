"""Small file-system idioms shared by every stage: write-then-rename (an output is either the old
file or the complete new one, never half of it), and the run-folder lock (one training run
writes into a folder at a time)."""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same folder, so the rename is atomic); on success
    it replaces ``path`` in one ``os.replace``, on any error it is removed and ``path`` is untouched.
    ``suffix``: the temporary name ends in ``path``'s extension too, for writers that pick the
    format by it (OpenCV's VideoWriter)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(path))
    remove_stale_tmp(path)   # what a killed run left beside it
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix if suffix else ''}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        try:
            if tmp.is_dir():
                import shutil
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        except OSError:   # e.g. a name too long to exist: nothing to remove
            pass
        if isinstance(e, OSError) and (e.filename is None or str(e.filename) == str(tmp)):
            e.filename = str(path)   # the user's path, not our temporary file (a full disk names none)
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
        pid = t.name[len(prefix):].removesuffix(path.suffix) if path.suffix else t.name[len(prefix):]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            t.unlink(missing_ok=True)


_SHA: dict[tuple, str] = {}


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 (hex) of a file, read in 4 MB blocks; remembered per (path, size, mtime), so a
    large model file is hashed once per process. The one hashing helper: checkpoints (the first 16
    digits identify a DR network in a store), shipped models, face-backend model files."""
    import hashlib
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _SHA[key] = h.hexdigest()
    return _SHA[key]


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


_HELD: set[Path] = set()   # run folders this process holds the lock of (run_lock is re-entrant)
RUN_LOCK = "run.lock"


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock of a run folder (made if missing) for the block: an exclusive flock on
    ``folder/run.lock``, which also records who holds it (pid, host, start time, command). A
    second run into the folder while a live run holds it gets a DrkitError at once naming the
    folder and that process; the kernel drops the lock when its process ends, however it ends,
    so a killed run never blocks its ``--resume``. Re-entrant within a process."""
    import fcntl

    from .errors import DrkitError
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DrkitError(f"{folder}: is a file; -o takes the run folder to write into")
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key in _HELD:
        yield folder
        return
    f = open(folder / RUN_LOCK, "a+")
    failed = True
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            try:
                who = json.loads(f.read() or "{}")
            except ValueError:
                who = {}
            other = (f"process {who.get('pid', '?')} on {who.get('host', '?')}, started "
                     f"{who.get('started', '?')}: {who.get('command', '?')}")
            raise DrkitError(f"{folder}: another run is writing into this folder ({other}); wait for it "
                             "to end, stop it, or choose another -o") from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                            "command": " ".join(["drkit", *sys.argv[1:]])}) + "\n")
        f.flush()
        _HELD.add(key)
        try:
            yield folder
            failed = False
        finally:
            _HELD.discard(key)
            fcntl.flock(f, fcntl.LOCK_UN)
    finally:
        f.close()
        if failed and created and [q.name for q in folder.iterdir()] == [RUN_LOCK]:
            shutil.rmtree(folder, ignore_errors=True)   # a run that failed before writing leaves no folder
