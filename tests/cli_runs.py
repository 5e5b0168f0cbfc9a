"""Running a command line the two ways the tests need: in process through click's runner
(the same command, exit code and output streams, without a new interpreter importing
torch, ~5 s each on this machine) or as a real process where the entry point, the real
stderr or the process itself is what is checked."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import click
import structlog
from click.testing import CliRunner


@dataclass(frozen=True)
class Ran:
    """What a command did: its exit code and what it wrote (the fields of CompletedProcess)."""

    returncode: int
    stdout: str
    stderr: str


def in_process(command: click.Command, args: Sequence[str]) -> Ran:
    """`command` with `args` through click's runner. Exceptions propagate: an unhandled error
    fails the test with its traceback instead of becoming an exit code. The command sets up
    logging as a process would (its level, the runner's stderr); that set-up is undone after
    it, so later tests log (and capture logs) as if it had run in a process of its own."""
    structlog_config = structlog.get_config()
    root = logging.getLogger()
    root_state = (root.level, list(root.handlers))
    try:
        result = CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)
    finally:
        structlog.configure(**structlog_config)
        root.setLevel(root_state[0])
        root.handlers[:] = root_state[1]
    return Ran(result.exit_code, result.stdout, result.stderr)


def as_process(module: str, args: Sequence[str], cwd: Path | None = None, timeout: float = 600) -> Ran:
    """`python -m module args` as a real process."""
    done = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )
    return Ran(done.returncode, done.stdout, done.stderr)
