"""Error text: every error that reaches a log field, a job's status line, a systemd STATUS=
or a command's "error:" line is shortened by :func:`one_line`, so they all read alike."""

from __future__ import annotations

# A status column and a log field, not a traceback: long enough for a path and a reason.
MAX_CHARS = 500
# Our own exceptions carry a sentence written to be read (naming the file and the reason);
# a library's (KeyError('x'), RuntimeError from torch) needs its type name to say anything.
_OWN_PACKAGES = ("semwatch", "trainer")


def one_line(error: BaseException | str, limit: int = MAX_CHARS) -> str:
    """``error`` as one line of at most ``limit`` characters (cut with "…").

    An exception of another package is prefixed with its type name; an OSError says its
    strerror and file name (its str() would repeat the errno).
    """
    text = error if isinstance(error, str) else _exception_text(error)
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _exception_text(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror + (f": {exc.filename}" if exc.filename else "")
    else:
        text = str(exc)
    if type(exc).__module__.partition(".")[0] in _OWN_PACKAGES and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
