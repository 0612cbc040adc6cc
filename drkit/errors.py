"""Exceptions that the CLI turns into one clear line on stderr and an exit code, and the
interrupts (Ctrl-C, SIGTERM) that unwind a command cleanly."""

import contextlib


class DrkitError(Exception):
    """Bad input or a failed stage. The message is shown to the user as-is."""

    exit_code = 1


class NothingProcessed(DrkitError):
    """A batch stage could not process any of its inputs."""

    exit_code = 3


class UsageError(DrkitError):
    """A bad option value (a choice that does not exist, an impossible number): exit code 2,
    like the command-line parser's own usage errors."""

    exit_code = 2


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process gets SIGTERM (what schedulers such as SLURM send
    before they kill a job): it unwinds like Ctrl-C, so temporary files and scratch are removed
    on the way out, and the command exits 143 (128 + 15) with one line."""

    exit_code = 143


_DEFER = 0                                   # depth of critical() blocks in the main thread
_PENDING: type[BaseException] | None = None  # the interrupt that arrived inside one


def _on_signal(signum, frame):
    import signal
    global _PENDING
    exc = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
    if _DEFER:
        _PENDING = exc
        return
    raise exc()


def install_signal_handlers() -> None:
    """Turn SIGTERM into ``Terminated`` and SIGINT into KeyboardInterrupt in this process, both
    held back inside ``critical()`` blocks (main thread only; elsewhere a no-op)."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)


@contextlib.contextmanager
def critical():
    """A block that an interrupt (Ctrl-C, SIGTERM) must not cut in half: one that arrives inside it
    is raised when the block ends. zarr runs its I/O in a thread of its own, so an interrupt in the
    middle of a metadata write would leave that thread writing into scratch the unwinding code has
    just removed. Used around store creation, array creation and a video's commit."""
    import threading
    global _DEFER, _PENDING
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _DEFER += 1
    try:
        yield
    finally:
        _DEFER -= 1
        if not _DEFER and _PENDING is not None:
            exc, _PENDING = _PENDING, None
            raise exc()
