"""The one scheduler of a run of images: decode threads, one compute step, write threads,
and the cap on writes waiting for the disk.

:class:`semwatch.pipeline.Pipeline` (`semwatch colorize`, the web UI, the benchmarks) and
the daemon's worker cycle (:mod:`semwatch.service.worker`) both drive a :class:`Stages`:
they decide what is decoded ahead and what becomes of each image; the stages decide where
the work runs and when the engine must wait for the disk. The daemon passes its own way
of waiting (in slices that feed the systemd watchdog and renew leases, and that give up
past the shutdown deadline); a plain run waits plainly.

The decode step's log lines live here too (:func:`decode_outcome`, :func:`log_warnings`),
so an input's warnings and a decoder's unexpected error read the same from every face.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any, TypeVar

from semwatch.imaging import DecodedImage, ImageError
from semwatch.log import get_logger

log = get_logger(__name__)

T = TypeVar("T")

# Decoding and encoding are mostly in C (zlib, tifffile, Pillow) and release the GIL: two
# threads each keep the engine fed without taking its cores.
IO_THREADS = 2
# Colorized batches that may wait for their writes before the engine waits for the disk: a
# disk slower than the engine must not pile up full-size RGB frames in memory.
WRITE_BACKLOG_BATCHES = 2

# How a driver waits for futures: (stage name, futures) -> returns once all are done. The
# name says what is waited for (the daemon reports a stage that hangs by it).
WaitFn = Callable[[str, Sequence[Future]], None]


def wait_plainly(stage: str, futures: Sequence[Future]) -> None:
    """Wait for every future, however long it takes (a run that nobody supervises)."""
    wait_futures(list(futures))


class Stages:
    """Decode threads, the compute step and write threads of one run, with the write backlog
    capped at ``WRITE_BACKLOG_BATCHES`` batches of ``batch_size()`` images.

    ``compute_thread``: run the engine in a thread of its own and wait for it with ``wait``
    (the daemon's main thread must keep its heartbeat); otherwise it runs in the caller's
    thread. ``on_written`` sees each finished write's future in the driver's thread, in
    the order they were submitted, once it is found done.
    """

    def __init__(
        self,
        *,
        batch_size: Callable[[], int],
        decode_threads: int = IO_THREADS,
        write_threads: int = IO_THREADS,
        compute_thread: bool = False,
        wait: WaitFn = wait_plainly,
        on_written: Callable[[Future], None] | None = None,
    ) -> None:
        self._batch_size = batch_size
        self._wait = wait
        self._on_written = on_written
        self._decoders = ThreadPoolExecutor(decode_threads, thread_name_prefix="decode")
        self._writers = ThreadPoolExecutor(write_threads, thread_name_prefix="write")
        self._compute = ThreadPoolExecutor(1, thread_name_prefix="compute") if compute_thread else None
        self._writes: list[Future] = []

    def __enter__(self) -> Stages:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(wait=True)

    # ---- the steps

    def decode(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        """Start a decode in the decode threads."""
        return self._decoders.submit(fn, *args, **kwargs)

    def compute(self, stage: str, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` as the compute step; its exception is raised here."""
        if self._compute is None:
            return fn(*args)
        future = self._compute.submit(fn, *args)
        self._wait(stage, [future])
        return future.result()

    def write(self, fn: Callable[..., Any], *args: Any) -> None:
        """Start a write, first waiting while the backlog is full."""
        limit = WRITE_BACKLOG_BATCHES * self._batch_size()
        self.collect()
        if len(self._writes) >= limit:
            self._wait("write backlog", self._writes[: len(self._writes) - limit + 1])
            self.collect()
        self._writes.append(self._writers.submit(fn, *args))

    def collect(self) -> None:
        """Hand the finished writes to ``on_written``; keep the others."""
        still = []
        for future in self._writes:
            if future.done():
                if self._on_written is not None:
                    self._on_written(future)
            else:
                still.append(future)
        self._writes = still

    def drain(self, stage: str = "writes") -> None:
        """Wait for every write started so far."""
        if self._writes:
            self._wait(stage, self._writes)
        self.collect()

    @property
    def writing(self) -> bool:
        """Whether writes are still in flight (or finished and not collected yet)."""
        return bool(self._writes)

    def close(self, *, wait: bool) -> None:
        """Shut the threads down; ``wait=False`` leaves threads stuck in I/O behind."""
        for pool in (self._decoders, self._writers, self._compute):
            if pool is not None:
                pool.shutdown(wait=wait, cancel_futures=wait)


def decode_outcome(future: Future[DecodedImage], path: str, **fields: Any) -> DecodedImage | BaseException:
    """The decode's image, or its error. An error that is not the image's (not an
    ImageError) is logged here, with its traceback."""
    # exception(), not result(): re-raising here would tie this frame into the error's
    # traceback, a reference cycle that keeps the decoded file's bytes alive until the
    # cyclic garbage collector happens to run (a gigabyte per big bad file).
    error = future.exception()
    if error is None:
        return future.result()
    if not isinstance(error, ImageError):
        # One image must not stop the run.
        log.error("unexpected error decoding", path=path, **fields, exc_info=error)
    drop_frames(error)
    return error


def log_warnings(image: DecodedImage, path: str, **fields: Any) -> None:
    """What the decoder noticed about an input it could read (one line each)."""
    for warning in image.warnings:
        log.warning("input warning", path=path, **fields, warning=warning)


def drop_frames(error: BaseException) -> None:
    """Clear the locals of the finished frames an error's traceback holds (and its causes'):
    a failed decode's frames hold the whole file's bytes for as long as the error lives."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        exc = pending.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        pending += [exc.__cause__, exc.__context__]
