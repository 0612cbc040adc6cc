"""Per-frame labels: one CSV format for every task, and readers for two dataset layouts.

The drkit label CSV (docs/formats.md):

    video,frame,person,AU06,AU10,...        # header; `person` optional
    F001__T1,639,F001,0,2,...

- ``video``: the video id in the store (see `drkit inspect STORE`);
- ``frame``: the source frame index (the store's ``frame_index``);
- ``person``: who is in the video, for person-disjoint splits (else the video id is used);
- every other column is a target (``--targets`` picks some). Missing labels: an empty cell,
  ``NaN``, or a declared sentinel (``missing=[9]`` for FERA 2015 files) are ignored, never
  trained on.

Run as ``python -m drkit.labels fera2015 ROOT -o labels.csv`` or ``... avec2012 ROOT -o
labels.csv`` to convert a dataset's own files into this format.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DrkitError

RESERVED = ("video", "frame", "person")


@dataclass
class Labels:
    targets: list[str]
    frames: dict[str, dict[int, np.ndarray]]   # video -> frame -> (k,) float, NaN = missing
    person: dict[str, str]                      # video -> person

    def lookup(self, video: str, frame_index: np.ndarray) -> np.ndarray:
        """(n, k) targets for these frames of a video; all-NaN rows where unlabelled."""
        out = np.full((len(frame_index), len(self.targets)), np.nan, np.float32)
        fr = self.frames.get(video, {})
        for i, f in enumerate(np.asarray(frame_index).tolist()):
            if f in fr:
                out[i] = fr[f]
        return out


def read_labels(path: str | Path, targets: list[str] | None = None,
                missing: tuple[float, ...] = ()) -> Labels:
    path = Path(path)
    if not path.is_file():
        raise DrkitError(f"{path}: no such label file")
    with open(path, newline="") as f:
        rd = csv.reader(f)
        try:
            header = [h.strip() for h in next(rd)]
        except StopIteration:
            raise DrkitError(f"{path}: empty label file") from None
        if header[:2] != ["video", "frame"]:
            raise DrkitError(f"{path}: the header must start with 'video,frame' (got {','.join(header[:3])}); "
                             "see docs/formats.md 'Label CSV'")
        cols = [h for h in header if h not in RESERVED]
        want = targets or cols
        bad = [t for t in want if t not in cols]
        if bad:
            raise DrkitError(f"{path}: no column {', '.join(bad)}; targets here: {', '.join(cols)}")
        ti = [header.index(t) for t in want]
        pi = header.index("person") if "person" in header else None
        frames: dict[str, dict[int, np.ndarray]] = {}
        person: dict[str, str] = {}
        for n, row in enumerate(rd, start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) != len(header):
                raise DrkitError(f"{path}:{n}: {len(row)} fields, header has {len(header)}")
            try:
                fr = int(float(row[1]))
            except ValueError:
                raise DrkitError(f"{path}:{n}: frame {row[1]!r} is not an integer") from None
            vals = np.full(len(ti), np.nan, np.float32)
            for j, c in enumerate(ti):
                cell = row[c].strip()
                if cell and cell.lower() not in ("nan", "na"):
                    try:
                        v = float(cell)
                    except ValueError:
                        raise DrkitError(f"{path}:{n}: {header[c]}={cell!r} is not a number") from None
                    if not any(math.isclose(v, m) for m in missing):
                        vals[j] = v
            video = row[0].strip()
            frames.setdefault(video, {})[fr] = vals
            person[video] = row[pi].strip() if pi is not None and row[pi].strip() else person.get(video, video)
    if not frames:
        raise DrkitError(f"{path}: no label rows")
    return Labels(list(want), frames, person)


def write_labels(path: str | Path, rows: list[dict], targets: list[str]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "frame", "person", *targets])
        for r in rows:
            w.writerow([r["video"], r["frame"], r.get("person", r["video"]),
                        *("" if r.get(t) is None or (isinstance(r.get(t), float) and math.isnan(r[t]))
                          else r[t] for t in targets)])
    tmp.replace(path)


# ------------------------------------------------------------------ dataset readers

FERA_AUS = ("AU06", "AU10", "AU12", "AU14", "AU17")


def read_fera2015(root: str | Path) -> list[dict]:
    """FERA 2015 BP4D intensity labels. Expected layout (as distributed by the challenge):

        ROOT/AU06/F001_T1_AU06.csv  ...  ROOT/AU17/M018_T8_AU17.csv

    each file one ``frame,intensity`` line per frame (no header; intensity 0-5, 9 = unknown).
    Video ids are ``<subject>__<task>`` (``F001__T1``), which is what `drkit preprocess` names the
    image folders of ``Sequences/F001/T1/`` when given ``Sequences/``; persons are subjects.
    Unknown (9) stays empty in the output, i.e. missing."""
    root = Path(root)
    table: dict[tuple[str, int], dict] = {}
    n_files = 0
    for au in FERA_AUS:
        for f in sorted((root / au).glob(f"*_{au}.csv")):
            m = re.fullmatch(rf"(.+?)_(T\d+)_{au}", f.stem)
            if not m:
                continue
            n_files += 1
            subj, task = m[1], m[2]
            for line in f.read_text().splitlines():
                parts = [p.strip() for p in re.split(r"[,;\s]+", line.strip()) if p.strip()]
                if len(parts) < 2 or not parts[0].lstrip("-").isdigit():
                    continue
                v = float(parts[1])
                r = table.setdefault((f"{subj}__{task}", int(parts[0])),
                                     {"video": f"{subj}__{task}", "frame": int(parts[0]), "person": subj})
                r[au] = None if v == 9 else v
    if not n_files:
        raise DrkitError(f"{root}: no FERA 2015 files (expected {root}/AU06/F001_T1_AU06.csv ...)")
    return [table[k] for k in sorted(table)]


def read_avec2012(root: str | Path, video_suffix: str = "") -> list[dict]:
    """AVEC 2012 (SEMAINE) continuous valence/arousal labels. Expected layout:

        ROOT/<video>/<video>_arousal.csv   ROOT/<video>/<video>_valence.csv

    one value per video frame per line (a leading ``time`` or ``frame`` column is allowed; a
    header line is skipped), values in [-1, 1]. Video ids are the folder names plus
    ``video_suffix`` (e.g. ``.avi``, to match the store ids of the video files); persons are read
    from ``ROOT/persons.csv`` (``video,person``) when present, else the video id."""
    root = Path(root)
    persons = {}
    if (root / "persons.csv").is_file():
        for row in csv.reader(open(root / "persons.csv")):
            if len(row) >= 2 and row[0] != "video":
                persons[row[0].strip()] = row[1].strip()
    rows: dict[tuple[str, int], dict] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        for dim in ("arousal", "valence"):
            f = d / f"{d.name}_{dim}.csv"
            if not f.is_file():
                continue
            k = 0
            for line in f.read_text().splitlines():
                parts = [p for p in re.split(r"[,;\s]+", line.strip()) if p]
                try:
                    vals = [float(p) for p in parts]
                except ValueError:
                    continue          # header
                if not vals:
                    continue
                fr, v = (int(vals[0]), vals[-1]) if len(vals) >= 2 else (k, vals[0])
                r = rows.setdefault((d.name, fr), {"video": d.name + video_suffix, "frame": fr,
                                                   "person": persons.get(d.name, d.name)})
                r[dim] = v
                k += 1
    if not rows:
        raise DrkitError(f"{root}: no AVEC 2012 label files (expected {root}/<video>/<video>_arousal.csv)")
    return [rows[k] for k in sorted(rows)]


def main() -> None:
    ap = argparse.ArgumentParser(description="Convert dataset label files to the drkit label CSV.")
    ap.add_argument("layout", choices=["fera2015", "avec2012"])
    ap.add_argument("root")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--video-suffix", default="", help="avec2012: appended to folder names to make video ids")
    a = ap.parse_args()
    if a.layout == "fera2015":
        rows, targets = read_fera2015(a.root), list(FERA_AUS)
    else:
        rows, targets = read_avec2012(a.root, a.video_suffix), ["valence", "arousal"]
    write_labels(a.out, rows, targets)
    print(f"{a.out}: {len(rows)} frames of {len({r['video'] for r in rows})} videos, targets {', '.join(targets)}")


if __name__ == "__main__":
    main()
