"""Log records name the module that wrote them (structlog set-up of semwatch/log.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from semwatch.log import get_logger

REPO = Path(__file__).resolve().parents[1]

# A module-level logger made at import, before the set-up, as every module makes it.
SCRIPT = """
import sys
import semwatch.notify
from semwatch.log import configure_logging
configure_logging("info", sys.argv[1])
semwatch.notify.log.debug("below the level")
semwatch.notify.log.info("probe event", answer=42)
"""


def _run(fmt: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, fmt], env=env, capture_output=True, text=True, check=True, cwd=REPO
    )
    return done.stderr


def test_json_lines_carry_the_module_name() -> None:
    lines = [json.loads(line) for line in _run("json").splitlines() if line.startswith("{")]
    assert len(lines) == 1  # the debug line stays filtered: the level set-up still applies
    (record,) = lines
    assert record["logger"] == "semwatch.notify"
    assert record["event"] == "probe event" and record["answer"] == 42 and record["level"] == "info"


def test_console_lines_show_the_module_name() -> None:
    out = _run("console")
    line = next(line for line in out.splitlines() if "probe event" in line)
    assert "semwatch.notify" in line and "answer=42" in line
    assert "below the level" not in out


def test_capture_logs_sees_events_with_their_logger() -> None:
    log = get_logger("semwatch.example")
    with capture_logs() as logs:
        log.warning("something odd", path="x.tif")
        log.bind(job=3).info("bound too")
    assert [(e["event"], e["logger"]) for e in logs] == [
        ("something odd", "semwatch.example"),
        ("bound too", "semwatch.example"),
    ]
    assert logs[1]["job"] == 3 and logs[0]["log_level"] == "warning"


@pytest.mark.parametrize("package", ["semwatch", "trainer"])
def test_every_module_logger_is_named_by_dunder_name(package: str) -> None:
    calls = [
        (path.relative_to(REPO).as_posix(), match.group(1))
        for path in sorted((REPO / package).rglob("*.py"))
        for match in re.finditer(r"\bget_logger\(([^)]*)\)", path.read_text(encoding="utf-8"))
        if path.name != "log.py"
    ]
    assert calls, f"no get_logger call found under {package}/"
    assert [c for c in calls if c[1] != "__name__"] == []
