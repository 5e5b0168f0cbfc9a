"""The error every image reader raises, and the one-line wording of its reasons."""

from __future__ import annotations

from pathlib import Path

from semwatch import errors

# A reason is one part of a longer line ("<path>: <reason>"), so shorter than errors.MAX_CHARS.
_MAX_REASON = 200


class ImageError(Exception):
    """An image that could not be read; str(exc) == "<path>: <reason>" on one line.

    permanent=True when retrying can never help (undecodable, too many pixels, unsupported
    layout); False for transient I/O (file vanished, EIO, permission).
    """

    def __init__(self, path: Path | str, reason: str, permanent: bool) -> None:
        super().__init__(path, reason, permanent)
        self.path = Path(path)
        self.reason = one_line(reason)
        self.permanent = permanent

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class ImageTooLarge(ImageError):
    """An image refused for its size (pixels or the memory it would need): always permanent,
    and the faces say "too large" rather than "not an image"."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(path, reason, permanent=True)

    def __reduce__(self) -> tuple:  # pickled across processes like its parent
        return (type(self), (self.path, self.reason))


def is_system_io_error(exc: BaseException) -> bool:
    # A failing disk or share carries an errno; the libraries' complaints about bad data
    # (Pillow's "cannot identify", "truncated") are OSErrors without one.
    return isinstance(exc, OSError) and exc.errno is not None


def describe(exc: BaseException) -> str:
    """An exception as one short line that says what went wrong (semwatch.errors' rule:
    a library's exception is named by its type, since "'ResolutionY'" alone says nothing)."""
    return errors.one_line(exc, limit=_MAX_REASON)


def one_line(text: str) -> str:
    return errors.one_line(str(text), limit=_MAX_REASON)
