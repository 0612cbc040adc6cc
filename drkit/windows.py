"""Windows of 2T+1 frames around a centre frame, read from face stores.

The stride S is given in frames at 25 fps (the paper's convention) and scales with each video's
real frame rate: a 50 fps video uses 2S source frames between window frames, a 30 fps one
round(1.2 S). A window is valid only if all its 2T+1 source frames have a face in the store;
windows with a missing frame are skipped, never filled in.

``FrameCache`` reads frames chunk by chunk from the Zarr arrays (never whole stores) and keeps
recently used chunks within a memory budget, so windows of nearby frames cost one read.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .batching import batches, images_to_tensor
from .contracts import REF_FPS
from .errors import DrkitError
from .store import Store


def effective_stride(stride: int, fps: float, ref_fps: float = REF_FPS) -> int:
    """Source frames between window frames for a video at ``fps``."""
    return max(1, int(round(stride * fps / ref_fps)))


def window_offsets(T: int) -> np.ndarray:
    return np.arange(-T, T + 1)


def valid_windows(frame_index: np.ndarray, T: int, step: int) -> np.ndarray:
    """Positions (rows of the store arrays), shape (W, 2T+1), of every full window: row w holds
    the positions of source frames c - T*step ... c + T*step for a centre c present in the store."""
    frame_index = np.asarray(frame_index)
    if len(frame_index) == 0:
        return np.zeros((0, 2 * T + 1), np.int64)
    want = frame_index[:, None] + window_offsets(T)[None, :] * step
    pos = np.searchsorted(frame_index, want)
    pos_c = np.clip(pos, 0, len(frame_index) - 1)
    ok = (frame_index[pos_c] == want).all(1)
    return pos_c[ok].astype(np.int64)


@dataclass
class FrameRefs:
    """References to frames of store videos: item k is ``positions[k]`` (one row position, or
    a row of them) of video ``videos[k]``, held by ``stores[videos[k]]``."""

    videos: list[str]            # video id per item
    positions: np.ndarray        # (n,) or (n, m) row positions in that video's arrays
    stores: dict[str, Store]     # video id -> store holding it

    def __len__(self) -> int:
        return len(self.videos)


@dataclass
class WindowSet(FrameRefs):
    """All valid windows of (T, stride) over some videos; ``positions`` is (W, 2T+1)."""

    T: int = 0
    stride: int = 0


def no_window_reason(stores: list[Store], T: int, stride: int) -> str:
    """Why ``stores`` hold no full window of (T, stride): the span a window needs at the videos'
    frame rates beside the longest run of frames the videos have."""
    fps = sorted({float(st.video_info(v).get("fps") or 0) for st in stores for v in st.videos})
    longest = max((int(st.video_info(v).get("n_frames") or 0) for st in stores for v in st.videos), default=0)
    if not fps:
        return "the stores hold no video"
    steps = sorted({effective_stride(stride, f) for f in fps})
    rate = f"{fps[0]:g} fps" if len(fps) == 1 else f"{fps[0]:g} to {fps[-1]:g} fps"
    return (f"at the videos' {rate} a window of 2T+1={2 * T + 1} frames at stride {stride} (frames at 25 "
            f"fps) takes every {'/'.join(map(str, steps))}th source frame, a span of {2 * T * steps[0] + 1}+ "
            f"frames each with a face, and the longest video has {longest} frames with a face; lower --T or "
            "--stride, or check the frame rates (`drkit inspect STORE`)")


def collect_windows(stores: list[Store], T: int, stride: int, every: int = 1,
                    videos: set[str] | None = None) -> WindowSet:
    """Windows over every (selected) video of ``stores``; ``every`` keeps every n-th centre."""
    vids, pos, owner = [], [], {}
    for st in stores:
        for vid in st.videos:
            if videos is not None and vid not in videos:
                continue
            if vid in owner:
                raise DrkitError(f"video id {vid!r} is in both {owner[vid].path} and {st.path}: one video "
                                 "in two stores would be used twice; give each video once")
            owner[vid] = st
            g = st.video(vid)
            step = effective_stride(stride, float(g.attrs["fps"]))
            w = valid_windows(g["frame_index"][:], T, step)[::every]
            vids += [vid] * len(w)
            pos.append(w)
    positions = np.concatenate(pos) if pos else np.zeros((0, 2 * T + 1), np.int64)
    return WindowSet(vids, positions, owner, T=T, stride=stride)


@dataclass
class MultiWindowSet:
    """Windows of several (T, stride) around the same centre frames (a multi-scale DR network's
    training samples): item k is centre k of ``videos[k]``, its head-h window the row positions
    ``positions[h][k]`` ((W, 2T_h+1) per head). A centre is kept only where every head has a full
    window."""

    videos: list[str]
    positions: list[np.ndarray]
    stores: dict[str, Store]
    heads: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.videos)


def collect_multi_windows(stores: list[Store], heads: list[tuple[int, int]], every: int = 1) -> MultiWindowSet:
    """The centres with a full window for every (T, stride) of ``heads``, and each head's window."""
    vids: list[str] = []
    pos: list[list[np.ndarray]] = [[] for _ in heads]
    owner: dict[str, Store] = {}
    for st in stores:
        for vid in st.videos:
            if vid in owner:
                raise DrkitError(f"video id {vid!r} is in both {owner[vid].path} and {st.path}: one video "
                                 "in two stores would be used twice; give each video once")
            owner[vid] = st
            g = st.video(vid)
            fi, fps = g["frame_index"][:], float(g.attrs["fps"])
            per = [valid_windows(fi, T, effective_stride(S, fps)) for T, S in heads]
            centres = [w[:, T] for w, (T, _) in zip(per, heads)]   # row position of each window's centre
            common = centres[0]
            for c in centres[1:]:
                common = np.intersect1d(common, c)
            common = common[::every]
            vids += [vid] * len(common)
            for h, (w, c) in enumerate(zip(per, centres)):
                pos[h].append(w[np.searchsorted(c, common)])
    positions = [np.concatenate(p) if p else np.zeros((0, 2 * T + 1), np.int64) for p, (T, _) in zip(pos, heads)]
    return MultiWindowSet(vids, positions, owner, list(heads))


