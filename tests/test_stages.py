"""The one scheduler (semwatch.stages) that `semwatch colorize` and the daemon both drive."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from pathlib import Path

from structlog.testing import capture_logs

from semwatch.pipeline import decode
from semwatch.stages import WRITE_BACKLOG_BATCHES, Stages, decode_outcome


def test_the_engine_waits_once_the_write_backlog_is_full() -> None:
    """A disk slower than the engine: at most WRITE_BACKLOG_BATCHES batches wait for it, and
    the wait goes through the driver's own way of waiting, named as the stage it is."""
    gate = threading.Event()
    waits: list[tuple[str, int]] = []
    written: list[int] = []

    def wait(stage: str, futures: Sequence[Future]) -> None:
        waits.append((stage, len(futures)))
        gate.set()  # the disk catches up while the engine waits
        wait_futures(list(futures))

    def slow_write(n: int) -> int:
        gate.wait(60)  # guards against a hang only
        return n

    batch = 2
    limit = WRITE_BACKLOG_BATCHES * batch
    with Stages(
        batch_size=lambda: batch, wait=wait, on_written=lambda f: written.append(f.result())
    ) as stages:
        for n in range(limit):
            stages.write(slow_write, n)
        assert waits == [] and not gate.is_set()  # up to the cap: no wait
        stages.write(slow_write, limit)
        assert waits == [("write backlog", 1)]  # the oldest write, no more
        stages.drain()
    assert sorted(written) == list(range(limit + 1))


def test_compute_in_its_own_thread_is_waited_for_by_the_driver() -> None:
    seen: list[str] = []

    def wait(stage: str, futures: Sequence[Future]) -> None:
        seen.append(stage)
        wait_futures(list(futures))

    with Stages(batch_size=lambda: 1, compute_thread=True, wait=wait) as stages:
        assert stages.compute("compute", lambda: threading.current_thread().name).startswith("compute")
    assert seen == ["compute"]


def test_a_decoder_that_breaks_is_one_line_and_an_unreadable_file_is_none(tmp_path: Path) -> None:
    """The decode step's log lines live in one place: an ImageError is the file's and is not
    logged here (the caller records it); anything else is logged once, with its traceback."""
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")

    def broken(path: Path) -> None:
        raise RuntimeError("decoder bug")

    with Stages(batch_size=lambda: 1) as stages, capture_logs() as logs:
        unreadable = decode_outcome(stages.decode(decode, bad, max_pixels=10**6), str(bad))
        crashed = decode_outcome(stages.decode(broken, bad), str(bad), job_id=7)
    assert "bad.png" in str(unreadable) and isinstance(crashed, RuntimeError)
    assert [(e["event"], e.get("job_id")) for e in logs] == [("unexpected error decoding", 7)]
