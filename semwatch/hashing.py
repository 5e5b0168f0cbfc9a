"""The SHA-256 of a file: the identity of a job's content and of a model in provenance."""

from __future__ import annotations

import hashlib
import os

HASH_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str], chunk_size: int = HASH_CHUNK) -> str:
    """SHA-256 of a file, streamed so a multi-GB stack never sits in memory."""
    digest = hashlib.sha256()
    buffer = bytearray(chunk_size)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()