class FrameCache:
    """Frames by (video, positions), read whole chunks at a time, LRU within ``max_bytes``."""

    def __init__(self, stores: dict[str, Store], array: str = "frames", max_bytes: int = 2 << 30):
        self.arrays = {vid: st.video(vid)[array] for vid, st in stores.items()}
        self.max_bytes = max_bytes
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._bytes = 0

    def _chunk(self, vid: str, k: int) -> np.ndarray:
        key = (vid, k)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        arr = self.arrays[vid]
        c = arr.chunks[0]
        data = np.asarray(arr[k * c:(k + 1) * c])
        self._cache[key] = data
        self._bytes += data.nbytes
        while self._bytes > self.max_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._bytes -= old.nbytes
        return data

    def get(self, vid: str, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions)
        c = self.arrays[vid].chunks[0]
        out = np.empty((len(positions), *self.arrays[vid].shape[1:]), self.arrays[vid].dtype)
        for k in np.unique(positions // c):
            sel = positions // c == k
            out[sel] = self._chunk(vid, int(k))[positions[sel] - k * c]
        return out


def crop_sizes(stores: list[Store]) -> dict[int, list[Store]]:
    """Crop side -> the stores holding frames of that side (read from the frames arrays, so
    stores made by any version agree with what windows will read)."""
    out: dict[int, list[Store]] = {}
    for st in stores:
        sides = {int(st.video(v)["frames"].shape[1]) for v in st.videos}
        for side in sorted(sides):
            out.setdefault(side, []).append(st)
    return out


def window_tensor(frames: list[np.ndarray], size: int | None = None):
    """List of B windows (N, H, W, 3) uint8 -> float tensor (B, N, 3, size, size) in [0, 1].

    Windows may come from stores of different crop sizes: each is resized to ``size`` on its
    own (windows of one shape together) before they are stacked. Without ``size`` all windows
    must have the same shape."""
    import torch
    import torch.nn.functional as F
    shapes = {f.shape[1:3] for f in frames}
    if len(shapes) > 1 and not size:
        raise ValueError(f"windows of different frame sizes {sorted(shapes)} need a size to resize to")
    groups: dict[tuple[int, int], list[int]] = {}
    for i, f in enumerate(frames):
        groups.setdefault(f.shape[1:3], []).append(i)
    out = None
    for (H, W), idx in groups.items():
        x = images_to_tensor(np.stack([frames[i] for i in idx]))
        B, N, C = x.shape[:3]
        if size and (H, W) != (size, size):
            x = F.interpolate(x.flatten(0, 1), size=(size, size), mode="bilinear", antialias=True,
                              align_corners=False).view(B, N, C, size, size)
        if len(groups) == 1:
            return x
        if out is None:
            out = torch.empty((len(frames), *x.shape[1:]), dtype=x.dtype)
        out[idx] = x
    return out


def iter_windows(ws: WindowSet, cache: FrameCache, order: np.ndarray, batch_size: int,
                 size: int | None = None, start: int = 0, augment=None):
    """Yield (indices, tensor (B, 2T+1, 3, size, size)) for windows ``order`` in batches,
    from batch ``start``. ``augment(x, batch_no)`` may transform each batch."""
    for b, idx in batches(order, batch_size, start):
        x = window_tensor([cache.get(ws.videos[i], ws.positions[i]) for i in idx], size)
        yield idx, (augment(x, b) if augment else x)
