"""The SHA-256 of a file: the identity of a job's content and of a model in provenance."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

HASH_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str], chunk_size: int = HASH_CHUNK) -> str:
    """SHA-256 of a file, streamed so a multi-GB stack never sits in memory."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return sha256_fd(fd, chunk_size)
    finally:
        os.close(fd)


def sha256_fd(fd: int, chunk_size: int = HASH_CHUNK, on_chunk: Callable[[], None] | None = None) -> str:
    """SHA-256 of an open file from its start, streamed; ``on_chunk`` is called after each
    chunk (the watcher counts them as progress)."""
    digest = hashlib.sha256()
    buffer = bytearray(chunk_size)
    view = memoryview(buffer)
    offset = 0
    while n := os.preadv(fd, [buffer], offset):
        digest.update(view[:n])
        offset += n
        if on_chunk is not None:
            on_chunk()
    return digest.hexdigest()
