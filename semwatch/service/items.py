"""A claimed job on its way through the worker: claimed, decoded, computed, written.

Its own module because the worker (which makes items) and the output writer (which
finishes them) both hold one, and neither should import the other for it.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from semwatch.imaging import DecodedImage
from semwatch.queue import Job
from semwatch.styles import Style


@dataclass
class WorkItem:
    """One claimed job on its way through the pipeline."""

    job: Job
    source: Path
    target: Path
    claimed_at: float  # monotonic
    decode: Future | None = None
    image: DecodedImage | None = None
    # Whether its attempt counts (queue.start): decoded ahead for the next batch, it does not
    # until its batch's turn comes.
    started: bool = False
    style: Style | None = None  # the watch folder's style, read when the job ran
