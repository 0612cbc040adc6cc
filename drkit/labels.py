"""Per-frame labels: one CSV format for every task.

The drkit label CSV (docs/formats.md):

    video,frame,person,AU06,AU10,...        # header; `person` optional
    F001__T1,639,F001,0,2,...

- ``video``: the video id in the store (see `drkit inspect STORE`);
- ``frame``: the source frame index (the store's ``frame_index``);
- ``person``: who is in the video, for person-disjoint splits (else the video id is used);
- every other column is a target (``--targets`` picks some). Missing labels: an empty cell,
  ``NaN``, or a declared sentinel (``missing=[9]`` for FERA 2015 files) are ignored, never
  trained on.

Converters from dataset layouts (FERA 2015, AVEC 2012) into this format are in `drkit.datasets`
(``drkit labels fera2015|avec2012 ROOT -o labels.csv``).
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import log
from .errors import DrkitError
from .fsutil import atomic_path

RESERVED = ("video", "frame", "person")


@dataclass
class Labels:
    targets: list[str]
    frames: dict[str, dict[int, np.ndarray]]   # video -> frame -> (k,) float, NaN = missing
    person: dict[str, str]                      # video -> person
    path: Path | None = None                    # the file they were read from (for messages)

    def lookup(self, video: str, frame_index: np.ndarray) -> np.ndarray:
        """(n, k) targets for these frames of a video; all-NaN rows where unlabelled."""
        out = np.full((len(frame_index), len(self.targets)), np.nan, np.float32)
        fr = self.frames.get(video, {})
        for i, f in enumerate(np.asarray(frame_index).tolist()):
            if f in fr:
                out[i] = fr[f]
        return out


_F32_MAX = float(np.finfo(np.float32).max)
MAX_FRAME = 2 ** 40     # a frame index beyond this is a typo or garbage (10 years of video at 3000 fps)


def _read_text(path: Path) -> str:
    """The file as text: UTF-8, with or without a byte order mark (Excel writes one)."""
    raw = path.read_bytes()
    raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DrkitError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save it as UTF-8 CSV") from None


def _open_csv(path: Path):
    """A csv reader over the label file and its header; one clear line for what is not a file."""
    if not path.exists():
        raise DrkitError(f"{path}: no such label file")
    if path.is_dir():
        raise DrkitError(f"{path}: is a folder; --labels takes a label CSV file (docs/formats.md 'Label CSV')")
    if not (path.is_file() or stat.S_ISFIFO(path.stat().st_mode)):   # a pipe: --labels <(zcat x.csv.gz)
        raise DrkitError(f"{path}: is not a regular file (a device?); --labels takes a label CSV file")
    rd = csv.reader(io.StringIO(_read_text(path), newline=""))
    try:
        return rd, [h.strip() for h in next(rd)]
    except StopIteration:
        raise DrkitError(f"{path}: empty label file") from None


def _frame(text: str, where: str) -> int:
    """A frame cell: a 0-based source frame index."""
    try:
        f = float(text.strip())
    except ValueError:
        f = math.nan
    if not f.is_integer():      # also NaN and inf
        raise DrkitError(f"{where}: frame {text!r} is not an integer; frame numbers are "
                         "source frame indices (0, 1, 2, ...)")
    if not 0 <= f <= MAX_FRAME:
        raise DrkitError(f"{where}: frame {text!r} is {'negative' if f < 0 else 'beyond any video'}; "
                         "frame numbers are 0-based source frame indices (0, 1, 2, ...; OpenFace's "
                         "1-based frames minus one)")
    return int(f)


def _values(row: list[str], ti: list[int], header: list[str], missing, where: str) -> np.ndarray:
    """The target cells of a row as float32, NaN where missing (empty, NaN, NA, a sentinel)."""
    vals = np.full(len(ti), np.nan, np.float32)
    for j, c in enumerate(ti):
        cell = row[c].strip()
        if cell and cell.lower() not in ("nan", "na"):
            try:
                v = float(cell)
            except ValueError:
                raise DrkitError(f"{where}: {header[c]}={cell!r} is not a number") from None
            if math.isnan(v) or any(math.isclose(v, m) for m in missing):
                continue
            if not abs(v) <= _F32_MAX:
                what = "is not a finite number" if math.isinf(v) else "is too large (float32)"
                raise DrkitError(f"{where}: column {header[c]}: {cell!r} {what}; "
                                 "leave the cell empty (or NaN) for a missing label")
            vals[j] = v
    return vals


def read_labels(path: str | Path, targets: list[str] | None = None,
                missing: tuple[float, ...] = ()) -> Labels:
    """Read a label CSV (module docstring). Rejects what would train on garbage: non-finite
    values, fractional frame numbers, non-UTF-8 text; warns about duplicate (video, frame) rows
    (the last one is kept)."""
    path = Path(path)
    rd, header = _open_csv(path)
    if header[:2] != ["video", "frame"]:
        raise DrkitError(f"{path}: the header must start with 'video,frame' (got {','.join(header[:3])}); "
                         "see docs/formats.md 'Label CSV'")
    twice = sorted({h for h in header if header.count(h) > 1})
    if twice:
        raise DrkitError(f"{path}: the header names {', '.join(map(repr, twice))} more than once; each "
                         "column needs its own name (a target trained twice would overwrite its own metric)")
    cols = [h for h in header if h not in RESERVED]
    if not cols:
        raise DrkitError(f"{path}: has no target columns after video,frame[,person] (header: "
                         f"{','.join(header)}); add one column per target, e.g. video,frame,person,AU06")
    want = targets or cols
    bad = [t for t in want if t not in cols]
    if bad:
        raise DrkitError(f"{path}: no column {', '.join(bad)}; targets here: {', '.join(cols)}")
    ti = [header.index(t) for t in want]
    pi = header.index("person") if "person" in header else None
    frames: dict[str, dict[int, np.ndarray]] = {}
    person: dict[str, str] = {}
    seen: dict[tuple[str, int], int] = {}     # (video, frame) -> line
    dups, first_dup = 0, None
    try:
        for row in rd:
            n = rd.line_num
            if not row or not "".join(row).strip():
                continue
            if len(row) != len(header):
                raise DrkitError(f"{path}:{n}: {len(row)} fields, header has {len(header)}")
            fr = _frame(row[1], f"{path}:{n}")
            vals = _values(row, ti, header, missing, f"{path}:{n}")
            video = row[0].strip()
            line = seen.get((video, fr))
            if line is not None:
                dups += 1
                if first_dup is None:
                    first_dup = (line, n, video, fr)
            seen[(video, fr)] = n
            frames.setdefault(video, {})[fr] = vals
            person[video] = row[pi].strip() if pi is not None and row[pi].strip() else person.get(video, video)
    except csv.Error as e:
        raise DrkitError(f"{path}:{rd.line_num}: not a readable CSV row ({e})") from None
    if not frames:
        raise DrkitError(f"{path}: no label rows")
    if dups:
        a, b, video, fr = first_dup
        log.warn(f"{path}: {dups} duplicate (video, frame) row(s), the last of each is used; "
                 f"first: lines {a} and {b} ({video} frame {fr})")
    return Labels(list(want), frames, person, path)


def write_labels(path: str | Path, rows: list[dict], targets: list[str]) -> None:
    """Write ``rows`` (dicts with video, frame, [person], targets) as a label CSV, atomically;
    None or NaN targets become empty cells (missing)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "frame", "person", *targets])
        for r in rows:
            w.writerow([r["video"], r["frame"], r.get("person", r["video"]),
                        *("" if r.get(t) is None or (isinstance(r.get(t), float) and math.isnan(r[t]))
                          else r[t] for t in targets)])
