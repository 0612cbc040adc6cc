"""`drkit inspect`: what is in a store, and a picture of one frame with its landmarks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import DrkitError
from ..store import Store, open_store


def summary_rows(store: Store) -> list[dict]:
    """One dict per complete video: id, frames, source_frames, fps, faces_pct."""
    rows = []
    for vid in store.videos:
        info = store.video_info(vid)
        n, m = int(info.get("n_frames", 0)), int(info.get("n_source_frames", 0) or 0)
        rows.append({"video": vid, "frames": n, "source_frames": m,
                     "fps": float(info.get("fps") or 0.0),
                     "faces_pct": 100.0 * n / m if m else 0.0})
    return rows


def print_summary(store_path: str | Path) -> None:
    """Print the summary table of a store, its parameters, failures and unfinished scratch."""
    from rich.console import Console
    from rich.table import Table
    st = open_store(store_path)
    rows = summary_rows(st)
    t = Table(title=f"{st.path} ({st.kind} store, schema v{st.meta['schema_version']}, "
                    f"drkit {st.meta.get('drkit_version')})")
    for c in ("video", "frames", "source frames", "fps", "faces found %"):
        t.add_column(c, justify="left" if c == "video" else "right")
    for r in rows:
        t.add_row(r["video"], str(r["frames"]), str(r["source_frames"]), f"{r['fps']:.2f}",
                  f"{r['faces_pct']:.1f}")
    n, m = sum(r["frames"] for r in rows), sum(r["source_frames"] for r in rows)
    t.add_row("[bold]total", f"[bold]{n}", f"[bold]{m}", "", f"[bold]{100 * n / m if m else 0:.1f}")
    Console().print(t)
    print(f"params: {st.params}")
    for path, reason in st.failed.items():
        print(f"failed: {path}: {reason}")
    if st.partial_leftovers():
        print(f"unfinished (scratch in _partial/, redone by the next run): "
              f"{', '.join(st.partial_leftovers())}")


def _frame_position(store: Store, vid: str, frame: int) -> int:
    idx = store.video(vid)["frame_index"][:]
    pos = np.searchsorted(idx, frame)
    if pos >= len(idx) or idx[pos] != frame:
        near = idx[max(0, pos - 2):pos + 2].tolist()
        raise DrkitError(f"{store.path}/{vid}: source frame {frame} has no face in the store "
                         f"(nearest stored frames: {near}; {len(idx)} stored)")
    return int(pos)


def render_frame(store_path: str | Path, vid: str, frame: int, out: str | Path,
                 scale: int = 2) -> Path:
    """Write a PNG of stored source frame ``frame`` of video ``vid`` with its 68 landmarks."""
    store = open_store(store_path, "faces")
    if vid not in store.videos:
        raise DrkitError(f"{store.path}: no video '{vid}'; videos: {', '.join(store.videos[:8])}"
                         + (" ..." if len(store.videos) > 8 else ""))
    pos = _frame_position(store, vid, frame)
    g = store.video(vid)
    img = cv2.cvtColor(np.asarray(g["frames"][pos]), cv2.COLOR_RGB2BGR)
    img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    lm = np.asarray(g["landmarks"][pos]) * scale
    hull = cv2.convexHull(lm.astype(np.int32))
    cv2.polylines(img, [hull], True, (255, 160, 0), 1, cv2.LINE_AA)
    for k, (x, y) in enumerate(lm):
        colour = (0, 255, 0) if 36 <= k < 48 else (0, 0, 255)   # eyes green
        cv2.circle(img, (int(round(x)), int(round(y))), max(1, scale), colour, -1, cv2.LINE_AA)
    label = f"{vid} frame {frame}" + (" (detected)" if bool(g["detected"][pos]) else " (tracked)")
    cv2.putText(img, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), img):
        raise DrkitError(f"{out}: cannot write image (use a .png or .jpg name)")
    return out
