"""`drkit inspect`: what is in a store, and a picture of one frame with its landmarks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import DrkitError
from ..store import IMAGE_ARRAY, REDO, Store, open_store, video_problem


def summary_rows(store: Store, verify: bool = False) -> list[dict]:
    """One dict per listed video: id, frames (as stored: the image array's length), source_frames,
    fps, faces_pct, and ``problem``: what the stages' own check (drkit.store.video_problem) finds
    wrong with it, None when it is intact (``verify``: every chunk's checksum read too)."""
    rows = []
    for vid in store.videos:
        info = store.video_info(vid)
        problem = video_problem(store.path, vid, store.kind, deep=verify)
        n = _stored_frames(store, vid)
        if problem is None and n != info.get("n_frames"):
            problem = f"the store's listing says {info.get('n_frames')} frames, the arrays hold {n}"
        m = info.get("n_source_frames")
        m = m if isinstance(m, int) and not isinstance(m, bool) and m >= 0 else 0
        fps = info.get("fps")
        rows.append({"video": vid, "frames": n, "source_frames": m,
                     "fps": float(fps) if isinstance(fps, (int, float)) else float("nan"),
                     "faces_pct": 100.0 * n / m if m and n <= m else float("nan"), "problem": problem})
    return rows


def _stored_frames(store: Store, vid: str) -> int:
    """Frames the video's image array holds (0 if its metadata is unreadable)."""
    import json
    try:
        meta = json.loads((store.path / vid / IMAGE_ARRAY[store.kind] / "zarr.json").read_text())
        return int(meta["shape"][0])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return 0


def print_summary(store_path: str | Path, verify: bool = False) -> int:
    """Print the summary table of a store (each video checked as the stages check it), its
    parameters, failures and unfinished scratch; returns the number of damaged videos."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    st = open_store(store_path)
    rows = summary_rows(st, verify)
    t = Table(title=f"{st.path} ({st.kind} store, schema v{st.meta['schema_version']}, "
                    f"drkit {st.meta.get('drkit_version')})")
    for c in ("video", "frames", "source frames", "fps", "faces found %", "state"):
        t.add_column(c, justify="left" if c in ("video", "state") else "right")
    for r in rows:
        state = "ok" if r["problem"] is None else "[red]damaged[/red]"
        t.add_row(escape(r["video"]), str(r["frames"]), str(r["source_frames"]), f"{r['fps']:.2f}",
                  f"{r['faces_pct']:.1f}", state)
    ok = [r for r in rows if r["problem"] is None]
    n, m = sum(r["frames"] for r in ok), sum(r["source_frames"] for r in ok)
    t.add_row("[bold]total (intact videos)", f"[bold]{n}", f"[bold]{m}", "",
              f"[bold]{100 * n / m if m else 0:.1f}", f"{len(ok)} of {len(rows)} ok")
    Console().print(t)
    print(f"params: {st.params}")
    for path, reason in st.failed.items():
        print(f"failed: {path}: {reason}")
    if st.partial_leftovers():
        print(f"unfinished (scratch in _partial/, redone by the next run): "
              f"{', '.join(st.partial_leftovers())}")
    for r in rows:
        if r["problem"] is not None:
            print(f"damaged: {r['video']}: {r['problem']}")
    bad = len(rows) - len(ok)
    if bad:
        print(f"{bad} damaged video(s): {REDO[st.kind]} to redo them")
    return bad


def _frame_position(store: Store, vid: str, frame: int) -> int:
    idx = store.video(vid)["frame_index"][:]
    pos = np.searchsorted(idx, frame)
    if pos >= len(idx) or idx[pos] != frame:
        near = idx[max(0, pos - 2):pos + 2].tolist()
        raise DrkitError(f"{store.path}/{vid}: source frame {frame} has no face in the store "
                         f"(nearest stored frames: {near}; {len(idx)} stored)")
    return int(pos)


def render_frame(store_path: str | Path, vid: str | None, frame: int, out: str | Path | None = None,
                 scale: int = 2) -> Path:
    """Write a PNG of stored source frame ``frame`` of video ``vid`` (None: the store's only
    video): for a face store the crop with its 68 landmarks and hull; for a DR store the crop (when
    the store keeps the image) beside each DR map on a diverging colour scale, labelled with its
    T and stride (drkit.viz.dr_panel). ``out`` defaults to ``<video>_frame<frame>.png``."""
    store = open_store(store_path)
    if vid is None:
        if len(store.videos) != 1:
            raise DrkitError(f"{store.path}: holds {len(store.videos)} videos; pick one with --video "
                             f"({', '.join(store.videos[:8])}{' ...' if len(store.videos) > 8 else ''})")
        vid = store.videos[0]
    if vid not in store.videos:
        raise DrkitError(f"{store.path}: no video '{vid}'; videos: {', '.join(store.videos[:8])}"
                         + (" ..." if len(store.videos) > 8 else ""))
    pos = _frame_position(store, vid, frame)
    g = store.video(vid)
    img = _draw_dr(store, g, vid, frame, pos) if store.kind == "dr" else _draw_face(g, vid, frame, pos, scale)
    out = Path(out) if out else Path(f"{vid}_frame{frame}.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), img):
        raise DrkitError(f"{out}: cannot write image (use a .png or .jpg name)")
    return out


def _draw_face(g, vid: str, frame: int, pos: int, scale: int) -> np.ndarray:
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
    return img


def _draw_dr(store: Store, g, vid: str, frame: int, pos: int) -> np.ndarray:
    from ..viz import dr_panel
    names = list(store.typed_params.channels)
    mdr = np.asarray(g["mdr"][pos], np.float32)
    img = [i for i, n in enumerate(names) if n.startswith("image_")]
    crop = (np.clip(mdr[img].transpose(1, 2, 0), 0, 1) * 255).round().astype(np.uint8) if len(img) == 3 else None
    return dr_panel(crop, mdr, names, caption=f"{vid} frame {frame} ({store.path.name})")
