"""Work in a background thread, in order: ``ReadAhead`` runs a generator a few items ahead of its
consumer (frame decoding beside face tracking in preprocess, decoding + tracking beside the
networks in predict, the next batches beside the training step), ``read_ahead`` chooses between
that and running it inline, ``available_cores`` says whether a core is spare for it, and
``opencv_threads`` keeps OpenCV's thread pool out of the way."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time


@contextlib.contextmanager
def opencv_threads(n: int):
    """OpenCV's own worker threads limited to ``n`` inside the block (restored after). Face
    tracking calls OpenCV on small images (a 224 px warp, a 32 px patch), where its thread pool
    costs more than it gives: the masked crop takes 0.39 ms with one thread and 0.88 ms with two
    on this project's 2-core machine."""
    import cv2
    old = cv2.getNumThreads()
    cv2.setNumThreads(n)
    try:
        yield
    finally:
        cv2.setNumThreads(old)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask: what SLURM or taskset granted)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        return os.cpu_count() or 1


class ReadAhead:
    """Iterate a generator in a background thread, ``depth`` items ahead, so its work (frame
    decoding; OpenCV and dlib's detector release the GIL) overlaps with the consumer's:
    predict's decode + tracking beside the networks, preprocess's decoding beside the tracker,
    the training loop's next batches beside the step.
    Items come out in order; an exception of the generator is raised by the consumer at the
    point it occurred. ``close()`` (or leaving the ``with`` block) stops the thread and closes
    the generator."""

    _ITEM, _STOP = object(), object()

    def __init__(self, gen, depth: int):
        self.wait = 0.0   # seconds the consumer waited for items (train: the data-wait share)
        self.q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.stop = threading.Event()
        self.gen = gen
        self.thread = threading.Thread(target=self._work, name="drkit-read-ahead", daemon=True)
        self.thread.start()

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for item in self.gen:
                if not self._put((self._ITEM, item)):
                    return
        except BaseException as e:   # raised again in the consumer
            self._put((self._STOP, e))
        else:
            self._put((self._STOP, None))
        finally:
            self.gen.close()

    def __iter__(self):
        while True:
            t = time.perf_counter()
            kind, item = self.q.get()
            self.wait += time.perf_counter() - t
            if kind is self._STOP:
                self.stop.set()
                if item is not None:
                    raise item
                return
            yield item

    def close(self) -> None:
        self.stop.set()
        while self.thread.is_alive():
            try:
                self.q.get(timeout=0.05)
            except queue.Empty:
                pass
        self.thread.join()

    def __enter__(self) -> "ReadAhead":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def read_ahead(gen, depth: int, enabled: bool = True):
    """``gen``'s items, produced by a ReadAhead thread when ``enabled``, else inline; either way
    the generator is closed when the block is left."""
    if enabled:
        with ReadAhead(gen, depth) as ahead:
            yield iter(ahead)
    else:
        try:
            yield gen
        finally:
            gen.close()
