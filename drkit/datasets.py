"""Dataset label layouts -> the drkit label CSV (`drkit.labels`, docs/formats.md).

Two layouts are read: FERA 2015 (BP4D AU intensities, ``read_fera2015``) and AVEC 2012 (SEMAINE
continuous valence / arousal, ``read_avec2012``). ``convert_labels`` reads one and writes the
label CSV; it is what ``drkit labels fera2015|avec2012 ROOT -o labels.csv`` runs.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from .contracts import Result
from .errors import DrkitError
from .labels import write_labels

LAYOUTS = ("fera2015", "avec2012")

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


@dataclass
class LabelsResult(Result):
    out: str
    rows: int
    videos: int
    targets: list[str]


def convert_labels(layout: str, root: str | Path, out: str | Path, video_suffix: str = "") -> LabelsResult:
    """Read a dataset's label files (``layout`` one of LAYOUTS) under ``root`` and write them to
    ``out`` as a drkit label CSV. ``video_suffix`` (avec2012 only) is appended to the folder names
    to make video ids. Returns {"out", "rows", "videos", "targets"}."""
    if layout == "fera2015":
        rows, targets = read_fera2015(root), list(FERA_AUS)
    elif layout == "avec2012":
        rows, targets = read_avec2012(root, video_suffix), ["valence", "arousal"]
    else:
        raise DrkitError(f"unknown label layout {layout!r}; use one of: {', '.join(LAYOUTS)}")
    write_labels(out, rows, targets)
    return LabelsResult(str(out), len(rows), len({r["video"] for r in rows}), targets)
