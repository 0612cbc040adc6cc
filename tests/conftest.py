"""Shared fixtures: small face videos generated with OpenCV from the astronaut photo that
scikit-image ships (a real face the detector finds), and the real-data folder if present."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

REAL = Path(os.environ.get("DRKIT_FACES", Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"))


def face_frames(n: int = 40, size: int = 200, seed: int = 0, blank: tuple[int, ...] = ()) -> list[np.ndarray]:
    """BGR frames of a face moving and zooming slowly; indices in ``blank`` hold no face."""
    import skimage.data
    img = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, 3)
    frames = []
    for t in range(n):
        cx = 222 + 8 * np.sin(2 * np.pi * t / 37 + phase[0])
        cy = 128 + 6 * np.sin(2 * np.pi * t / 29 + phase[1])
        half = 115 * (1 + 0.08 * np.sin(2 * np.pi * t / 41 + phase[2]))
        M = cv2.getAffineTransform(
            np.float32([[cx - half, cy - half], [cx + half, cy - half], [cx - half, cy + half]]),
            np.float32([[0, 0], [size, 0], [0, size]]))
        f = cv2.warpAffine(img, M, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        if t in blank:
            f = np.full_like(f, 90)
        frames.append(f)
    return frames


def write_video(path: Path, frames: list[np.ndarray], fps: float = 25.0) -> Path:
    fourcc = "MJPG" if path.suffix == ".avi" else "mp4v"
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert vw.isOpened(), f"OpenCV cannot write {path}"
    for f in frames:
        vw.write(f)
    vw.release()
    return path


@pytest.fixture(scope="session")
def videos(tmp_path_factory) -> Path:
    """A folder with three small face videos (one at 50 fps, one with faceless frames)."""
    d = tmp_path_factory.mktemp("videos")
    write_video(d / "a.avi", face_frames(40, seed=1))
    (d / "sub").mkdir()
    write_video(d / "sub" / "b.avi", face_frames(30, seed=2), fps=50)
    write_video(d / "c.mp4", face_frames(36, seed=3, blank=(10, 11, 12)))
    return d


@pytest.fixture(scope="session")
def face_store(videos, tmp_path_factory) -> Path:
    from drkit.stages.preprocess import PreprocessConfig, run
    out = tmp_path_factory.mktemp("stores") / "faces.zarr"
    run(PreprocessConfig(inputs=[str(videos)], out=str(out), crop_size=96))
    return out


def real_videos(n: int | None = None) -> list[Path]:
    if not (REAL / "manifest.csv").is_file():
        pytest.skip(f"real face videos not found at {REAL} (set DRKIT_FACES)")
    vids = sorted(p for p in REAL.rglob("*") if p.suffix.lower() in (".mp4", ".mov"))
    return vids[:n] if n else vids


def moving_blob_frames(n: int, size: int = 32, noise: float = 0.3, seed: int = 0, speed: float = 1.5) -> np.ndarray:
    """(n, size, size, 3) uint8: a bright blob drifting at constant speed in a random direction
    over a random static background, plus strong fresh pixel noise in every frame. Frame order
    is learnable (where the blob is), but in the raw image the noise outweighs it: ranking with
    I_t itself (the identity baseline) gets the pairs with the centre right and little else."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    bg = rng.uniform(0.2, 0.5, (1, 1, 3))
    ang = rng.uniform(0, 2 * np.pi)
    v = speed * np.array([np.cos(ang), np.sin(ang)])
    p0 = size / 2 - v * n / 2
    out = []
    for t in range(n):
        cx, cy = (p0 + v * t) % size
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 3.0 ** 2))[..., None]
        f = bg + 0.4 * blob + noise * rng.standard_normal((size, size, 3))
        out.append(np.clip(f, 0, 1))
    return (np.stack(out) * 255).round().astype(np.uint8)


def make_face_store(path: Path, videos: dict, fps: dict | None = None) -> Path:
    """A face store written directly (no detection): ``videos`` maps id -> (n, S, S, 3) uint8,
    or -> (frames, frame_index) to leave gaps."""
    from drkit.contracts import face_arrays
    from drkit.store import VideoWriter, create_store
    first = next(iter(videos.values()))
    size = (first[0] if isinstance(first, tuple) else first).shape[1]
    create_store(path, "faces", {"size": size, "align": True})
    for vid, v in videos.items():
        frames, idx = v if isinstance(v, tuple) else (v, np.arange(len(v)))
        n = len(frames)
        with VideoWriter(path, vid, face_arrays(size), "faces") as w:
            w.append(frames=frames, landmarks=np.zeros((n, 68, 2)), frame_index=idx,
                     confidence=np.ones(n), detected=np.ones(n, bool), transform=np.zeros((n, 2, 3)))
            f = (fps or {}).get(vid, 25.0)
            w.commit({"source": vid, "fps": f, "n_source_frames": int(idx[-1]) + 1 if n else 0})
    return path


