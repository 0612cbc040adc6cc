"""Store access shared by every stage: open and validate, create, write a video atomically
(documented in docs/formats.md; the array layouts and versions are in drkit.contracts).

A store is one Zarr v3 group on the local filesystem. Its root attribute ``drkit`` names the
store kind (``faces`` for `drkit preprocess`, ``dr`` for `drkit gen-dr`), the schema version,
the drkit version and the creation parameters. Each source video is one subgroup, named by a
stable id, holding arrays whose first axis is the frame.

Write once, mark complete last: a video is written into ``_partial/<id>-<token>`` and moved to
``<id>`` by a single directory rename once all of it is on disk, and only then listed in the
root attribute ``videos``. A run killed at any point therefore leaves either a complete video or
no video (plus scratch in ``_partial`` that the next run of the same video removes). Root
attributes, renames and listings happen under a store lock, and each video is written under a
per-video *claim* (an flock on ``_partial/<id>.claim`` held by the live process writing it), so
any number of runs and ``--shard`` jobs may share one store: a video another live process owns is
never touched, and scratch is removed only when its owner is gone. A video whose arrays are
damaged (a missing chunk, arrays of different lengths) is refused on read and redone by the next
run of the stage that writes it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import re
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, get_args

import numpy as np
import zarr

from . import __version__, log
from .contracts import (
    DR_OPTIONAL_ARRAYS,
    READABLE_STORE_VERSIONS,
    STORE_SCHEMA_VERSION,
    ArraySpec,
    DRStoreParams,
    FaceStoreParams,
    StoreKind,
    video_marker,
)
from .errors import DrkitError, critical

SCHEMA_VERSION = STORE_SCHEMA_VERSION
KINDS: tuple[str, ...] = get_args(StoreKind)
PARTIAL = "_partial"
_ID_BAD_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_ID_CHARS = re.compile(r"[A-Za-z0-9._-]+")
MAX_ID_LEN = 200          # leaves room for the scratch suffix within a 255-byte file name


class StoreError(DrkitError):
    pass


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def video_id_from_path(rel: str) -> str:
    """Stable subgroup name for a source given by its path relative to the input root: path
    parts joined by ``__``, characters outside ``[A-Za-z0-9._-]`` replaced by ``_``. A name that
    had to change that way (or is too long) ends in ``-`` and 8 hex digits of the SHA-1 of the
    path itself, so the id depends on the source alone, never on which other files are present
    (``a b.avi`` and ``a?b.avi`` no longer take turns at ``a_b.avi``, which stays the id of
    ``a_b.avi``): ``clips/s01/a_b.mp4`` -> ``clips__s01__a_b.mp4``, ``clips/a b.mp4`` ->
    ``clips__a_b.mp4-3b5e0c1d``. Every id passes :func:`check_video_id`."""
    import hashlib
    parts = [p for p in Path(rel).parts if p not in ("", ".", "..", "/")]
    raw = "__".join(parts)
    vid = "__".join(_ID_BAD_CHARS.sub("_", p) for p in parts).strip("._") or "video"
    if vid != raw or len(vid) > MAX_ID_LEN:
        vid = vid[:MAX_ID_LEN - 9].rstrip("._") + "-" + hashlib.sha1(raw.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return vid


def id_problem(vid: Any) -> str | None:
    """Why ``vid`` cannot be a video id (None if it can): an id names one folder inside a store,
    so it must be one plain path component: letters, digits, '.', '_', '-' only (no separator,
    no '..', nothing unprintable), not starting with '.' or '_' (hidden, or reserved for the
    store's own entries such as _partial), at most MAX_ID_LEN characters."""
    if not isinstance(vid, str) or not vid:
        return "not a non-empty text"
    if len(vid) > MAX_ID_LEN:
        return f"longer than {MAX_ID_LEN} characters"
    if not _ID_CHARS.fullmatch(vid):
        return "holds characters other than letters, digits, '.', '_' and '-' (a path separator?)"
    if vid.startswith((".", "_")):
        return "starts with '.' or '_'"
    return None


def check_video_id(vid: Any, where: str | os.PathLike) -> str:
    """``vid`` if it is a safe video id (``id_problem``), else a StoreError naming ``where`` (the
    store) and the id. Called on every id read from a store's attributes and before any file
    operation on a video, so no crafted store can make drkit read or write outside it."""
    problem = id_problem(vid)
    if problem:
        raise StoreError(f"{where}: video id {vid!r} is not a safe name ({problem}); a store "
                         "made by drkit never holds one: the store was altered or damaged, so drkit "
                         "refuses to use it")
    return vid


@dataclass
class Store:
    """A validated, opened store. ``videos`` lists complete videos only, in sorted order."""

    path: Path
    root: zarr.Group
    kind: str
    meta: dict[str, Any]
    _checked: set[str] = field(default_factory=set, repr=False)

    @property
    def params(self) -> dict[str, Any]:
        """The creation parameters as stored (JSON); see ``typed_params``."""
        return self.meta.get("params", {})

    @property
    def typed_params(self) -> FaceStoreParams | DRStoreParams:
        """The creation parameters as a typed record, validated."""
        cls = FaceStoreParams if self.kind == "faces" else DRStoreParams
        return cls.from_dict(self.params, f"{self.path}/zarr.json: drkit.params")

    @property
    def videos(self) -> list[str]:
        return sorted(listed_videos(self.path, self.root.attrs))

    def video_info(self, vid: str) -> dict[str, Any]:
        return listed_videos(self.path, self.root.attrs)[vid]

    def video(self, vid: str) -> "VideoGroup":
        """One complete video's group, its arrays checked (once per opened store); reading a
        chunk that fails its checksum raises a StoreError naming the video and the array."""
        check_video_id(vid, self.path)
        if vid not in self.root.attrs.get("videos", {}):
            raise StoreError(f"{self.path}: no complete video '{vid}' (see `drkit inspect {self.path}`)")
        if vid not in self._checked:
            problem = video_problem(self.path, vid, self.kind)
            if problem:
                raise StoreError(f"{self.path}/{vid}: damaged ({problem}); {REDO[self.kind]} to redo it")
            self._checked.add(vid)
        return VideoGroup(self, vid, zarr.open_group(self.path / vid, mode="r"))

    @property
    def failed(self) -> dict[str, str]:
        return dict(self.root.attrs.get("failed", {}))

    def partial_leftovers(self) -> list[str]:
        d = self.path / PARTIAL
        return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []


def listed_videos(path: str | os.PathLike, attrs) -> dict[str, Any]:
    """The root ``videos`` listing of the store at ``path`` (id -> info), every id checked
    (``check_video_id``): a store listing an unsafe id is refused as a whole."""
    listing = attrs.get("videos", {})
    if not isinstance(listing, dict):
        raise StoreError(f"{path}/zarr.json: the 'videos' attribute is not a mapping; the store is damaged")
    for vid in listing:
        check_video_id(vid, path)
    return listing


REDO = {"faces": "rerun `drkit preprocess` with the same inputs and -o",
        "dr": "rerun `drkit gen-dr` with the same face store, checkpoints and -o"}


class VideoGroup:
    """A video of an opened store: ``attrs``, ``name in g`` and ``g[array]`` as zarr's group, but
    the arrays it hands out turn a chunk that fails its checksum (crc32c, stores made since 0.3.0)
    into a StoreError naming the store, the video, the array and how to redo it."""

    def __init__(self, store: "Store", vid: str, group: zarr.Group):
        self.store, self.vid, self._g = store, vid, group

    @property
    def attrs(self):
        return self._g.attrs

    def __contains__(self, name: str) -> bool:
        return name in self._g

    def array_keys(self):
        return self._g.array_keys()

    def __getitem__(self, name: str) -> "CheckedArray":
        return CheckedArray(self, name, self._g[name])


class CheckedArray:
    """A read-only zarr array of one video (see VideoGroup): shape, dtype, chunks, len, slicing."""

    def __init__(self, video: VideoGroup, name: str, arr):
        self.video, self.name, self._a = video, name, arr
        self.shape, self.dtype, self.chunks = arr.shape, arr.dtype, arr.chunks

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        a = self[...]
        return a if dtype is None else a.astype(dtype)

    def __getattr__(self, name: str):   # the rest of zarr's array (metadata, attrs, ...), read-only use
        return getattr(self._a, name)

    def __getitem__(self, sel):
        try:
            return self._a[sel]
        except ValueError as e:
            if "checksum" not in str(e):
                raise
            v = self.video
            raise StoreError(f"{v.store.path}/{v.vid}: array '{self.name}' has a chunk whose checksum "
                             f"fails (the file was damaged on disk); {REDO[v.store.kind]} to redo "
                             "the video") from None


def _check_meta(path: Path, meta: Any, kind: str | None) -> dict[str, Any]:
    if not isinstance(meta, dict) or meta.get("kind") not in KINDS:
        raise StoreError(f"{path}: not a drkit store (no 'drkit' attribute in zarr.json). "
                         "Create one with `drkit preprocess` or `drkit gen-dr`.")
    if kind is not None and meta["kind"] != kind:
        made_by = {"faces": "drkit preprocess", "dr": "drkit gen-dr"}
        raise StoreError(f"{path}: this is a '{meta['kind']}' store, expected a '{kind}' store "
                         f"(made by `{made_by[kind]}`).")
    v = meta.get("schema_version")
    if v not in READABLE_STORE_VERSIONS:
        raise StoreError(f"{path}: store schema version {v}, this drkit ({__version__}) reads versions "
                         f"{', '.join(map(str, READABLE_STORE_VERSIONS))}. Re-create the store with this drkit version.")
    return meta


def open_store(path: str | os.PathLike, kind: str | None = None) -> Store:
    """Open and validate an existing store for reading."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        hint = " (it is a file, not a store folder)" if path.is_file() else ""
        raise StoreError(f"{path}: no such drkit store{hint}: expected a Zarr v3 folder with "
                         "zarr.json. Create one with `drkit preprocess VIDEOS -o STORE`.")
    try:
        root = zarr.open_group(path, mode="r")
    except Exception as e:  # corrupt or zarr v2 metadata
        raise StoreError(f"{path}: cannot open as a Zarr v3 group ({e}).") from e
    meta = _check_meta(path, root.attrs.get("drkit"), kind)
    listed_videos(path, root.attrs)   # refuse a store listing an unsafe id before anything reads it
    return Store(path=path, root=root, kind=meta["kind"], meta=meta)


def create_store(path: str | os.PathLike, kind: str,
                 params: FaceStoreParams | DRStoreParams | dict[str, Any],
                 must_match: tuple[str, ...] | None = None) -> Store:
    """Create a store, or reopen an existing one to add videos to it.

    Reopening checks that ``params[k] == existing[k]`` for every k in ``must_match`` (by default
    the record's ``MUST_MATCH``), so a resumed or sharded run cannot mix, say, 112 px and 224 px
    crops in one store."""
    path = Path(path)
    if must_match is None:
        must_match = getattr(params, "MUST_MATCH", ())
    typed = None if isinstance(params, dict) else type(params)   # compared as typed records: old keys read
    if typed is not None:
        params = params.to_dict()
    if path.is_file():
        raise StoreError(f"{path}: is a file, not a store folder; choose another -o path.")
    path.mkdir(parents=True, exist_ok=True)
    with _lock(path):   # several jobs may create the same new store at once: check and create here
        if (path / "zarr.json").exists():
            store = open_store(path, kind)
            old = store.params if typed is None else typed.from_dict(store.params, f"{path}: drkit.params").to_dict()
            diff = [f"{k}={old.get(k)!r} (asked {params.get(k)!r})" for k in must_match
                    if old.get(k) != params.get(k)]
            if diff:
                raise StoreError(f"{path}: store was created with {', '.join(diff)}; rerun with "
                                 "the same settings or write to a new store with -o.")
            return store
        if any(p.name != PARTIAL for p in path.iterdir()):
            raise StoreError(f"{path}: exists and is not a drkit store; choose another -o path.")
        with critical():
            root = zarr.open_group(path, mode="a")       # never "w": that would delete the lock file
            meta = {"kind": kind, "schema_version": STORE_SCHEMA_VERSION, "drkit_version": __version__,
                    "created": now(), "params": params}
            zarr.open_group(path / PARTIAL, mode="a").update_attributes(
                {"drkit": {"kind": "scratch", "note": "videos being written, and the lock and claim "
                           "files; scratch is safe to delete when no job is running"}})
            root.update_attributes({"drkit": meta, "videos": {}, "failed": {}, "runs": []})   # last: marks the store
    return open_store(path, kind)


def _partial_dir(store_path: str | os.PathLike) -> Path:
    """The store's scratch folder (made if missing); a StoreError if a file is in its place."""
    d = Path(store_path) / PARTIAL
    if d.exists() and not d.is_dir():
        raise StoreError(f"{d}: is a file, but drkit keeps the store's scratch, lock and claim files "
                         "there: move that file away and rerun")
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Exclusive lock on the store's root attributes (a lock file inside _partial/)."""
    d = _partial_dir(path)
    with open(d / "lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def update_root(path: str | os.PathLike, fn, locked: bool = False) -> None:
    """Read-modify-write the root attributes under the store lock: ``fn(attrs_dict)``
    mutates a plain dict that is then written back in one update. ``locked``: the caller holds
    the lock already."""
    path = Path(path)
    with contextlib.nullcontext() if locked else _lock(path), critical():
        root = zarr.open_group(path, mode="r+")
        attrs = json.loads(json.dumps(dict(root.attrs)))
        fn(attrs)
        root.update_attributes(attrs)   # one metadata write (attrs.update writes once per key)


@contextlib.contextmanager
def claim(store_path: str | os.PathLike, vid: str, wait: bool = False) -> Iterator[bool]:
    """Claim one video of a store for writing: yields True while this process holds an
    exclusive flock on ``_partial/<vid>.claim`` (released when the block ends or the process
    dies), False if another live process holds it and ``wait`` is false. Only a claim holder may
    write, commit, or delete scratch of that video."""
    check_video_id(vid, store_path)
    d = _partial_dir(store_path)
    with open(d / f"{vid}.claim", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# every chunk: zstd then a CRC-32C of the compressed bytes, checked on every read and by
# ``verify_chunks`` without decompressing (stores made before 0.3.0 have no checksum). Level 1
# since 0.3.0 (before: zarr's default, 3): on 224 px face crops it compresses 2.2x faster (0.16
# against 0.35 ms a frame, the writer thread's CPU that a parallel preprocess's workers share) and
# decompresses 2x faster (0.07 against 0.14 ms, train-dr's loading), for 13% more bytes (ratio
# 4.15 against 4.71). Readers take any level.
CODECS = (zarr.codecs.ZstdCodec(level=1, checksum=False), zarr.codecs.Crc32cCodec())


class VideoWriter:
    """Append frames of one video to a scratch group; ``commit`` makes it visible at once.
    The caller holds the video's ``claim``.

    Use as a context manager: leaving the block without ``commit`` (an error, a kill signal
    turned into an exception) removes the scratch, so nothing half-written is ever listed::

        with VideoWriter(store, vid, face_arrays(224), "faces") as w:
            w.append(frames=..., ...)
            w.commit({"source": ..., "fps": ..., "n_source_frames": ...})

    Rows are buffered and each array is written one whole chunk of its own at a time, so memory
    stays bounded by ``chunk_frames`` rows per array whatever the video length, and no chunk is
    written twice. Writes (compression included) run in one background thread, overlapping with
    the caller's work; ``commit`` waits for them and re-raises any write error."""

    def __init__(self, store_path: str | os.PathLike, vid: str, specs: dict[str, ArraySpec],
                 store_kind: str = "faces"):
        self.store_path = Path(store_path)
        check_video_id(vid, self.store_path)
        self.store_kind = store_kind
        self.committed = False
        self.vid = vid
        self.specs = specs
        self.tmp = self.store_path / PARTIAL / f"{vid}-{uuid.uuid4().hex[:8]}"
        try:
            with critical():   # zarr's I/O thread never writes into scratch removed under it
                self.group = zarr.open_group(self.tmp, mode="w")
                self.arrays = {
                    name: self.group.create_array(
                        name, shape=(0, *s.tail), chunks=(s.chunk_frames, *s.tail), dtype=s.dtype,
                        dimension_names=list(s.dims), fill_value=0, compressors=CODECS,
                        config={"write_empty_chunks": True})   # every chunk on disk: a missing one is damage
                    for name, s in specs.items()}
        except BaseException:   # an interrupt before the context manager is entered: no scratch left
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        self.n = 0                                       # rows appended (every array)
        self._io = ThreadPoolExecutor(1)
        self._pending: list = []
        self._buf: dict[str, list[np.ndarray]] = {k: [] for k in specs}
        self._nbuf = dict.fromkeys(specs, 0)             # rows buffered, per array
        self._written = dict.fromkeys(specs, 0)          # rows handed to the writer, per array

    def append(self, **rows: np.ndarray) -> None:
        """Append one batch: every array of the video, same number of rows."""
        if set(rows) != set(self.specs):
            raise ValueError(f"append needs exactly {sorted(self.specs)}")
        lens = {len(v) for v in rows.values()}
        if len(lens) != 1:
            raise ValueError("all arrays of one append need the same number of rows")
        for k, v in rows.items():
            self._buf[k].append(np.asarray(v, dtype=self.specs[k].dtype))
            self._nbuf[k] += len(v)
            if self._nbuf[k] >= self.specs[k].chunk_frames:
                self._flush(k, whole_chunks_only=True)
        self.n += lens.pop()

    def _flush(self, k: str, whole_chunks_only: bool) -> None:
        """Hand array ``k``'s buffered rows to the writer thread: whole chunks only (each array
        at its own chunk length, so the small per-frame arrays are written once per chunk, not
        rewritten with every chunk of images), or everything (at commit)."""
        if not self._nbuf[k]:
            return
        data = np.concatenate(self._buf[k])
        chunk = self.specs[k].chunk_frames
        take = (self._nbuf[k] // chunk) * chunk if whole_chunks_only else self._nbuf[k]
        if take:
            while len(self._pending) >= 4:   # bound the memory queued for writing
                self._pending.pop(0).result()
            self._pending.append(self._io.submit(self._write, k, self._written[k], data[:take]))
            self._written[k] += take
        self._buf[k] = [data[take:]] if take < self._nbuf[k] else []
        self._nbuf[k] -= take

    def _write(self, k: str, start: int, rows: np.ndarray) -> None:
        arr, n = self.arrays[k], start + len(rows)
        arr.resize((n, *self.specs[k].tail))
        arr[start:n] = rows

    def _wait(self) -> None:
        for f in self._pending:
            f.result()
        self._pending.clear()

    def commit(self, attrs: dict[str, Any]) -> None:
        """Flush, mark complete, move into place, then list it in the root attributes.
        ``attrs`` should hold ``source``, ``fps`` and ``n_source_frames`` (the root listing)."""
        for k in self.specs:
            self._flush(k, whole_chunks_only=False)
        self._wait()
        self._io.shutdown()
        final = self.store_path / self.vid
        with critical():   # an interrupt waits until the video is in place and listed
            self.group.update_attributes({**video_marker(self.store_kind), **attrs, "n_frames": self.n,
                                          "complete": True, "completed": now()})
            with _lock(self.store_path):    # readers list and open videos under the same lock
                if final.exists():          # a redo (--overwrite, or a damaged video) replaces it
                    update_root(self.store_path, lambda a: a.get("videos", {}).pop(self.vid, None), locked=True)
                    shutil.rmtree(final)
                os.replace(self.tmp, final)
                list_video(self.store_path, self.vid, locked=True)
            self.committed = True
        remove_partials(self.store_path, self.vid)   # the caller holds the claim: any other scratch is dead

    def abort(self) -> None:
        self._io.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        if not self.committed:
            self.abort()


LISTED = ("source", "fps", "n_source_frames", "n_frames")


def list_video(store_path: str | os.PathLike, vid: str, locked: bool = False) -> None:
    """Add a complete video to the root ``videos`` listing, from its own attributes (also used
    to repair a store whose run was killed between the rename and the listing)."""
    check_video_id(vid, store_path)
    a = dict(zarr.open_group(Path(store_path) / vid, mode="r").attrs)

    def add(root: dict) -> None:
        root.setdefault("videos", {})[vid] = {k: a.get(k) for k in LISTED}
        root.setdefault("failed", {}).pop(a.get("source") or "", None)
    update_root(store_path, add, locked)


def remove_partials(store_path: str | os.PathLike, vid: str) -> None:
    """Delete scratch left by earlier, killed attempts at this video. Call only while holding
    the video's claim (else the scratch may belong to a live process)."""
    check_video_id(vid, store_path)
    d = Path(store_path) / PARTIAL
    for p in d.glob(f"{vid}-*"):
        if p.is_dir() and re.fullmatch(re.escape(vid) + r"-[0-9a-f]{8}", p.name):
            shutil.rmtree(p, ignore_errors=True)


def is_complete(store_path: str | os.PathLike, vid: str) -> bool:
    p = Path(store_path) / check_video_id(vid, store_path) / "zarr.json"
    if not p.is_file():
        return False
    try:
        return bool(json.loads(p.read_text()).get("attributes", {}).get("complete"))
    except (OSError, ValueError):
        return False


ARRAY_NAMES = {"faces": ("frames", "landmarks", "frame_index", "confidence", "detected", "transform"),
               "dr": ("mdr", "frame_index")}
# arrays a video may lack (DR stores made before gen-dr wrote landmarks), checked when present
OPTIONAL_ARRAY_NAMES = {"faces": (), "dr": DR_OPTIONAL_ARRAYS}
IMAGE_ARRAY = {"faces": "frames", "dr": "mdr"}


def video_problem(store_path: str | os.PathLike, vid: str, kind: str, deep: bool = False) -> str | None:
    """What is wrong with a video folder marked complete, or None: its arrays must all be
    there (optional ones, OPTIONAL_ARRAY_NAMES, only checked when present), as long as
    ``n_frames``, and the image array's chunks must all be on disk. Cheap: metadata files and
    one stat per image chunk. ``deep``: also every chunk of every array on disk, and each one's
    CRC-32C (stores made since 0.3.0) computed from its bytes (read, not decompressed)."""
    g = Path(store_path) / check_video_id(vid, store_path)
    try:
        attrs = json.loads((g / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError):
        return "no readable zarr.json"
    n = attrs.get("n_frames")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        return "no n_frames attribute"
    optional = [a for a in OPTIONAL_ARRAY_NAMES[kind] if (g / a).exists()]
    for name in (*ARRAY_NAMES[kind], *optional):
        try:
            meta = json.loads((g / name / "zarr.json").read_text())
        except (OSError, ValueError):
            return f"array '{name}' is missing"
        shape = meta.get("shape") or [None]
        if shape[0] != n:
            return f"array '{name}' has {shape[0]} frames, the video {n}"
        if deep or name == IMAGE_ARRAY[kind] or (name == "frame_index" and n > 1):
            problem = _chunks_problem(g / name, meta, n, deep)
            if problem:
                return f"array '{name}' {problem}"
    return None


def _chunks_problem(a: Path, meta: dict, n: int, verify: bool) -> str | None:
    """A missing chunk file of array folder ``a`` (``n`` frames), or with ``verify`` a chunk
    whose stored CRC-32C differs from its bytes' (arrays written with the crc32c codec)."""
    try:
        cf = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
        ndim = len(meta["shape"])
    except (KeyError, IndexError, TypeError):
        return "has unreadable metadata"
    sep = ((meta.get("chunk_key_encoding") or {}).get("configuration") or {}).get("separator", "/")
    crc = verify and any(isinstance(c, dict) and c.get("name") == "crc32c" for c in meta.get("codecs", []))
    if crc:
        import google_crc32c
    k = -(-n // cf)
    for i in range(k):
        f = a / sep.join(["c", str(i), *["0"] * (ndim - 1)])
        if not crc:
            if not f.exists():
                return f"misses chunk {i} of {k}"
            continue
        try:
            data = f.read_bytes()
        except OSError:
            return f"misses chunk {i} of {k}"
        if len(data) < 4 or np.uint32(google_crc32c.value(data[:-4])).tobytes() != data[-4:]:
            return f"chunk {i} of {k} fails its checksum"
    return None


def is_done(store: Store, vid: str, deep: bool = False) -> bool:
    """A first look, without the claim: ``vid`` is listed, marked complete and intact
    (``deep``: every chunk's checksum too, see video_problem)."""
    return (vid in store.root.attrs.get("videos", {}) and is_complete(store.path, vid)
            and not video_problem(store.path, vid, store.kind, deep))


def video_state(store_path: str | os.PathLike, vid: str, kind: str) -> str:
    """Bring one video's listing in line with its folder and say what a writer should do.
    Call while holding the video's claim. Returns:

    - ``"done"``: complete and intact (listed now if a killed run had renamed but not listed it);
    - ``"damaged"``: marked complete but its arrays are not whole or a chunk fails its checksum:
      unlisted now, to be redone;
    - ``"todo"``: not there yet."""
    if not is_complete(store_path, vid):
        return "todo"
    problem = video_problem(store_path, vid, kind, deep=True)
    if problem:
        log.warn(f"{Path(store_path) / vid}: damaged ({problem}); redoing it")
        update_root(store_path, lambda a: a.get("videos", {}).pop(vid, None))
        return "damaged"
    listed = zarr.open_group(Path(store_path), mode="r").attrs.get("videos", {})
    if vid not in listed:   # killed between the rename and the listing: list it now
        list_video(store_path, vid)
    return "done"


@dataclass
class WriteOutcome:
    """What ``write_claimed`` did with one video: ``busy`` (another live run holds its claim),
    ``skipped`` (complete and intact), ``written``; ``state`` is what video_state found and
    ``value`` what the write function returned."""
    status: Literal["busy", "skipped", "written"]
    state: str = ""
    value: Any = None

    @property
    def repaired(self) -> bool:
        return self.status == "written" and self.state == "damaged"


def write_claimed(store_path: str | os.PathLike, vid: str, kind: str, write: Callable[[], Any], *,
                  overwrite: bool = False, wait: bool = False,
                  when_done: Callable[[], None] | None = None) -> WriteOutcome:
    """The one sequence every store writer follows for a video: claim it (``busy`` if another
    live run holds it and not ``wait``), bring its listing in line (video_state), skip it when it
    is complete and intact (``when_done`` runs first and may raise; ``overwrite`` redoes it),
    remove a dead run's scratch, then ``write()`` (which writes through a VideoWriter)."""
    with claim(store_path, vid, wait) as mine:
        if not mine:
            return WriteOutcome("busy")
        state = video_state(store_path, vid, kind)
        if state == "done":
            if when_done is not None:
                when_done()
            if not overwrite:
                return WriteOutcome("skipped", state)
        remove_partials(store_path, vid)   # scratch of a dead run: we hold the claim
        return WriteOutcome("written", state, write())
