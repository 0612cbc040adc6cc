"""Downstream tasks (paper Sec. 3.3, 4.4): AU intensity (ICC(3,1), MSE, MAE) and valence /
arousal (PCC, CCC, MSE) regression on SI / SDR / MDR channels of DR stores. The pieces that
`drkit train-task` (training) and `drkit eval-task` (scoring a bundle) share: channel choice,
labelled frames, person splits, batches, scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import log, metrics
from .contracts import TASK_METRICS, TASK_RANGE, InputKind, Result, check_choice
from .errors import DrkitError
from .labels import Labels, read_labels
from .store import Store, open_store
from .windows import FrameCache, FrameRefs


def out_of_range(task: str, targets: list[str], y: np.ndarray) -> dict[str, int]:
    """Per target, how many labels (non-missing entries of ``y`` (n, k)) fall outside the task's
    range (TASK_RANGE); only targets with some."""
    lo, hi = TASK_RANGE[task]
    with np.errstate(invalid="ignore"):
        bad = ((y < lo) | (y > hi)).sum(0) if len(y) else np.zeros(len(targets), int)
    return {t: int(c) for t, c in zip(targets, bad) if c}


def select_channels(names: list[str], kind: str) -> list[int]:
    """Indices of the channels an input kind uses: ``si`` the image, ``sdr`` the last DR,
    ``mdr`` everything in the store."""
    check_choice(kind, InputKind, "--input")
    img = [i for i, n in enumerate(names) if n.startswith("image_")]
    drs = sorted({n.split("_")[0] for n in names if n.startswith("dr")})
    if kind == "si":
        sel = img
    elif kind == "sdr":
        sel = [i for i, n in enumerate(names) if drs and n.startswith(drs[-1] + "_")]
    else:
        sel = list(range(len(names)))
    if not sel:
        raise DrkitError(f"--input {kind}: the store has no such channels ({', '.join(names)}); "
                         "make it with gen-dr (without --no-image for si, with --dr for sdr)")
    return sel


@dataclass
class Samples(FrameRefs):
    """Labelled frames: ``y`` (n, k) targets with NaN where missing."""
    y: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))

    def subset(self, idx: np.ndarray) -> "Samples":
        return Samples([self.videos[i] for i in idx], self.positions[idx], self.stores, y=self.y[idx])


def person_of(labels: Labels, video: str) -> str:
    return labels.person.get(video, video)


def people_in(labels: Labels, stores: list[Store]) -> list[str]:
    """Sorted people with at least one labelled video in ``stores``."""
    return sorted({person_of(labels, v) for st in stores for v in st.videos if v in labels.frames})


def labelled_frames(stores: list[Store], labels: Labels, people: set[str] | None = None) -> Samples:
    vids, pos, ys, owner = [], [], [], {}
    known = matched = 0        # videos of the label file in the stores; those with a matching frame
    for st in stores:
        for v in st.videos:
            if v not in labels.frames:
                continue
            known += 1
            if people is not None and person_of(labels, v) not in people:
                continue
            fi = st.video(v)["frame_index"][:]
            y = labels.lookup(v, fi)
            matched += bool(np.isin(fi, list(labels.frames[v])).any())
            keep = np.flatnonzero(~np.isnan(y).all(1))
            vids += [v] * len(keep)
            pos.append(keep)
            ys.append(y[keep])
            owner[v] = st
    if not vids:
        raise DrkitError(_why_no_frames(stores, labels, people, known, matched))
    _warn_beyond_end(stores, labels)
    return Samples(vids, np.concatenate(pos), owner, y=np.concatenate(ys))


def _warn_beyond_end(stores: list[Store], labels: Labels) -> None:
    """A warning when label rows name frames past the end of their video (a 1-based frame column,
    or labels of another video): they match nothing and would otherwise vanish without a word."""
    n_beyond, example = 0, None
    for st in stores:
        for v in st.videos:
            if v not in labels.frames:
                continue
            end = st.video_info(v).get("n_source_frames")
            if not isinstance(end, int):
                continue
            over = [f for f in labels.frames[v] if f >= end]
            n_beyond += len(over)
            if over and example is None:
                example = (v, end, max(over))
    if n_beyond:
        v, end, f = example
        src = labels.path or "the label file"
        log.warn(f"{src}: {n_beyond} label row(s) name frames past the end of their video (e.g. {v} has "
                 f"{end} frames, labelled up to frame {f}); frames are 0-based source frame indices")


def _why_no_frames(stores: list[Store], labels: Labels, people: set[str] | None, known: int,
                   matched: int) -> str:
    """The real cause when no labelled frame was found (one line)."""
    src = labels.path.name if labels.path is not None else "the label file"
    where = ", ".join(str(st.path) for st in stores) or "(no store)"
    first = stores[0].path if stores else "STORE"
    if not known:
        lab_ids = list(labels.frames)[:2]
        st_ids = [v for st in stores for v in st.videos][:2]
        return (f"none of the {len(labels.frames)} video ids in {src} is in {where} (label ids look like "
                f"{', '.join(map(repr, lab_ids))}, store ids like {', '.join(map(repr, st_ids)) or '(none)'}); "
                f"see `drkit inspect {first}`")
    if people is not None and matched == 0 and not any(
            v in labels.frames and person_of(labels, v) in people for st in stores for v in st.videos):
        return (f"none of the {known} videos of {src} in {where} belongs to the people asked for "
                f"({', '.join(sorted(people)[:5]) or 'none'}); check the person column and the people "
                "options")
    if not matched:
        return (f"{known} video(s) of {src} are in {where} but none of their frame numbers is; frame "
                f"numbers are source frame indices (the store's frame_index, see `drkit inspect {first}`)")
    return (f"every label of the matching frames of {src} in {where} is missing (empty, NaN or a "
            "--missing sentinel)")


def person_split(labels: Labels, stores: list[Store], share: float, seed: int) -> tuple[set[str], set[str]]:
    """(train, validation) people: a ``share`` of the labelled people, at least one, held out
    at random (fixed by ``seed``). The two sets never overlap."""
    people = people_in(labels, stores)
    if not people:      # the real cause: no video of the label file is in the stores
        raise DrkitError(_why_no_frames(stores, labels, None, 0, 0))
    if len(people) < 2:
        raise DrkitError("need labelled videos of at least two people to hold some out for "
                         "validation; or pass --val STORE")
    rng = np.random.default_rng(seed)
    k = min(len(people) - 1, max(1, round(share * len(people))))
    val = set(rng.permutation(people)[:k].tolist())
    return set(people) - val, val


def require_landmarks(s: Samples, why: str = "--arch hg_hmr") -> None:
    """A DrkitError naming the videos of ``s`` whose DR store has no ``landmarks`` array (made
    by a gen-dr that did not write them) and the command that adds them."""
    lacking = sorted(v for v, st in s.stores.items() if "landmarks" not in st.video(v))
    if lacking:
        stores = sorted({str(s.stores[v].path) for v in lacking})
        raise DrkitError(f"{why} needs the face landmarks in the DR store; {len(lacking)} video(s) "
                         f"({', '.join(lacking[:3])}{' ...' if len(lacking) > 3 else ''}) of "
                         f"{', '.join(stores)} have none (made by an older gen-dr): rerun `drkit gen-dr "
                         "FACES -o DRSTORE --dr ... --overwrite` to add them")


def n_image_channels(names) -> int:
    """How many of a DR store's channels (its ``channels`` names) are the image: they come first
    (gen-dr stacks the image before the DRs)."""
    return sum(str(n).startswith("image_") for n in names)


def video_norm_mask(names, dr_norm: str, image_norm: str) -> np.ndarray:
    """(C,) bool over a DR store's channels: those a bundle subtracts the video's mean from
    (``dr_norm`` "video": the DRs; ``image_norm`` "video": the image)."""
    k = n_image_channels(names)
    return np.array([(i < k and image_norm == "video") or (i >= k and dr_norm == "video")
                     for i in range(len(names))], bool)


class Batcher:
    """Batches (x normalised (B, C, H, W), y (B, k)) from a DR store's ``mdr`` array; with
    ``landmarks``, (x, y, landmarks (B, 68, 2) in map pixels) (see require_landmarks).

    ``get(idx, flip)`` mirrors the samples where ``flip`` is True the way the DR networks see a
    mirrored face: image channels flipped, DR channels read from ``mdr_mirror`` (the DRs of the
    mirrored crop, see drkit.contracts.dr_arrays), never flipped DR maps."""

    def __init__(self, s: Samples, channels: list[int], mean: np.ndarray, std: np.ndarray,
                 landmarks: bool = False, dr_norm: str = "none", image_norm: str = "none"):
        self.s, self.ch = s, channels
        self.cache = FrameCache(s.stores, array="mdr", max_bytes=2 << 30)
        self.dr_norm = dr_norm
        self.mean = torch.tensor(mean, dtype=torch.float32)[None, :, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[None, :, None, None]
        names = list(next(iter(s.stores.values())).typed_params.channels) if s.stores else []
        self.n_image = n_image_channels(names)
        self.uses_dr = any(c >= self.n_image for c in channels)
        self.mirror = None
        if self.uses_dr and can_mirror(s):
            self.mirror = FrameCache(s.stores, array="mdr_mirror", max_bytes=1 << 30)
        self.lm = None
        if landmarks:
            require_landmarks(s)
            self.lm = FrameCache(s.stores, array="landmarks", max_bytes=256 << 20)
        # (video, array) -> the mean over the video of each channel of the array (mdr: every channel;
        # mdr_mirror: the DRs of the mirrored face)
        self.video_mean: dict[tuple[str, str], np.ndarray] = {}
        self.norm_dr = dr_norm == "video" and self.uses_dr
        self.norm_image = image_norm == "video" and any(c < self.n_image for c in channels)
        if self.norm_dr or self.norm_image:
            for v, st in s.stores.items():
                for arr in ("mdr",) + (("mdr_mirror",) if self.mirror is not None and self.norm_dr else ()):
                    self.video_mean[(v, arr)] = video_mean(st.video(v)[arr])

    @property
    def can_flip(self) -> bool:
        """Whether mirrored samples can be made: image-only input, or mirrored DRs stored."""
        return not self.uses_dr or self.mirror is not None

    def _frame(self, i: int, flip: bool) -> np.ndarray:
        v, pos = self.s.videos[i], self.s.positions[i:i + 1]
        x = self.cache.get(v, pos)[0]
        if flip:
            if not self.can_flip:
                raise DrkitError("cannot mirror DR inputs: the DR store has no mdr_mirror")
            x = x.copy()
            x[:self.n_image] = x[:self.n_image, :, ::-1]
            if self.uses_dr:
                x[self.n_image:] = self.mirror.get(v, pos)[0]
        if self.video_mean:   # channels minus their mean over the video (dr_norm / image_norm "video")
            x = x.astype(np.float32)
            mean = self.video_mean[(v, "mdr")]
            if self.norm_image:
                x[:self.n_image] -= mean[:self.n_image, :, ::-1] if flip else mean[:self.n_image]
            if self.norm_dr:
                x[self.n_image:] -= self.video_mean[(v, "mdr_mirror")] if flip else mean[self.n_image:]
        return x[self.ch]

    def get(self, idx: np.ndarray, flip: np.ndarray | None = None) -> tuple[torch.Tensor, ...]:
        flip = np.zeros(len(idx), bool) if flip is None else np.asarray(flip, bool)
        x = np.stack([self._frame(i, f) for i, f in zip(idx, flip)])
        x = (torch.from_numpy(x.astype(np.float32)) - self.mean) / self.std
        y = torch.from_numpy(self.s.y[idx])
        if self.lm is None:
            return x, y
        lm = np.stack([self.lm.get(self.s.videos[i], self.s.positions[i:i + 1])[0] for i in idx])
        return x, y, torch.from_numpy(lm.astype(np.float32))


def video_mean(arr, chunk: int = 256) -> np.ndarray:
    """The mean over a video's frames of each channel of an mdr-like array (C, M, M) float32:
    what ``dr_norm="video"`` / ``image_norm="video"`` subtract (train-task and eval-task; predict
    per input, drkit.predictor)."""
    total, n = None, 0
    for i in range(0, len(arr), chunk):
        x = np.asarray(arr[i:i + chunk], np.float32)
        total = x.sum(0, dtype=np.float64) if total is None else total + x.sum(0, dtype=np.float64)
        n += len(x)
    return (total / max(n, 1)).astype(np.float32)


def population_mean(b: "Batcher") -> np.ndarray:
    """The mean over ``b``'s videos (each weighing one) of their mean MDR stacks, (C, M, M)
    float32: what a bundle trained with a per-video norm subtracts from a still image, whose own
    video is unknown (TaskBundle ``population_mean``; drkit.predictor)."""
    means = [m for (v, arr), m in sorted(b.video_mean.items()) if arr == "mdr"]
    return np.mean(np.stack(means), 0, dtype=np.float64).astype(np.float32)


def can_mirror(s: Samples) -> bool:
    """Whether every video of ``s`` has mirrored DRs (``mdr_mirror``, gen-dr since 0.2.0)."""
    return all("mdr_mirror" in st.video(v) for v, st in s.stores.items())


def channel_stats(s: Samples, channels: list[int], n: int = 512, seed: int = 0,
                  dr_norm: str = "none", image_norm: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over a random sample of ``n`` frames."""
    idx = np.random.default_rng(seed).choice(len(s), min(n, len(s)), replace=False)
    raw = Batcher(s, channels, np.zeros(len(channels)), np.ones(len(channels)), dr_norm=dr_norm,
                  image_norm=image_norm)
    x = raw.get(np.sort(idx))[0].double()
    return (x.mean((0, 2, 3)).numpy().astype(np.float32),
            (x.std((0, 2, 3), unbiased=False) + 1e-6).numpy().astype(np.float32))