def cli(*args):
    """Run `drkit ARGS` in-process through typer's CliRunner, as the shell would: returns an
    object with ``returncode``, ``stdout`` and ``stderr``."""
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from drkit.cli import app
    r = CliRunner().invoke(app, [str(a) for a in args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return SimpleNamespace(returncode=r.exit_code, stdout=r.stdout, stderr=r.stderr)


def labelled_blobs(tmp_path, people=8, n=48):
    """Each 'person' is one video of a drifting blob; the targets are known functions of the
    image, both unchanged by a mirror image (train-task flips at random): t1 = distance of the
    blob from the vertical midline (0-5), t2 = 5 - blob row (0-5)."""
    videos, rows = {}, []
    yy, xx = np.mgrid[:32, :32]
    for p in range(people):
        rng = np.random.default_rng(p)
        pos = rng.uniform(6, 26, 2) + np.cumsum(rng.normal(0, 0.8, (n, 2)), 0)
        pos = np.clip(pos, 4, 28)
        bg = rng.uniform(0.1, 0.4, 3)
        fr = np.stack([np.clip(bg + 0.6 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 8)[..., None]
                               + rng.normal(0, 0.03, (32, 32, 3)), 0, 1) for x, y in pos])
        videos[f"p{p}.avi"] = (255 * fr).astype(np.uint8)
        for i, (x, y) in enumerate(pos):
            rows.append({"video": f"p{p}.avi", "frame": i, "person": f"person{p}",
                         "t1": round(5 * abs(x - 15.5) / 12, 3), "t2": round(5 - 5 * (y - 4) / 24, 3)})
    from drkit.labels import write_labels
    store = make_face_store(tmp_path / "faces.zarr", videos)
    write_labels(tmp_path / "labels.csv", rows, ["t1", "t2"])
    return store, tmp_path / "labels.csv"


@pytest.fixture(scope="session")
def task_data(tmp_path_factory):
    from drkit.stages import gen_dr, train_dr
    d = tmp_path_factory.mktemp("task")
    store, labels = labelled_blobs(d)
    drs = []
    for T in (1, 2):
        out = d / f"dr{T}"
        train_dr.run(train_dr.TrainDRConfig(stores=[str(store)], out=str(out), T=T, stride=1, net_size=32,
                                            base=4, depth=2, epochs=1))
        drs.append(out)
    mdr = d / "mdr.zarr"
    gen_dr.run(gen_dr.GenDRConfig(store=str(store), out=str(mdr), dr=[str(p) for p in drs]))
    return {"dir": d, "faces": store, "labels": labels, "drs": drs, "mdr": mdr}


@pytest.fixture(scope="session")
def task_bundle(task_data, tmp_path_factory) -> Path:
    """A task-bundle run folder (one epoch on task_data's MDR store) for predict tests."""
    from drkit.configs import TrainTaskConfig
    from drkit.stages import train_task
    out = tmp_path_factory.mktemp("task_bundle") / "model"
    train_task.run(TrainTaskConfig(input=[task_data["mdr"]], out=out, labels=task_data["labels"], epochs=1,
                                   device="cpu"))
    return out


def store_arrays(path: Path) -> dict:
    from drkit.store import open_store
    st = open_store(path)
    out = {}
    for v in st.videos:
        g = st.video(v)
        out[v] = {k: g[k][:] for k in sorted(g.array_keys())}
    return out


def assert_same_store(a: Path, b: Path) -> None:
    """Same videos, same listing, every array equal (the stores' scratch is not compared)."""
    from drkit.store import open_store
    A, B = store_arrays(a), store_arrays(b)
    assert sorted(A) == sorted(B)
    la, lb = open_store(a).root.attrs["videos"], open_store(b).root.attrs["videos"]
    assert {v: {k: x[k] for k in ("fps", "n_frames", "n_source_frames")} for v, x in la.items()} == \
        {v: {k: x[k] for k in ("fps", "n_frames", "n_source_frames")} for v, x in lb.items()}
    for v in A:
        for k in A[v]:
            np.testing.assert_array_equal(A[v][k], B[v][k], err_msg=f"{v}/{k}")
