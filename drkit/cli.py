"""The `drkit` command: one thin command per stage. Each turns its options into the stage's
config and calls the stage's ``run``; heavy modules are imported inside the commands so that
`drkit --help` stays fast.

Exit codes: 0 success; 1 bad input or failed stage; 2 usage error (or a stage not built yet);
3 a batch stage could not process any of its inputs; 130 interrupted.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from . import __version__, log
from .errors import DrkitError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode="rich",
                  help="drkit: dynamic representations (DRs) of facial actions from a still image.")


def _version(value: bool) -> None:
    if value:
        print(f"drkit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "-v", "--verbose", help="More output; tracebacks on error."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Only errors; no progress bars."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    log.set_verbosity(0 if quiet else 2 if verbose else 1)


@app.command()
def preprocess(
    inputs: List[Path] = typer.Argument(..., help="Video files, folders of videos (recursive), "
                                        "or folders of image frames (one sequence each)."),
    out: Path = typer.Option(..., "-o", "--out", help="Face store to create or add to (Zarr folder)."),
    size: int = typer.Option(224, help="Crop side in pixels."),
    backend: str = typer.Option("dlib", help="Face backend: dlib (offline default) or insightface."),
    model_root: Optional[Path] = typer.Option(None, help="Model folder: for insightface the root "
                                              "holding models/buffalo_l/; for dlib a folder with "
                                              "shape_predictor_68_face_landmarks.dat."),
    align: bool = typer.Option(True, "--align/--no-align", help="Rotate crops so the eyes are level."),
    fps: float = typer.Option(25.0, help="Frame rate of image-folder sequences."),
    workers: int = typer.Option(1, help="Processes working on different videos at once."),
    shard: Optional[str] = typer.Option(None, help="I/N: process only the I-th of N deterministic "
                                        "parts of the inputs (0-based), for parallel batch jobs."),
    redetect_every: int = typer.Option(30, help="Re-run the face detector every N frames while "
                                       "tracking (and whenever the track is lost)."),
    naive: bool = typer.Option(False, help="Detect on every frame instead of tracking (slower)."),
    overwrite: bool = typer.Option(False, help="Redo videos that are already complete in the store."),
) -> None:
    """Detect, track and crop faces from videos into a face store.

    Output: a Zarr v3 store with one group per video holding masked face crops, 68 landmarks,
    source frame indices and per-frame detection info (format: docs/formats.md). Rerunning
    resumes; unreadable files are reported and skipped.
    """
    from .stages import preprocess as stage
    s = stage.run(stage.PreprocessConfig(
        inputs=[str(p) for p in inputs], out=str(out), size=size, backend=backend,
        model_root=str(model_root) if model_root else None, align=align, fps=fps,
        workers=workers, shard=shard, redetect_every=redetect_every, naive=naive,
        overwrite=overwrite))
    fps_s = s.frames / s.seconds if s.seconds else 0.0
    tail = f", {len(s.no_face)} without any face" if s.no_face else ""
    log.info(f"preprocess: {len(s.ok)} ok, {len(s.skipped)} skipped (already done), "
                      f"{len(s.failed)} failed{tail}; {s.frames} frames written in "
                      f"{s.seconds:.1f} s ({fps_s:.0f} frames/s) -> {s.store}")
    for path, reason in s.failed.items():
        log.info(f"  failed: {path}: {reason}")


@app.command()
def inspect(
    store: Path = typer.Argument(..., help="A drkit store (face store or DR store)."),
    video: Optional[str] = typer.Option(None, "--video", help="Video id for --frame."),
    frame: Optional[int] = typer.Option(None, "--frame", help="Source frame index to draw."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="PNG to write for --video/--frame."),
) -> None:
    """Summarise a store (videos, frames, fps, faces found), or draw one frame with landmarks."""
    from rich.table import Table
    from .stages import inspect as stage
    from .store import open_store
    if video is not None or frame is not None or out is not None:
        if video is None or frame is None or out is None:
            raise typer.BadParameter("--video, --frame and -o go together")
        p = stage.render_frame(store, video, frame, out)
        log.info(f"wrote {p}")
        return
    st = open_store(store)
    rows = stage.summary_rows(st)
    t = Table(title=f"{st.path} ({st.kind} store, schema v{st.meta['schema_version']}, "
                    f"drkit {st.meta.get('drkit_version')})")
    for c in ("video", "frames", "source frames", "fps", "faces found %"):
        t.add_column(c, justify="left" if c == "video" else "right")
    for r in rows:
        t.add_row(r["video"], str(r["frames"]), str(r["source_frames"]), f"{r['fps']:.2f}",
                  f"{r['faces_pct']:.1f}")
    n, m = sum(r["frames"] for r in rows), sum(r["source_frames"] for r in rows)
    t.add_row("[bold]total", f"[bold]{n}", f"[bold]{m}", "", f"[bold]{100 * n / m if m else 0:.1f}")
    from rich.console import Console
    Console().print(t)
    print(f"params: {st.params}")
    for path, reason in st.failed.items():
        print(f"failed: {path}: {reason}")
    if st.partial_leftovers():
        print(f"unfinished (scratch in _partial/, redone by the next run): "
              f"{', '.join(st.partial_leftovers())}")


def _ints(text: str | None, name: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise typer.BadParameter(f"{name}: expected integers separated by commas, e.g. 3,5,7,9")


def _names(text: str | None) -> list[str] | None:
    """'a,b,c' or '@file' with one name per line."""
    if not text:
        return None
    if text.startswith("@"):
        p = Path(text[1:])
        if not p.is_file():
            raise DrkitError(f"{p}: no such file (for {text})")
        return [x.strip() for x in p.read_text().splitlines() if x.strip()]
    return [x.strip() for x in text.split(",") if x.strip()]


@app.command("train-dr")
def train_dr(
    stores: List[Path] = typer.Argument(..., help="Face stores to train on."),
    out: Path = typer.Option(..., "-o", "--out", help="Run folder to write (best.pt, last.pt, metrics.jsonl)."),
    T: int = typer.Option(5, "--T", help="Frames on each side of the centre (window 2T+1)."),
    stride: int = typer.Option(2, help="Stride in frames at 25 fps (scaled with each video's fps)."),
    val: Optional[List[Path]] = typer.Option(None, help="Validation face store(s) (other people!)."),
    size: int = typer.Option(112, help="Training crop side; frames are resized on the fly."),
    epochs: int = typer.Option(10, help="Passes over all windows."),
    time_budget: Optional[float] = typer.Option(None, help="Stop after this many seconds of training."),
    batch_size: int = typer.Option(16, help="Windows per batch."),
    base: int = typer.Option(16, help="UNet channels at full resolution."),
    depth: int = typer.Option(3, help="UNet poolings."),
    param: str = typer.Option("residual", help="residual: d = (I - mean I) + UNet(I); direct: d = UNet(I)."),
    theta: float = typer.Option(1e-3, help="Rank margin on scores <d, V>/(CHW)."),
    gamma: float = typer.Option(1e-4, help="Weight of mean(d^2)."),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="Mirror whole windows at random."),
    lr: float = typer.Option(1e-3, help="Adam learning rate (betas 0.5, 0.9)."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, mps."),
    resume: bool = typer.Option(False, help="Continue the interrupted run in --out."),
    overwrite: bool = typer.Option(False, help="Start again, replacing the run in --out."),
) -> None:
    """Train a DR network (UNet) with the rank loss on windows of 2T+1 frames.

    Output: a run folder with best.pt / last.pt checkpoints (weights + every setting needed to
    use them), metrics.jsonl (loss, ranking accuracy, validation accuracy beside the identity
    baseline, data-wait share per epoch) and config.json."""
    from .stages import train_dr as stage
    st = stage.run(stage.TrainDRConfig(
        stores=[str(p) for p in stores], out=str(out), T=T, stride=stride,
        val=[str(p) for p in val] if val else None, size=size, epochs=epochs,
        time_budget=time_budget, batch_size=batch_size, base=base, depth=depth, param=param,
        theta=theta, gamma=gamma, flip=flip, lr=lr, seed=seed, device=device, resume=resume,
        overwrite=overwrite))
    log.info(f"train-dr: {st['epoch']} epoch(s), {st['global_step']} steps, "
                      f"{st['elapsed']:.0f} s; best accuracy {st['best']} (epoch {st['best_epoch']}) -> {out}")


@app.command("rank-eval")
def rank_eval(
    ckpt: Path = typer.Argument(..., help="DR checkpoint (.pt) or train-dr run folder (uses best.pt)."),
    stores: List[Path] = typer.Argument(..., help="Face stores to evaluate on."),
    T: Optional[str] = typer.Option(None, "--T", help="T value(s), e.g. 9 or 3,5,7,9 (default: the checkpoint's)."),
    stride: Optional[str] = typer.Option(None, help="Stride(s) at 25 fps, e.g. 4 or 1,2,3,4 (default: the checkpoint's)."),
    baselines: str = typer.Option("identity", help="Comma list of identity, ranksvm, di; '' for none."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write one record per (method, T, stride)."),
    plot: Optional[Path] = typer.Option(None, help="Write the accuracy grid as a PNG."),
    size: Optional[int] = typer.Option(None, help="Crop side to evaluate at (default: the checkpoint's)."),
    every: int = typer.Option(1, help="Use every n-th centre frame."),
    max_windows: Optional[int] = typer.Option(None, help="At most this many windows per (T, stride)."),
    device: str = typer.Option("auto"),
) -> None:
    """Ranking accuracy of a DR checkpoint and baselines over (T, stride) windows (paper Sec. 4.3).

    Prints a table (one row per (T, stride): accuracy in % per method, and dr - identity), per-side and
    per-video detail with -v; --json and --plot write them to files."""
    from rich.table import Table
    from .stages import rank_eval as stage
    recs = stage.run(stage.RankEvalConfig(
        ckpt=str(ckpt), stores=[str(p) for p in stores], T=_ints(T, "--T"),
        stride=_ints(stride, "--stride"), baselines=[b for b in baselines.split(",") if b],
        json=str(json_out) if json_out else None, plot=str(plot) if plot else None, size=size,
        every=every, max_windows=max_windows, device=device))
    header, rows = stage.table_rows(recs)
    t = Table(title="ranking accuracy (%) on same-side pairs")
    for h in header:
        t.add_column(h, justify="right")
    for r in rows:
        t.add_row(*r)
    from rich.console import Console
    Console().print(t)
    for r in recs:
        print(f"{r['method']:>9} T={r['T']} S={r['stride']}: {100 * r['accuracy']:.2f}% of {r['pairs']} pairs "
              f"(past {100 * r['past']['accuracy']:.1f}%, future {100 * r['future']['accuracy']:.1f}%)")
        if log.VERBOSITY >= 2:
            for v, x in r["videos"].items():
                print(f"    {v}: {100 * x['accuracy']:.1f}% of {x['pairs']}")


@app.command("gen-dr")
def gen_dr(
    store: Path = typer.Argument(..., help="Face store from preprocess."),
    out: Path = typer.Option(..., "-o", "--out", help="DR store to write (Zarr)."),
    dr: Optional[List[Path]] = typer.Option(None, "--dr", help="DR checkpoint or run folder; repeat for MDR levels."),
    no_image: bool = typer.Option(False, help="Leave the image channels out (DRs only)."),
    size: Optional[int] = typer.Option(None, help="Side of the stored maps (default: the first checkpoint's size)."),
    batch_size: int = typer.Option(32),
    device: str = typer.Option("auto"),
    overwrite: bool = typer.Option(False, help="Redo videos already complete in the output."),
) -> None:
    """Stack each frame with the DRs of one or more checkpoints (SDR/MDR) into a DR store.

    Image + DR(T=5) = 6 channels (AU setting of the paper); image + DR(T=3) + DR(T=5) = 9
    channels (affect setting). Keeps video ids and source frame indices; resumable."""
    from .stages import gen_dr as stage
    r = stage.run(stage.GenDRConfig(store=str(store), out=str(out), dr=[str(p) for p in dr or []],
                                    no_image=no_image, size=size, batch_size=batch_size, device=device,
                                    overwrite=overwrite))
    log.info(f"gen-dr: {r['frames']} frames of {r['videos']} videos, channels {', '.join(r['channels'])} -> {r['store']}")


@app.command("train-task")
def train_task(
    inputs: List[Path] = typer.Argument(..., metavar="INPUT...", help="DR store(s) from gen-dr."),
    labels: Path = typer.Option(..., help="Label CSV: video,frame[,person],<targets> (docs/formats.md)."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Run folder to write; best.pt is the model bundle."),
    task: str = typer.Option("au", help="au (ICC, MSE, MAE) or affect (PCC, CCC, MSE)."),
    input_kind: str = typer.Option("mdr", "--input", help="si (image), sdr (one DR) or mdr (image + DRs)."),
    arch: str = typer.Option("small", help="small (CPU-friendly CNN) or vgg16."),
    targets: Optional[str] = typer.Option(None, help="Comma list of label columns (default: all)."),
    missing: Optional[str] = typer.Option(None, help="Comma list of sentinel values meaning 'no label', e.g. 9."),
    val: Optional[List[Path]] = typer.Option(None, help="Validation DR store(s); default: hold out people."),
    val_share: float = typer.Option(0.2, help="Share of people held out when no --val is given."),
    train_people: Optional[str] = typer.Option(None, help="Train only on these people: a,b,c or @file (one per line)."),
    val_people: Optional[str] = typer.Option(None, help="Validate on exactly these people (a,b,c or @file); "
                                            "with --eval-only, score only them."),
    epochs: int = typer.Option(20),
    time_budget: Optional[float] = typer.Option(None, help="Stop after this many seconds of training."),
    batch_size: int = typer.Option(32),
    lr: float = typer.Option(2e-3, help="Adam learning rate."),
    init: Optional[Path] = typer.Option(None, help="Pretrained weights (state dict) for the network."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto"),
    resume: bool = typer.Option(False),
    overwrite: bool = typer.Option(False),
    eval_only: Optional[Path] = typer.Option(None, help="Only score this trained model on INPUT."),
) -> None:
    """Train an AU-intensity or valence/arousal regressor on images, DRs or MDRs (or score one)."""
    from .stages import train_task as stage
    cfg = stage.TrainTaskConfig(
        input=[str(p) for p in inputs], out=str(out) if out else None, labels=str(labels), task=task,
        input_kind=input_kind, arch=arch, targets=targets.split(",") if targets else None,
        missing=[float(v) for v in missing.split(",")] if missing else [],
        val=[str(p) for p in val] if val else None, val_share=val_share,
        train_people=_names(train_people), val_people=_names(val_people), epochs=epochs,
        time_budget=time_budget, batch_size=batch_size, lr=lr, init=str(init) if init else None,
        seed=seed, device=device, resume=resume, overwrite=overwrite,
        eval_only=str(eval_only) if eval_only else None)
    r = stage.run(cfg)
    res = r if eval_only else r["val"]
    for k, v in res.items():
        print(f"{k}\t{v:.4f}" if isinstance(v, float) else f"{k}\t{v}")


@app.command()
def predict(
    model: Path = typer.Argument(..., help="Model bundle (best.pt of a train-task run, or the run folder)."),
    inputs: List[Path] = typer.Argument(..., help="Images, folders of images, or videos."),
    out: Path = typer.Option(..., "-o", "--out", help="CSV to write, one row per image or frame."),
    save_dr: Optional[Path] = typer.Option(None, help="Write each face crop beside its DRs as PNG here."),
    backend: Optional[str] = typer.Option(None, help="Face backend (default: the one the model was trained with)."),
    model_root: Optional[Path] = typer.Option(None, help="Model folder for the face backend."),
    device: str = typer.Option("auto"),
) -> None:
    """Predict AU intensities or valence/arousal from still images or video frames.

    CSV columns: input, frame (source frame index for videos, 0 for images), face_found (0/1),
    then one column per target as named in the training labels."""
    from .stages import predict as stage
    r = stage.run(stage.PredictConfig(model=str(model), inputs=[str(p) for p in inputs], out=str(out),
                                      save_dr=str(save_dr) if save_dr else None, backend=backend,
                                      model_root=str(model_root) if model_root else None, device=device))
    log.info(f"predict: {r['rows']} rows, {r['faces']} with a face, {len(r['failed'])} inputs skipped -> {r['out']}")


@app.command()
def synth(
    out: Path = typer.Option(..., "-o", "--out", help="Folder to write videos/, labels.csv, landmarks/, synth.json."),
    n: int = typer.Option(12, "--n", help="Number of sequences."),
    seconds: float = typer.Option(8.0, help="Length of each sequence."),
    fps: float = typer.Option(25.0),
    faces: Optional[List[Path]] = typer.Option(None, "--faces", help="Identity photos, image folders or videos "
                                               "(default: pseudo-identities of scikit-image's astronaut photo)."),
    identities: int = typer.Option(6, help="Pseudo-identities to make when no --faces are given."),
    size: int = typer.Option(256, help="Frame side in pixels."),
    seed: int = typer.Option(0),
) -> None:
    """Make face videos with exact per-frame AU intensities, valence/arousal and landmarks."""
    from .stages import synth as stage
    stage.run(stage.SynthConfig(out=str(out), n=n, seconds=seconds, fps=fps,
                                faces=[str(p) for p in faces or []], identities=identities, size=size, seed=seed))


@app.command()
def demo(
    out: Path = typer.Option(Path("drkit-demo"), "-o", "--out", help="Folder for everything the demo makes."),
    quick: bool = typer.Option(False, help="Smaller data and shorter training (under 2 minutes)."),
    seed: int = typer.Option(0),
) -> None:
    """Run the whole pipeline on synthetic faces: synth, preprocess, train-dr (T=3, 5), rank-eval,
    gen-dr (MDR), train-task (SI vs MDR), predict; prints each command and a summary."""
    from rich.table import Table
    from .stages import demo as stage
    s = stage.run(stage.DemoConfig(out=str(out), quick=quick, seed=seed))
    t = Table(title=f"drkit demo ({s['seconds']:.0f} s) -> {out}")
    t.add_column("what")
    t.add_column("result", justify="right")
    for k, v in s["rank_accuracy"].items():
        t.add_row(f"rank accuracy {k}, held-out person: DR / identity", f"{v['dr']:.1f}% / {v['identity']:.1f}%")
    t.add_row("AU intensity ICC(3,1), held-out person: SI / MDR", f"{s['au_icc']['si']:.3f} / {s['au_icc']['mdr']:.3f}")
    t.add_row("AU intensity MSE: SI / MDR", f"{s['au_mse']['si']:.3f} / {s['au_mse']['mdr']:.3f}")
    p = s["predict"]
    t.add_row("predict on a held-out still: AU12 predicted / true", f"{float(p['AU12'][0] or 'nan'):.2f} / {float(p['AU12'][1]):.2f}")
    for k, v in s["files"].items():
        t.add_row(k, v)
    from rich.console import Console
    Console().print(t)


def main() -> None:
    """Console entry point: typer handles usage errors (exit 2) and --help; stage errors become
    one line on stderr with the exit code of the error (tracebacks only with -v)."""
    try:
        app()
    except KeyboardInterrupt:
        log.console.print("interrupted")
        sys.exit(130)
    except DrkitError as e:
        if log.VERBOSITY >= 2:
            log.console.print_exception()
        log.console.print(f"[red]error:[/red] {e}", soft_wrap=True)
        sys.exit(e.exit_code)
    except Exception as e:
        if log.VERBOSITY >= 2:
            log.console.print_exception()
        log.console.print(f"[red]error:[/red] internal error: {type(e).__name__}: {e} "
                          "(rerun with -v for the traceback)", soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