def masked_mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    m = ~torch.isnan(y)
    return F.mse_loss(pred[m], y[m]) if m.any() else pred.sum() * 0


def score(task: str, targets: list[str], pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Flat metrics: per target (``"icc/AU06"``) and their mean (``"icc"``), over labelled
    entries (missing targets skipped per column)."""
    out: dict[str, float] = {}
    for name in TASK_METRICS[task]:
        fn = getattr(metrics, {"icc": "icc31"}.get(name, name))
        vals = []
        for j, t in enumerate(targets):
            m = ~np.isnan(y[:, j])
            v = float(fn(pred[m, j], y[m, j])[0]) if m.sum() > 2 else float("nan")
            out[f"{name}/{t}"] = v
            vals.append(v)
        out[name] = float(np.nanmean(vals)) if not np.isnan(vals).all() else float("nan")
    return out


def value_range(task: str, y: np.ndarray) -> list[list[float]]:
    """Per target [lo, hi] to clip predictions to: the task's label range (TASK_RANGE) when every
    label of the target (non-missing entries of ``y`` (n, k)) lies in it, else the labels' own
    min and max (a scale the task does not expect: clipping to the task's range would ruin it)."""
    lo, hi = TASK_RANGE[task]
    out = []
    for j in range(y.shape[1]):
        col = y[:, j][~np.isnan(y[:, j])]
        inside = not len(col) or (col.min() >= lo and col.max() <= hi)
        out.append([lo, hi] if inside else [float(col.min()), float(col.max())])
    return out


def clip_values(pred: torch.Tensor | np.ndarray, ranges: list[list[float]]):
    """Predictions (n, k) clipped per target to ``ranges`` (TaskConfig.value_range; [] = as they are)."""
    if not ranges:
        return pred
    r = np.asarray(ranges, np.float32)
    if isinstance(pred, torch.Tensor):
        r = torch.as_tensor(r, device=pred.device)
        return torch.maximum(torch.minimum(pred, r[:, 1]), r[:, 0])
    return np.clip(pred, r[:, 0], r[:, 1])


def predict_samples(model, batcher: Batcher, device, ranges: list[list[float]] | None = None,
                    batch_size: int = 64) -> np.ndarray:
    """The model's predictions for every sample, clipped per target to ``ranges`` as
    drkit.predictor clips a bundle's: train-task's validation and eval-task score what predict gives."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(batcher.s), batch_size):
            x, _ = batcher.get(np.arange(i, min(i + batch_size, len(batcher.s))))
            out.append(clip_values(model(x.to(device)).float(), ranges or []).cpu().numpy())
    return np.concatenate(out)


@dataclass
class EvalTaskResult(Result):
    """``frames`` scored and ``metrics``, the flat dict of val_metrics.json (``icc``, ``icc/AU06``,
    ...); ``to_dict()`` / ``r["icc"]`` give them as one flat dict, as --json writes it."""
    frames: int
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"frames": self.frames, **self.metrics}

    def __getitem__(self, key: str):
        return self.to_dict()[key]

    def items(self):
        return self.to_dict().items()

    def __iter__(self):
        return iter(self.to_dict())


def evaluate_bundle(bundle, stores: list[Path | str], labels: Path | str, people: list[str] | None = None,
                    missing: list[float] | None = None, device=None) -> dict[str, float]:
    """Score a task bundle (a drkit.checkpoint.Checkpoint of kind "task") on labelled frames of
    DR stores: ``{"frames": n, "icc": ..., "icc/AU06": ..., ...}`` (the metrics of the task)."""
    c = bundle.config
    device = device or torch.device("cpu")
    opened = [open_store(p, "dr") for p in stores]
    for st in opened:
        if list(st.typed_params.channels) != list(c.store_channels):
            raise DrkitError(f"{st.path}: channels {list(st.typed_params.channels)} differ from the model's "
                             f"{c.store_channels}; run gen-dr with the same checkpoints")
    lab = read_labels(labels, c.targets, tuple(c.missing if missing is None else missing))
    s = labelled_frames(opened, lab, set(people) if people else None)
    b = Batcher(s, c.channels, np.array(c.norm_mean), np.array(c.norm_std), dr_norm=c.dr_norm,
                image_norm=c.image_norm)
    pred = predict_samples(bundle.build_model().to(device), b, device, c.value_range)
    return {"frames": len(s), **score(c.task, c.targets, pred, s.y)}
